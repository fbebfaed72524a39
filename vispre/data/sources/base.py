"""Sources: turn user data (image folders, HF datasets, COCO captions, videos) into samples.

A source plans its work up front as ``items``, a sequence of small picklable work items (one item
gives at most one sample), and reads any run of consecutive items with ``read(items, skipped)``.
``write_shards`` makes shard i from chunk i of the items, so processes holding a copy of the source
can write shards in parallel and the output does not depend on the number of processes.
Samples follow ``vispre.data.formats``; an input that cannot be read raises ``Unreadable`` inside
``read_item`` and is skipped and recorded, bad input as a whole raises ``SourceError``.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

try:
    import av
except ImportError:  # optional (vispre[video]): torchvision.io is tried instead
    av = None

log = logging.getLogger(__name__)

KEEP_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # written as the original bytes
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
FRAME_EXTS = (".jpg", ".jpeg", ".png")
# What a broken file makes PIL raise (DecompressionBombError is not an OSError).
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
# What a broken video makes the decoder raise (torchvision raises RuntimeError).
VIDEO_ERRORS = (OSError, ValueError, RuntimeError) + ((av.error.FFmpegError,) if av else ())


class SourceError(ValueError):
    """The input as a whole is unusable (missing file or column, unreadable json, empty folder)."""


class Unreadable(Exception):
    """One input (file, row, clip) cannot be read: it is skipped and named in the summary."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclass
class Skipped:
    path: str
    reason: str


class Source:
    """Base class: ``items`` to plan shards, ``read`` to turn a run of items into samples."""

    format = "image"

    def __init__(self) -> None:
        self.items: Sequence = []
        self.skipped: list[Skipped] = []  # inputs dropped while planning

    def __len__(self) -> int:
        return len(self.items)

    def read_item(self, item) -> dict:
        raise NotImplementedError

    def read(self, items: Sequence, skipped: list[Skipped]) -> Iterator[dict]:
        for item in items:
            try:
                yield self.read_item(item)
            except Unreadable as err:
                log.warning("skipping %s", err)
                skipped.append(Skipped(err.path, err.reason))

    def extra_files(self) -> dict[str, Any]:
        """Files (name -> JSON value) to write next to the shards, e.g. ``classes.json``."""
        return {}


# ---------------------------------------------------------------------------------- helpers


def sanitize_key(name: str) -> str:
    """Map a file name or id to a valid sample key (``check_key``): other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", name) or "_"


def unique_keys(names: Sequence[str]) -> list[str]:
    """Sanitized keys, made unique in order (``a.b`` and ``a_b`` would otherwise collide)."""
    used: set[str] = set()
    keys = []
    for name in names:
        key = base = sanitize_key(name)
        n = 0
        while key in used:
            n += 1
            key = f"{base}_{n}"
        used.add(key)
        keys.append(key)
    return keys


def natural_key(name: str) -> list:
    """Sort key putting ``frame2`` before ``frame10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise Unreadable(str(path), err.strerror or str(err)) from None


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def resize_shorter(img: Image.Image, size: int | None) -> Image.Image:
    if not size or min(img.size) == size:
        return img
    scale = size / min(img.size)
    new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(new, Image.Resampling.BICUBIC)


def image_entry(data: bytes, path: str, quality: int = 95) -> tuple[str, bytes, Image.Image]:
    """(extension, bytes, decoded image) for an encoded image; jpg/png/webp keep their bytes.

    The image is fully decoded so that truncated files are caught here, not during training.
    """
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except IMAGE_ERRORS as err:
        raise Unreadable(path, f"not a readable image ({err})") from None
    ext = KEEP_FORMATS.get(img.format or "")
    if ext is None:
        return "jpg", encode_jpeg(img, quality), img
    return ext, data, img


def read_json(path: str | Path, what: str = "json") -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise SourceError(f"cannot read {what} file {path}: {err}") from None


