"""Evaluation data sources: CIFAR pickles through a restricted unpickler (and code it refuses), image
folders, Hugging Face datasets, multi-label json shards."""

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_evaluation import coloured, write_labelled_shards
from vispre.evaluation import EvalTransform
from vispre.evaluation.cifar import RestrictedUnpickler, read_cifar, restricted_load
from vispre.evaluation.probe_data import CifarProbeSet, FolderProbeSet, HFProbeSet, ShardProbeSet
from vispre.evaluation.run import check_classes


def test_multilabel_json_shards_give_multi_hot_targets(tmp_path):
    shards = write_labelled_shards(tmp_path / "scenes", 6, seed=1, multi=True)
    source = ShardProbeSet(str(shards), "json", "labels", "multi", 5)
    _, targets = next(source.batches(EvalTransform(32), 6, 0))
    assert targets.shape == (6, 5) and set(targets.sum(1).tolist()) == {2.0}  # one colour + 3 or 4
    assert targets[:, 3:].sum(1).eq(1).all()


# ------------------------------------------------------------------------------------- CIFAR


def cifar_batch(path: Path, n: int, seed: int, label_key: str = "labels") -> tuple[np.ndarray, list[int]]:
    """A batch file as the official archive stores it: {data: uint8 [n, 3072] (R, G, B planes), labels}."""
    rs = np.random.RandomState(seed)
    images = rs.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    labels = rs.randint(0, 10, n).tolist()
    entry = {"batch_label": "batch", label_key: labels, "data": images.transpose(0, 3, 1, 2).reshape(n, -1),
             "filenames": [f"img{i}.png" for i in range(n)]}
    path.write_bytes(pickle.dumps(entry, protocol=2))
    return images, labels


def test_cifar10_reader(tmp_path):
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = [cifar_batch(folder / f"data_batch_{i}", 3, i) for i in range(1, 6)]
    test_images, test_labels = cifar_batch(folder / "test_batch", 4, 9)
    images, labels = read_cifar(tmp_path / "cifar", "cifar10", "train")
    assert images.shape == (15, 32, 32, 3) and np.array_equal(images, np.concatenate([t[0] for t in train]))
    assert labels.tolist() == sum((t[1] for t in train), [])
    source = CifarProbeSet(str(tmp_path / "cifar"), "cifar10", "test")
    crops, targets = next(source.batches(EvalTransform(32, crop_pct=1.0), 4, 0))
    assert torch.equal(crops, torch.from_numpy(test_images).permute(0, 3, 1, 2)) and targets.tolist() == test_labels
    assert source.num_classes == 10 and source.identity()["samples"] == 4


def test_cifar100_reader_and_python2_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    cifar_batch(folder / "train", 5, 0, "fine_labels")
    _, labels = cifar_batch(folder / "test", 2, 1, "fine_labels")
    assert read_cifar(folder, "cifar100", "test")[1].tolist() == labels
    # Python 2 pickles (the official files): numpy 1's module name and the buffer as a latin-1 str
    array = np.arange(250, 256, dtype=np.uint8)

    class Py2Array:
        def __reduce__(self):
            rebuild, args, state = array.__reduce__()
            return rebuild, (np.ndarray, (0,), "b"), (*state[:4], state[4].decode("latin1"))

    data = pickle.dumps({"data": Py2Array()}, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert np.array_equal(RestrictedUnpickler(io.BytesIO(data)).load()["data"], array)


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": Evil(marker)}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global (posix|os|nt)\.system"):
        restricted_load(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"x": print}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"(builtins|__builtin__)\.print"):
        restricted_load(path)


# ------------------------------------------------------------------------- folders and HF datasets


def test_folder_and_hf_sources(tmp_path):
    rs = np.random.RandomState(0)
    for name in ("b_green", "a_red"):  # classes are the sorted folder names
        (tmp_path / "folder" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(coloured(1 if name == "b_green" else 0, rs)).save(tmp_path / "folder" / name / f"{i}.png")
    folder = FolderProbeSet(str(tmp_path / "folder"))
    crops, targets = next(folder.batches(EvalTransform(24), 4, 0))
    assert folder.num_classes == 2 and targets.tolist() == [0, 0, 1, 1] and crops.shape == (4, 3, 24, 24)
    assert crops[0, 0].float().mean() > crops[0, 1].float().mean()  # a_red: class 0 is red
    (tmp_path / "test" / "b_green").mkdir(parents=True)  # a test folder without class a_red: indices would shift
    Image.fromarray(coloured(1, rs)).save(tmp_path / "test" / "b_green" / "0.png")
    with pytest.raises(ValueError, match="different classes"):
        check_classes({"train": folder, "test": FolderProbeSet(str(tmp_path / "test"))})

    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["r", "g", "b"])})
    rows = {"image": [Image.fromarray(coloured(i % 3, rs)) for i in range(5)], "label": [i % 3 for i in range(5)]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "hf"))
    hf = HFProbeSet(str(tmp_path / "hf"), "", "image", "label", "single", None)
    crops, targets = next(hf.batches(EvalTransform(24), 5, 0))
    assert hf.num_classes == 3 and targets.tolist() == [0, 1, 2, 0, 1] and crops.shape == (5, 3, 24, 24)
    assert hf.identity()["fingerprint"]


# ------------------------------------------------------------------------------ stratified limits


def test_limit_draws_every_class_from_class_sorted_data(tmp_path):
    """Class-sorted shards (all of class 0, then 1, then 2): the first 30 would be one class."""
    from tests.test_evaluation import png
    from vispre.data.shard_writer import update_sizes, write_shard
    from vispre.evaluation.probe_data import build_probe_set
    from vispre.evaluation.probe_recipe import ProbeSetConfig
    from vispre.evaluation.subsets import stratified_subset

    rs = np.random.RandomState(0)
    samples = [{"__key__": f"k{i:04d}", "png": png(coloured(i // 40, rs)), "cls": i // 40} for i in range(120)]
    counts = {f"part-{s}.tar": write_shard(tmp_path / f"part-{s}.tar", samples[s * 60:(s + 1) * 60]) for s in (0, 1)}
    update_sizes(tmp_path, counts)
    probe_set = build_probe_set(ProbeSetConfig(kind="shards", path=str(tmp_path), limit=30), "single", None, seed=3)
    _, targets = next(probe_set.batches(EvalTransform(24), 100, 0))
    assert len(targets) == 30 and torch.bincount(targets).tolist() == [10, 10, 10]
    assert probe_set.identity()["subset"] == "30 of 120, class-stratified random (seed 3), 3 of 3 classes"
    other = build_probe_set(ProbeSetConfig(kind="shards", path=str(tmp_path), limit=30), "single", None, seed=4)
    assert [k for k, *_ in other.items] != [k for k, *_ in probe_set.items]  # a random draw, seeded
    # proportional shares, at least one per class, rare labels first for multi-label sets
    labels = [0] * 90 + [1] * 9 + [2]
    chosen = stratified_subset(labels, 10, seed=0)
    assert sorted(torch.bincount(torch.tensor([labels[i] for i in chosen])).tolist()) == [1, 1, 8]
    multi = [[0, 1]] * 50 + [[0, 2]] * 2
    assert any(2 in multi[i] for i in stratified_subset(multi, 5, seed=0, task="multi"))
