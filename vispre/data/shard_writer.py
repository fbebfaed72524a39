"""Write WebDataset shards atomically, and record their sample counts in ``sizes.json``.

webdataset's ``ShardWriter`` writes straight to the final file name, so a killed job leaves a
half shard that looks whole. Here every shard is written to ``NAME.tmp`` through webdataset's
``TarWriter`` and renamed with ``os.replace`` once closed: a shard either exists complete or not
at all. ``sizes.json`` (shard file name -> samples, the open_clip convention) lets readers know
epoch lengths without a pass over the data; ``_info.json`` says the same in the split metadata timm's
``wds/`` reader reads (one split per shard prefix: ``timm.data.create_dataset("wds/NAME", root=DIR,
split="shard")`` for ``shard-*.tar``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import webdataset as wds

from ..utils.io import write_json

SIZES_FILE = "sizes.json"
TIMM_INFO_FILE = "_info.json"  # timm's reader_wds looks for _info.json first (then info.json)
_SHARD_NAME = re.compile(r"^(?P<prefix>.+)-\d+\.tar$")
_KEY_OK = re.compile(r"^[A-Za-z0-9_\-]+$")



def shard_name(prefix: str, index: int) -> str:
    """``PREFIX-00012.tar``: the one shard naming every writer uses."""
    return f"{prefix}-{index:05d}.tar"

def check_key(key: str) -> str:
    """webdataset splits a member name at its first dot: keys must not contain dots or slashes."""
    if not _KEY_OK.match(key):
        raise ValueError(f"sample key {key!r} must match [A-Za-z0-9_-]+ (no dots or slashes)")
    return key


def write_shard(path: str | os.PathLike, samples: Iterable[Mapping[str, Any]]) -> int:
    """Write ``samples`` to the tar file ``path`` atomically; return how many were written.

    A sample is a dict with ``__key__`` and one entry per file extension (``jpg``, ``json``,
    ``cls``, ``000.jpg``...). Values are bytes, str, int or dicts (written as JSON).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    count = 0
    try:
        with open(tmp, "wb") as stream:
            with wds.TarWriter(stream, encoder=True, mtime=0.0) as tar:
                for sample in samples:
                    check_key(sample["__key__"])
                    tar.write(dict(sample))
                    count += 1
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count


def read_sizes(directory: str | os.PathLike) -> dict[str, int]:
    path = Path(directory) / SIZES_FILE
    if not path.exists():
        return {}
    with open(path) as f:
        return {str(k): int(v) for k, v in json.load(f).items()}


def update_sizes(directory: str | os.PathLike, sizes: Mapping[str, int]) -> None:
    """Merge ``sizes`` into ``directory/sizes.json`` (written atomically)."""
    merged = read_sizes(directory)
    merged.update({str(k): int(v) for k, v in sizes.items()})
    path = Path(directory) / SIZES_FILE
    write_json(path, dict(sorted(merged.items())))
    write_timm_info(directory, merged)


def timm_splits(sizes: Mapping[str, int]) -> dict[str, dict]:
    """timm's split records from shard sizes: one split per prefix (``shard`` for ``shard-00000.tar``), with
    ``num_samples``, ``filenames`` (relative to the folder) and ``shard_lengths``. Other names are skipped."""
    splits: dict[str, dict] = {}
    for name, count in sorted(sizes.items()):
        match = _SHARD_NAME.match(name)
        if match is None:
            continue
        prefix = match["prefix"]
        split = splits.setdefault(prefix, {"name": prefix, "num_samples": 0, "filenames": [], "shard_lengths": []})
        split["num_samples"] += int(count)
        split["filenames"].append(name)
        split["shard_lengths"].append(int(count))
    return splits


def write_timm_info(directory: str | os.PathLike, sizes: Mapping[str, int]) -> None:
    """Write (or update) ``_info.json``: the splits of ``timm_splits``; splits and keys of an existing file
    that are not vispre's prefixes (a dataset converted by another tool) are kept."""
    path = Path(directory) / TIMM_INFO_FILE
    info: dict[str, Any] = {}
    if path.exists():
        try:
            info = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            info = {}
        info = info if isinstance(info, dict) else {}
    splits = info.get("splits") if isinstance(info.get("splits"), dict) else {}
    info["name"] = info.get("name") or Path(directory).resolve().name
    info["splits"] = {**splits, **timm_splits(sizes)}
    write_json(path, info)


class ShardWriter:
    """Sequential writer: fills ``{prefix}-{index:05d}.tar`` shards of ``samples_per_shard``.

    Samples of the shard being filled are buffered in memory (as encoded bytes) and the shard is
    written atomically when full or on ``close()``, which also updates ``sizes.json``.
    """

    def __init__(self, out_dir, prefix: str = "shard", samples_per_shard: int = 1000, start_index: int = 0):
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.samples_per_shard = samples_per_shard
        self.index = start_index
        self.buffer: list[dict] = []
        self.sizes: dict[str, int] = {}

    def shard_name(self, index: int) -> str:
        return shard_name(self.prefix, index)

    def write(self, sample: Mapping[str, Any]) -> None:
        check_key(sample["__key__"])
        self.buffer.append(dict(sample))
        if len(self.buffer) >= self.samples_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        name = self.shard_name(self.index)
        self.sizes[name] = write_shard(self.out_dir / name, self.buffer)
        self.buffer = []
        self.index += 1

    def close(self) -> dict[str, int]:
        self.flush()
        if self.sizes:
            update_sizes(self.out_dir, self.sizes)
        return dict(self.sizes)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        return False
