"""The paper's probe suites as recipes, each read from a tiny fabricated copy of its dataset's standard
layout: ImageFolder (ImageNet), Hugging Face datasets (Food101, Pets, Resisc45, Sun397), CLEVR_v1.0
(count, distance), a COCO instances json (small objects given a box), VISOR sparse annotations."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vispre.evaluation import EvalTransform, ProbeRecipe
from vispre.evaluation.probe_data import build_probe_set
from vispre.evaluation.probe_recipe import check_config
from vispre.evaluation.suites import box_crop
from vispre.utils.typed_config import load_config

EVAL = Path(__file__).resolve().parents[1] / "eval"


def recipe_sets(recipe: str, overrides: list[str]) -> tuple[ProbeRecipe, dict]:
    cfg = load_config(ProbeRecipe, EVAL / recipe, overrides)
    check_config(cfg)
    return cfg, {split: build_probe_set(getattr(cfg, split), cfg.task, cfg.num_classes, cfg.seed)
                 for split in ("train", "test")}


def all_targets(probe_set, size: int = 24) -> torch.Tensor:
    return torch.cat([t for _, t in probe_set.batches(EvalTransform(size, crop_pct=1.0), 64, 0)])


def solid(colour, size=(40, 30)) -> Image.Image:
    return Image.fromarray(np.full((size[1], size[0], 3), colour, dtype=np.uint8))


def write_clevr(root: Path) -> dict[str, list]:
    """CLEVR_v1.0: images/SPLIT/CLEVR_SPLIT_NNNNNN.png and scenes/CLEVR_SPLIT_scenes.json."""
    scenes = {}
    for split, counts, depths in (("train", [3, 5, 10, 4], [7.5, 8.2, 9.9, 12.0]), ("val", [6, 3], [8.5, 9.4])):
        (root / "images" / split).mkdir(parents=True)
        (root / "scenes").mkdir(exist_ok=True)
        scenes[split] = []
        for i, (n, depth) in enumerate(zip(counts, depths)):
            name = f"CLEVR_{split}_{i:06d}.png"
            solid((10 * n, 0, 0)).save(root / "images" / split / name)
            objects = [{"pixel_coords": [5, 5, depth + k]} for k in range(n)]  # the closest is at `depth`
            scenes[split].append({"image_filename": name, "objects": objects})
        (root / "scenes" / f"CLEVR_{split}_scenes.json").write_text(json.dumps({"scenes": scenes[split]}))
    return scenes


def test_clevr_count_and_distance(tmp_path):
    write_clevr(tmp_path / "CLEVR_v1.0")
    paths = [f"train.path={tmp_path / 'CLEVR_v1.0'}", f"test.path={tmp_path / 'CLEVR_v1.0'}"]
    _, count = recipe_sets("clevr_count.yaml", paths)
    assert all_targets(count["train"]).tolist() == [0, 2, 7, 1] and all_targets(count["test"]).tolist() == [3, 0]
    assert count["train"].num_classes == 8
    _, distance = recipe_sets("clevr_distance.yaml", paths)  # bins at 8, 8.5, 9, 9.5, 10 (VTAB)
    assert all_targets(distance["train"]).tolist() == [0, 1, 4, 5] and all_targets(distance["test"]).tolist() == [2, 3]
    assert distance["train"].num_classes == 6


def write_coco(root: Path) -> Path:
    (root / "val2017").mkdir(parents=True)
    solid((0, 0, 0), (100, 80)).save(root / "val2017" / "a.jpg", quality=95)
    image = np.zeros((80, 100, 3), np.uint8)
    image[10:20, 30:40] = (250, 250, 250)  # the small object: box (30, 10, 10, 10)
    Image.fromarray(image).save(root / "val2017" / "b.png")
    annotations = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.png"}],
                   "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
                   "annotations": [
                       {"id": 1, "image_id": 2, "category_id": 18, "bbox": [30, 10, 10, 10], "area": 100, "iscrowd": 0},
                       {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 60, 60], "area": 3600, "iscrowd": 0},
                       {"id": 3, "image_id": 1, "category_id": 3, "bbox": [90, 70, 8, 8], "area": 50, "iscrowd": 0},
                       {"id": 4, "image_id": 1, "category_id": 1, "bbox": [5, 5, 5, 5], "area": 20, "iscrowd": 1}]}
    path = root / "annotations" / "instances_val2017.json"
    path.parent.mkdir()
    path.write_text(json.dumps(annotations))
    return path


def test_coco_small_objects_given_a_box(tmp_path):
    annotations = write_coco(tmp_path)
    split = [f"path={tmp_path / 'val2017'}", f"annotations={annotations}"]
    cfg, sets = recipe_sets("coco_small_objects.yaml", [f"{s}.{o}" for s in ("train", "test") for o in split])
    probe = sets["test"]
    # small (area < 32^2), not crowd; classes in category-id order: person 0, car 1, dog 2
    assert len(probe) == 2 and probe.num_classes == 3 == len(probe.classes)
    assert sorted(all_targets(probe).tolist()) == [1, 2]
    crop, label = probe.item([i for i in range(2) if probe.items[i][2] == 2][0])
    assert label == 2 and crop.shape == (20, 20, 3)  # a square of twice the box's side, around its centre
    assert crop[5:15, 5:15].min() == 250 and crop[:5].max() == 0  # the object in the middle, context around
    edge = box_crop(solid((9, 9, 9), (100, 80)), (90, 70, 8, 8), 2.0)  # leaves the image: edge-padded
    assert edge.shape == (16, 16, 3) and edge.min() == 9


def write_visor(root: Path) -> None:
    (root / "annotations" / "train").mkdir(parents=True)
    (root / "rgb_frames" / "train" / "P01").mkdir(parents=True)
    solid((0, 90, 0), (64, 48)).save(root / "rgb_frames" / "train" / "P01" / "P01_01_frame_0000000140.jpg")
    square = [[[10, 10], [30, 10], [30, 20], [10, 20]]]
    entry = {"image": {"image_path": "P01_01/P01_01_frame_0000000140.jpg", "name": "P01_01_frame_0000000140.jpg"},
             "annotations": [{"name": "left hand", "class_id": 300, "segments": square},
                             {"name": "knife", "class_id": 7, "segments": square},
                             {"name": "plate", "class_id": 2,
                              "segments": [[[0, 0], [8, 0], [8, 8]], [[40, 40], [44, 44], [40, 44]]]}]}
    (root / "annotations" / "train" / "P01_01.json").write_text(json.dumps({"video_annotations": [entry]}))


def test_visor_objects_given_their_masks(tmp_path):
    write_visor(tmp_path / "visor")
    path = tmp_path / "visor"
    cfg, sets = recipe_sets("visor_objects.yaml", [f"train.path={path}", f"test.path={path}", "test.split=train"])
    probe = sets["train"]
    assert probe.classes == ["2", "7"] and len(probe) == 2  # the hand is not an object
    boxes = {label: box for _, box, label in probe.items}
    assert boxes[1] == (10, 10, 20, 10) and boxes[0] == (0, 0, 44, 44)  # the box of every polygon of the mask
    crop, label = probe.item([i for i, (*_, c) in enumerate(probe.items) if c == 0][0])
    assert label == 0 and crop.shape[:2] == (88, 88)  # twice the plate box's 44 px


def write_hf(path: Path, test_split: str) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    rows = lambda n: {"image": [solid((80 * (i % 3), 0, 0)) for i in range(n)], "label": [i % 3 for i in range(n)]}  # noqa: E731
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows(6), features=features),
                          test_split: datasets.Dataset.from_dict(rows(3), features=features)}).save_to_disk(str(path))


@pytest.mark.parametrize("member", ["food101", "pets", "resisc45", "sun397"])
def test_avg_cls_members_read_hf_datasets(tmp_path, member):
    cfg = load_config(ProbeRecipe, EVAL / f"avgcls_{member}.yaml", ["train.path=x", "test.path=y"])
    write_hf(tmp_path / member, cfg.test.split)
    paths = [f"train.path={tmp_path / member}", f"test.path={tmp_path / member}"]
    _, sets = recipe_sets(f"avgcls_{member}.yaml", paths)
    assert all_targets(sets["train"]).tolist() == [0, 1, 2, 0, 1, 2] and all_targets(sets["test"]).tolist() == [0, 1, 2]
    assert sets["train"].classes == ["a", "b", "c"]
    assert cfg.map.enabled and cfg.decoder.enabled and cfg.decoder.layers == 4  # the paper's probes


def test_imagenet_probes_read_image_folders(tmp_path):
    for split in ("train", "val"):
        for c in ("n01", "n02"):
            (tmp_path / split / c).mkdir(parents=True)
            solid((200 if c == "n01" else 0, 0, 0)).save(tmp_path / split / c / "0.JPEG", format="JPEG")
    cfg, sets = recipe_sets("imagenet_probes.yaml", [f"train.path={tmp_path / 'train'}",
                                                     f"test.path={tmp_path / 'val'}"])
    assert all_targets(sets["test"]).tolist() == [0, 1] and cfg.num_classes == 1000
    assert cfg.features.token_budget_mib == 65536 and cfg.decoder.layers == 4


def test_avg_cls_suite_routes_overrides_and_averages():
    from vispre.commands.eval import suite_members
    from vispre.evaluation.report import suite_summary

    members = suite_members(str(EVAL / "avg_cls.yaml"), ["avgcls_pets.train.path=/p", "features.batch_size=8"])
    assert [m for m, *_ in members] == ["avgcls_food101", "avgcls_pets", "avgcls_resisc45", "avgcls_sun397"]
    overrides = dict((m, o) for m, _, o in members)
    assert overrides["avgcls_pets"] == ["features.batch_size=8", "train.path=/p"]
    assert overrides["avgcls_food101"] == ["features.batch_size=8"]
    summary = suite_summary("avg_cls", {"a": {"scores": {"map/top1": 70.0, "linear/top1": 60.0}, "protocol": {}},
                                        "b": {"scores": {"map/top1": 80.0}, "protocol": {}}})
    assert summary["mean"] == {"map/top1": 75.0}
    from vispre.evaluation.compare import columns, row_label

    protocol = {"task": "single", "encoder": {"path": "/x/enc", "random_init": True}}
    summary["protocols"] = {"a": protocol, "b": protocol}
    assert columns(summary) == {"map (mean)": 75.0} and row_label(summary) == "enc (random init)"
