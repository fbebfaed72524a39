"""Local shards for bench/gpu.py: real JPEG photos (with a caption and a class) and JPEG video clips.

The loader in the benchmark is vispre's own, reading these from local disk, so the data-wait column carries
tar reading, JPEG decoding and cropping at the benchmark's resolution. The photos are the ones bundled with
scikit-image / scikit-learn (the ``demo`` extra, as bench/loader.py uses), recropped per sample.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from loader import make_shards  # bench/loader.py: the same photo shards the loader benchmark reads
from PIL import Image

from vispre.data.shard_writer import ShardWriter


def labelled_caption(i: int) -> dict:
    return {"txt": f"a photo, sample {i}", "cls": str(i % 1000).encode()}


def make_image_shards(directory: Path, side: int, count: int, per_shard: int = 64) -> str:
    """``count`` JPEG photos (shorter side ``side``) with txt and cls, in shards of ``per_shard``: a directory."""
    make_shards(directory, side, count, per_shard=per_shard, extra=labelled_caption)
    return str(directory)


def make_clip_shards(directory: Path, side: int, clips: int, frames: int = 16, per_shard: int = 8) -> str:
    """``clips`` clips of ``frames`` JPEG frames (side x side), each a slow pan across one photo."""
    from vispre.data.demo import load_photos

    photos = list(load_photos().values())
    rng = np.random.RandomState(side)
    with ShardWriter(directory, prefix="clips", samples_per_shard=per_shard) as writer:
        for c in range(clips):
            photo = photos[c % len(photos)]
            scale = 1.5 * side / min(photo.size)  # room to pan: the frame is 2/3 of the shorter side
            photo = photo.resize((round(photo.size[0] * scale), round(photo.size[1] * scale)), Image.BICUBIC)
            x0, y0 = rng.randint(0, photo.size[0] - side + 1), rng.randint(0, photo.size[1] - side + 1)
            dx = (photo.size[0] - side - x0) // max(frames - 1, 1)
            sample = {"__key__": f"clip{c:05d}", "json": {"video_id": f"v{c}", "fps": 2.0}}
            for f in range(frames):
                frame = photo.crop((x0 + f * dx, y0, x0 + f * dx + side, y0 + side))
                buffer = io.BytesIO()
                frame.save(buffer, "JPEG", quality=90)
                sample[f"{f:03d}.jpg"] = buffer.getvalue()
            writer.write(sample)
    return str(directory)
