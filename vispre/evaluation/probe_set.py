"""What every probe set shares: targets from labels, the map-style loader, the stratified ``limit``.

An indexed probe set gives ``item(i) -> (encoded bytes | HxWx3 uint8 array | PIL image, label)``;
``batches`` decodes and crops in loader workers through the EvalTransform and yields ``(uint8
images [B, 3, S, S], targets)``, targets int64 class indices [B] (task "single") or float multi-hot
[B, C] (task "multi"). The readers are in probe_data.py (shards, folders, CIFAR, HF datasets) and
suites.py (CLEVR, COCO boxes, VISOR).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .subsets import describe_subset, stratified_subset
from .transform import EvalTransform


def to_targets(labels: list, task: str, num_classes: int | None, where: str) -> torch.Tensor:
    """Ints -> int64 [B]; lists of ints -> float multi-hot [B, num_classes]."""
    if task == "single":
        return torch.as_tensor([int(v) for v in labels], dtype=torch.int64)
    target = torch.zeros(len(labels), num_classes)
    for row, value in enumerate(labels):
        value = [value] if isinstance(value, int) else list(value)
        if any(not 0 <= int(v) < num_classes for v in value):
            raise ValueError(f"{where}: label {value} outside [0, {num_classes})")
        target[row, [int(v) for v in value]] = 1.0
    return target


def file_digest(paths: list[Path]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class _Images(Dataset):
    """Map-style: item i -> (uint8 crop, label) through the transform (runs in loader workers)."""

    def __init__(self, source: IndexedProbeSet, transform: EvalTransform):
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        image, label = self.source.item(index)
        try:
            return self.transform.image(image), label
        except Exception as e:
            raise ValueError(f"{self.source.where(index)}: {e}") from e


def _collate(items):
    return torch.stack([image for image, _ in items]), [label for _, label in items]


class IndexedProbeSet:
    """Sources with random access: ``item(i) -> (bytes | array | PIL image, label)``."""

    task = "single"
    num_classes: int | None = None
    classes: list[str] | None = None  # class names in index order, when the data has them

    def __len__(self) -> int:
        raise NotImplementedError

    def item(self, index: int):
        raise NotImplementedError

    subset: dict | None = None  # how ``limit`` drew the samples (None: all of them)

    def where(self, index: int) -> str:
        return f"item {index}"

    def count(self) -> int:
        return len(self)

    def draw(self, labels: list, limit: int | None, seed: int) -> list[int]:
        """The indices a ``limit`` keeps (class-stratified, random), remembered for the protocol."""
        if limit is None or limit >= len(labels):
            return list(range(len(labels)))
        chosen = stratified_subset(labels, limit, seed, self.task)
        self.subset = describe_subset(labels, chosen, limit, seed, self.task)
        return chosen

    def subset_identity(self) -> dict:
        if self.subset is None:
            return {}
        s = self.subset
        return {"subset": f"{s['limit']} of {s['of']}, {s['drawn']}, {s['classes_in_subset']} of "
                          f"{s['classes_in_data']} classes"}

    def batches(self, transform: EvalTransform, batch_size: int, workers: int,
                indices: list[int] | None = None) -> Iterator[tuple[torch.Tensor, Any]]:
        """Every item in index order, or the items ``indices`` in that order."""
        images = _Images(self, transform)
        loader = DataLoader(images if indices is None else Subset(images, indices), batch_size=batch_size,
                            shuffle=False, num_workers=workers, collate_fn=_collate)
        for images, labels in loader:
            yield images, to_targets(labels, self.task, self.num_classes, self.describe())
