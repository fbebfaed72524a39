"""Tiny generated shards for tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from vispre.data.shard_writer import update_sizes, write_shard


def jpeg(width=40, height=32, seed=0, mode="RGB", fmt="JPEG") -> bytes:
    rs = np.random.RandomState(seed)
    array = (rs.rand(height, width, 3) * 255).astype(np.uint8)
    img = Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def make_image_shards(directory, sizes, prefix="shard", write_sizes=True, start=0) -> tuple[Path, list[str]]:
    """Shards of labelled 40x32 JPEGs; key i has cls i. Returns (directory, all keys)."""
    directory = Path(directory)
    keys, counts, index = [], {}, start
    for s, n in enumerate(sizes):
        samples = []
        for _ in range(n):
            key = f"{prefix}{index:06d}"
            samples.append({"__key__": key, "jpg": jpeg(seed=index), "cls": index, "txt": f"caption {index}"})
            keys.append(key)
            index += 1
        name = f"{prefix}-{s:05d}.tar"
        counts[name] = write_shard(directory / name, samples)
    if write_sizes:
        update_sizes(directory, counts)
    return directory, keys
