"""Labelled image sources for evaluation -> batches of (uint8 images, targets).

A source knows its ``identity`` (what the feature cache is keyed on and the protocol records) and
yields ``(images uint8 [B, 3, S, S], targets)`` through an :class:`EvalTransform`. Targets are int64
class indices [B] (task "single") or float multi-hot vectors [B, C] (task "multi").

* ``shards``: webdataset shards through vispre.data's finite (non-resampled) stream; ``labelled``
  samples (KEY.cls) or multi-label lists in KEY.json (the demo scenes' ``{"labels": [3, 7]}``).
* ``folder``: class sub-folders (ImageNet's train/ and val/ in their standard layout).
* ``cifar10`` / ``cifar100``: the official python-pickle batches, read with a restricted unpickler.
* ``hf``: a Hugging Face ``datasets`` dataset saved with save_to_disk, or by name when online.

The shared base (IndexedProbeSet, the stratified ``limit``) is in probe_set.py; the paper's other layouts
(CLEVR, COCO boxes, VISOR) in suites.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from ..data.sources.base import read_bytes
from .cifar import NUM_CLASSES, read_cifar, split_files
from .probe_recipe import ProbeSetConfig
from .probe_set import IndexedProbeSet, file_digest, to_targets
from .suites import build_suite_set
from .transform import EvalTransform

log = logging.getLogger("vispre.evaluation")


class FolderProbeSet(IndexedProbeSet):
    """Class sub-folders under ``root``; classes are the sorted folder names (ImageFolder's order)."""

    def __init__(self, root: str, limit: int | None = None, seed: int = 0):
        from ..data.sources.images import ImageFolderSource

        listing = ImageFolderSource(root, labels=True)
        self.root, self.classes = Path(root), listing.classes
        self.items = [(rel, label) for rel, _, label in listing.items]
        self.items = [self.items[i] for i in self.draw([label for _, label in self.items], limit, seed)]
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.items)

    def item(self, index: int):
        rel, label = self.items[index]
        return read_bytes(self.root / rel), label

    def where(self, index: int) -> str:
        return str(self.root / self.items[index][0])

    def describe(self) -> str:
        return f"folder {self.root}"

    def identity(self) -> dict:
        """The file list and labels, not the bytes (hashing ImageNet's 140 GB on every run would take minutes)."""
        listing = hashlib.blake2b("\n".join(f"{r}\t{c}" for r, c in self.items).encode(), digest_size=16)
        return {"kind": "folder", "path": str(self.root.resolve()), "samples": len(self.items),
                "classes": len(self.classes), "files": listing.hexdigest(), **self.subset_identity()}


class CifarProbeSet(IndexedProbeSet):
    def __init__(self, root: str, kind: str, split: str, limit: int | None = None, seed: int = 0):
        self.root, self.kind, self.split = root, kind, split
        self.files = split_files(root, kind, split)
        self.images, self.labels = read_cifar(root, kind, split)
        chosen = self.draw(self.labels.tolist(), limit, seed)
        self.images, self.labels = self.images[chosen], self.labels[chosen]
        self.num_classes = NUM_CLASSES[kind]

    def __len__(self) -> int:
        return len(self.labels)

    def item(self, index: int):
        return self.images[index], int(self.labels[index])

    def describe(self) -> str:
        return f"{self.kind} {self.split} ({self.root})"

    def identity(self) -> dict:
        return {"kind": self.kind, "split": self.split, "path": str(Path(self.root).resolve()),
                "samples": len(self.labels), "content": file_digest(self.files), **self.subset_identity()}


class HFProbeSet(IndexedProbeSet):
    """A ``datasets.Dataset``; the label column holds ints (single) or lists of ints (multi-label)."""

    def __init__(self, path: str, split: str, image_key: str, label_key: str, task: str, num_classes: int | None,
                 limit: int | None = None, seed: int = 0):
        import datasets

        from ..data.sources.images import load_hf

        if not Path(path).exists() and (os.environ.get("HF_HUB_OFFLINE") == "1"
                                        or os.environ.get("HF_DATASETS_OFFLINE") == "1"):
            raise FileNotFoundError(f"hf dataset {path!r}: no such folder, and loading by name is off "
                                    "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE=1)")
        ds = load_hf(path, split or None)
        for column in (image_key, label_key):
            if column not in ds.column_names:
                raise KeyError(f"hf dataset {path}: no column {column!r} (columns: {ds.column_names})")
        self.task = task
        if limit is not None and limit < len(ds):
            ds = ds.select(self.draw(ds[label_key], limit, seed))
        feature = ds.features[label_key]
        if isinstance(feature, datasets.ClassLabel):
            num_classes, self.classes = num_classes or feature.num_classes, list(feature.names)
        self.ds, self.path, self.split, self.image_key, self.label_key = ds, path, split, image_key, label_key
        self.task, self.num_classes = task, num_classes

    def __len__(self) -> int:
        return len(self.ds)

    def item(self, index: int):
        from ..data.sources.images import hf_image_bytes

        row = self.ds[index]
        return hf_image_bytes(row[self.image_key], self.where(index)), row[self.label_key]

    def where(self, index: int) -> str:
        return f"{self.path}[{index}].{self.image_key}"

    def describe(self) -> str:
        return f"hf {self.path} {self.split}"

    def identity(self) -> dict:
        return {"kind": "hf", "path": self.path, "split": self.split, "samples": len(self.ds),
                "fingerprint": self.ds._fingerprint, "columns": [self.image_key, self.label_key],
                **self.subset_identity()}


class ShardProbeSet:
    """Labelled webdataset shards, read once in order by vispre.data's finite stream."""

    def __init__(self, spec: str, format: str, label_key: str, task: str, num_classes: int | None):
        from ..data.urls import parse_spec

        check_shard_format(format, label_key)
        self.spec, self.format, self.label_key = spec, format, label_key
        self.task, self.num_classes = task, num_classes
        self.sources = parse_spec(spec)

    def describe(self) -> str:
        return f"shards {self.spec}"

    def identity(self) -> dict:
        """Shard URLs, sizes.json and, for local files, their size and modification time (not the bytes)."""
        urls = [u for s in self.sources for u in s.urls]
        files = {u: [os.stat(u).st_size, os.stat(u).st_mtime_ns] for u in urls if os.path.isfile(u)}
        sizes = {u: n for s in self.sources for u, n in (s.sizes or {}).items()}
        return {"kind": "shards", "spec": self.spec, "shards": len(urls), "urls": urls, "files": files, "sizes": sizes,
                "format": self.format, "label_key": self.label_key}

    def count(self) -> int | None:
        """Samples according to sizes.json (None when a shard has no size)."""
        counts = [s.num_samples for s in self.sources]
        return None if any(c is None for c in counts) else sum(counts)

    def labels(self, batch: dict) -> list:
        if self.format == "labelled":
            return batch["cls"].tolist()
        found = []
        for key, meta in zip(batch["__key__"], batch["json"]):
            if self.label_key not in meta:
                raise KeyError(f"{self.spec}: sample {key} has no {self.label_key!r} in its json")
            found.append(meta[self.label_key])
        return found

    def batches(self, transform: EvalTransform, batch_size: int, workers: int):
        from ..data import DataConfig, build_loader

        shards = sum(len(s.urls) for s in self.sources)
        config = DataConfig(spec=self.spec, format="labelled" if self.format == "labelled" else "image",
                            resampled=False, batch_size=batch_size, workers=min(workers, shards),
                            shuffle_buffer=0, shard_shuffle=False, even_batches=False)
        loader, seen = build_loader(config, transform=transform), 0
        for batch in loader:
            keep = batch["valid"]
            images, labels = batch["image"][keep], [v for v, k in zip(self.labels(batch), keep.tolist()) if k]
            seen += len(labels)
            if labels:
                yield images, to_targets(labels, self.task, self.num_classes, self.describe())
        skipped = loader.epochs[-1]["skipped"] if loader.epochs else None
        if skipped and skipped["samples"]:
            log.warning("%s: %d unreadable samples skipped %s", self.describe(), skipped["samples"], skipped["reasons"])


def check_shard_format(format: str, label_key: str) -> None:
    if format not in ("labelled", "json"):
        raise ValueError(f"shards format must be 'labelled' (KEY.cls) or 'json' (KEY.json[{label_key!r}]), "
                         f"got {format!r}")


IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class LimitedShardProbeSet(IndexedProbeSet):
    """``limit`` samples of labelled shards, drawn class-stratified: one pass reads every sample's key and
    label (no image is decoded), a second keeps the chosen samples' encoded bytes in memory (a limit is
    for quick runs)."""

    def __init__(self, spec: str, format: str, label_key: str, task: str, num_classes: int | None, limit: int,
                 seed: int = 0):
        from ..data.urls import parse_spec

        check_shard_format(format, label_key)
        self.spec, self.format, self.label_key, self.task, self.num_classes = spec, format, label_key, task, num_classes
        self.urls = [u for s in parse_spec(spec) for u in s.urls]
        keys, labels = [], []
        for sample in self._raw():
            keys.append(sample["__key__"])
            labels.append(self._label(sample))
        chosen = set(self.draw(labels, limit, seed))
        wanted = {keys[i] for i in chosen}
        self.items = [(s["__key__"], self._image(s), self._label(s)) for s in self._raw() if s["__key__"] in wanted]

    def _raw(self):
        from ..data.skips import SkipCounter
        from ..data.tar import iter_shard
        from ..data.urls import open_url

        skips = SkipCounter()
        for url in self.urls:
            yield from iter_shard(url, open_url, skips)

    def _label(self, sample: dict):
        import json

        if self.format == "labelled":
            return int(sample["cls"])
        meta = json.loads(sample["json"])
        if self.label_key not in meta:
            raise KeyError(f"{self.spec}: sample {sample['__key__']} has no {self.label_key!r} in its json")
        return meta[self.label_key]

    def _image(self, sample: dict) -> bytes:
        for ext in IMAGE_EXTENSIONS:
            if ext in sample:
                return sample[ext]
        raise ValueError(f"{self.spec}: sample {sample['__key__']} has no image ({', '.join(IMAGE_EXTENSIONS)})")

    def __len__(self) -> int:
        return len(self.items)

    def item(self, index: int):
        return self.items[index][1], self.items[index][2]

    def where(self, index: int) -> str:
        return f"{self.spec} {self.items[index][0]}"

    def describe(self) -> str:
        return f"shards {self.spec} (subset)"

    def identity(self) -> dict:
        keys = hashlib.blake2b("\n".join(k for k, _, _ in self.items).encode(), digest_size=16).hexdigest()
        files = {u: [os.stat(u).st_size, os.stat(u).st_mtime_ns] for u in self.urls if os.path.isfile(u)}
        return {"kind": "shards", "spec": self.spec, "urls": self.urls, "files": files, "format": self.format,
                "label_key": self.label_key, "samples": len(self.items), "keys": keys, **self.subset_identity()}


def build_probe_set(cfg: ProbeSetConfig, task: str, num_classes: int | None, seed: int = 0):
    """The probe set of one split; ``cfg.limit`` draws a class-stratified random subset with ``seed``."""
    if cfg.kind == "shards":
        if cfg.limit is not None:
            return LimitedShardProbeSet(cfg.path, cfg.format, cfg.label_key, task, num_classes, cfg.limit, seed)
        return ShardProbeSet(cfg.path, cfg.format, cfg.label_key, task, num_classes)
    if task == "multi" and cfg.kind in ("folder", "cifar10", "cifar100"):
        raise ValueError(f"{cfg.kind} sources have one class per image; task=multi needs shards (json) or hf")
    if cfg.kind == "folder":
        return FolderProbeSet(cfg.path, cfg.limit, seed)
    if cfg.kind in ("cifar10", "cifar100"):
        return CifarProbeSet(cfg.path, cfg.kind, cfg.split or "train", cfg.limit, seed)
    if cfg.kind == "hf":
        return HFProbeSet(cfg.path, cfg.split, cfg.image_key, cfg.label_key, task, num_classes, cfg.limit, seed)
    return build_suite_set(cfg, task, num_classes, seed)  # the paper's layouts: CLEVR, COCO boxes, VISOR
    raise ValueError(f"unknown source kind {cfg.kind!r}")
