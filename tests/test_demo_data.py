"""The embedded demo dataset: exact counts, balanced classes, labels that match what was drawn,
held-out splits that share no photo region or image, and the same bytes for the same seed."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vispre.data.demo import SCENE_COUNTS, build_demo_data, load_mnist, load_photos, photo_region, split_photos
from vispre.data.demo_shapes import SHAPES, object_alpha, redraw, redraw_alpha

SCENES, VAL_SCENES, SIZE, PER_CLASS, TEST_PER_CLASS = 160, 40, 64, 12, 6
COUNTS = {"scenes": SCENES, "scenes-val": VAL_SCENES, "shapes-train": PER_CLASS * 10,
          "shapes-test": TEST_PER_CLASS * 10, "digits-train": 40 * 10, "digits-test": 10 * 10}


def build(out, **overrides):
    return build_demo_data(out, **{"scenes": SCENES, "val_scenes": VAL_SCENES, "size": SIZE,
                                   "shapes_per_class": PER_CLASS, "shapes_test_per_class": TEST_PER_CLASS,
                                   "digits_per_class": 50, "test_per_class": 10,
                                   **overrides})


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    info = build(out)
    assert info["reused"] is False
    return out, info


def read_samples(directory: Path) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} over every shard of a split, in shard order."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(directory.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("split", sorted(COUNTS))
def test_shard_counts_match_sizes_json(demo, split):
    out, info = demo
    sizes = json.loads((out / split / "sizes.json").read_text())
    assert len(sizes) == 8 and sum(sizes.values()) == COUNTS[split]
    assert sorted(p.name for p in (out / split).glob("*.tar")) == sorted(sizes)
    for name, count in sizes.items():  # every shard holds exactly what sizes.json says
        with tarfile.open(out / split / name) as tar:
            assert len({m.name.split(".", 1)[0] for m in tar.getmembers()}) == count
    assert info["splits"][split]["samples"] == COUNTS[split]


@pytest.mark.parametrize("split,per_class", [("shapes-train", PER_CLASS), ("shapes-test", TEST_PER_CLASS)])
def test_shapes_balanced_shuffled_and_labelled_as_drawn(demo, split, per_class):
    out, info = demo
    samples = read_samples(out / split)
    labels = [int(s["cls"]) for s in samples.values()]
    assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10
    assert info["splits"][split]["label_counts"] == [per_class] * 10
    assert len(set(labels[:10])) >= 4  # shuffled: shard order is not class order
    photos = split_photos(held_out=split == "shapes-test")
    best = []
    for key, sample in samples.items():
        meta = json.loads(sample["json"])
        (obj,) = meta["objects"]
        assert meta["label"] == obj["label"] == int(sample["cls"]) and obj["shape"] == SHAPES[obj["label"]]
        image = decode(sample["jpg"])
        assert image.shape == (SIZE, SIZE, 3)
        assert meta["region"] == list(photo_region(*load_photos()[meta["background"]].size, split == "shapes-test"))
        # the json alone redraws the image (JPEG noise aside), and the label is the shape that was drawn:
        # of the ten classes redrawn at the same pose, colour and texture, the labelled one fits best
        assert np.abs(image - redraw(meta, photos)).mean() < 7.0, key
        errors = [np.abs(image - redraw({**meta, "objects": [{**obj, "shape": shape}]}, photos)).mean()
                  for shape in SHAPES]
        best.append(int(np.argmin(errors)) == obj["label"])
        # and the object is large: its tight box spans at least 30% of the image side
        x0, y0, x1, y1 = obj["box"]
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE and max(x1 - x0, y1 - y0) >= 0.3 * SIZE
    assert all(best), f"{len(best) - sum(best)} of {len(best)} images fit another class better"


@pytest.mark.parametrize("split", ["scenes", "scenes-val"])
def test_scenes_labels_boxes_and_counts(demo, split):
    out, _ = demo
    photos, counts, present = split_photos(held_out=split == "scenes-val"), [], []
    digits, digit_labels = load_mnist()
    for key, sample in read_samples(out / split).items():
        meta = json.loads(sample["json"])
        objects = meta["objects"]
        assert meta["labels"] == [o["label"] for o in objects] and meta["count"] == len(objects)
        assert 1 <= meta["count"] <= 4 and len(set(meta["labels"])) == meta["count"]  # distinct classes
        assert meta["boxes"] == [o["box"] for o in objects]
        # each object is an MNIST digit of the labelled class
        assert all(o["shape"] == "digit" and digit_labels[o["mnist_index"]] == o["label"] for o in objects)
        for i, a in enumerate(meta["boxes"]):  # tight boxes inside the image, 2 px apart
            assert 0 <= a[0] < a[2] <= SIZE and 0 <= a[1] < a[3] <= SIZE
            for b in meta["boxes"][i + 1:]:
                assert a[2] + 2 <= b[0] or b[2] + 2 <= a[0] or a[3] + 2 <= b[1] or b[3] + 2 <= a[1], key
        image = decode(sample["jpg"])
        assert np.abs(image - redraw(meta, photos, digits)).mean() < 7.0, key
        # every object is visible: its pixels differ from the bare background where it covers them
        bare = redraw({**meta, "objects": []}, photos)
        for obj in objects:
            alpha = redraw_alpha(obj, digits) > 0.5
            patch = (image - bare)[obj["top"]:obj["top"] + obj["side"], obj["left"]:obj["left"] + obj["side"]]
            assert alpha.sum() >= 10 and np.abs(patch[alpha]).mean() > 20, (key, obj["label"])
        assert sample["txt"].decode().count(" a ") + 1 >= meta["count"]  # the caption names each object
        counts.append(meta["count"])
        present += meta["labels"]
    assert len(set(counts)) >= 3  # P(1, 2, 3, 4) = SCENE_COUNTS, minus the objects that found no room
    assert abs(np.mean(counts) - np.dot(SCENE_COUNTS, [1, 2, 3, 4])) < 0.6
    assert set(present) == set(range(10))


def test_shape_classes_differ():
    """At any one pose, two classes' masks overlap well below identity (IoU < 0.8)."""
    rng = np.random.default_rng(0)
    for _ in range(4):
        angle, aspect = rng.uniform(0, 2 * np.pi), float(np.exp(rng.uniform(-0.2, 0.2)))
        masks = [object_alpha(shape, 32, angle, aspect) > 0.5 for shape in SHAPES]
        for i in range(len(SHAPES)):
            for j in range(i):
                assert (masks[i] & masks[j]).sum() < 0.8 * (masks[i] | masks[j]).sum(), (SHAPES[i], SHAPES[j])


def test_splits_disjoint(demo):
    """Train and held-out splits share no image, and draw from disjoint strips of every photo."""
    out, _ = demo
    digests: dict[str, set] = {}
    regions: dict[str, set] = {"train": set(), "held_out": set()}
    for split in ("scenes", "scenes-val", "shapes-train", "shapes-test"):
        samples = read_samples(out / split)
        digests[split] = {hashlib.sha1(s["jpg"]).hexdigest() for s in samples.values()}
        assert len(digests[split]) == len(samples)
        side = "held_out" if split in ("scenes-val", "shapes-test") else "train"
        for sample in samples.values():
            meta = json.loads(sample["json"])
            regions[side].add((meta["background"], tuple(meta["region"])))
            assert all(o["texture"] in load_photos() for o in meta["objects"])
    names = list(digests)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not digests[a] & digests[b], (a, b)
    for name, a in regions["held_out"]:
        for other, b in regions["train"]:
            if name == other:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (name, a, b)
    train, test = read_samples(out / "digits-train"), read_samples(out / "digits-test")
    assert not set(train) & set(test)  # MNIST indices (the keys): no digit in both
    for split, allowed in (("scenes", train), ("scenes-val", test)):  # scenes draw from their side only
        ids = {f"mnist-{o['mnist_index']:05d}" for s in read_samples(out / split).values()
               for o in json.loads(s["json"])["objects"]}
        assert ids <= set(allowed), split
    for samples, per_class in ((train, 40), (test, 10)):
        assert np.bincount([int(s["cls"]) for s in samples.values()], minlength=10).tolist() == [per_class] * 10


def test_deterministic_and_reused(tmp_path):
    tiny = {"scenes": 16, "val_scenes": 8, "size": SIZE, "shapes_per_class": 2, "shapes_test_per_class": 1,
            "digits_per_class": 3, "test_per_class": 1}
    first = build_demo_data(tmp_path / "first", **tiny)
    twin = build_demo_data(tmp_path / "twin", **tiny)
    assert file_bytes(tmp_path / "twin") == file_bytes(tmp_path / "first")
    assert twin["params"] == first["params"] and twin["reused"] is False

    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "twin").rglob("*.tar")}
    again = build_demo_data(tmp_path / "twin", **tiny)
    assert again["reused"] is True and again["splits"] == twin["splits"]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "twin").rglob("*.tar")} == before

    other = build_demo_data(tmp_path / "twin", **tiny, seed=1)  # new parameters rebuild in place
    assert other["reused"] is False and other["params"]["seed"] == 1
    for split in ("scenes", "scenes-val", "shapes-train", "shapes-test"):
        new, old = file_bytes(tmp_path / "twin" / split), file_bytes(tmp_path / "first" / split)
        assert sorted(new) == sorted(old)  # same shard names: no stale shard left behind
        assert all(new[name] != old[name] for name in new if name.endswith(".tar")), split
    labels = Counter(int(s["cls"]) for s in read_samples(tmp_path / "twin" / "shapes-train").values())
    assert labels == {c: 2 for c in range(10)}  # balance does not depend on the seed
    assert build_demo_data(tmp_path / "twin", **tiny, seed=1, force=True)["reused"] is False
