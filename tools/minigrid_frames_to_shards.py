"""The distinct frames of a video (an OGBench-layout .npz: MiniGrid, OGBench cube) as image shards, for the
image methods (AB, DINO, SimCLR).

    python tools/minigrid_frames_to_shards.py runs/minigrid/video/simple_crossing-play.npz runs/minigrid/frames

A grid-world video revisits the same frames over and over (a few thousand distinct frames in tens of
thousands of rows), so each distinct frame is written once, as a lossless PNG sample
(``KEY.png`` + ``KEY.json`` with the first row it appears at), 1000 per shard, with ``sizes.json``.
The image recipes then read them like any image shards (``recipes/minigrid/ab_dino.yaml``).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from vispre.data.shard_writer import ShardWriter
from vispre.rl.encoders import unique_rows


def png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="png")
    return buffer.getvalue()


def write_frames(npz: str | Path, out: str | Path, samples_per_shard: int = 1000, every: int = 1) -> dict:
    """Write the distinct ``observations`` of ``npz`` under ``out`` (of every ``every``-th row: a continuous
    video such as OGBench's cube differs little from one frame to the next); return {frames, rows, shards}."""
    with np.load(npz) as data:
        if "observations" not in data.files:
            raise KeyError(f"{npz}: no 'observations' array (members: {sorted(data.files)})")
        frames = data["observations"]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{npz}: observations must be uint8 [N, H, W, 3] frames, got {frames.dtype} {frames.shape}")
    if every < 1:
        raise ValueError(f"--every must be at least 1, got {every}")
    first, _ = unique_rows(frames[::every])
    first = first * every
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with ShardWriter(out, prefix="frames", samples_per_shard=samples_per_shard) as writer:
        for i, row in enumerate(first):
            writer.write({"__key__": f"frame-{i:06d}", "png": png(frames[row]), "json": {"row": int(row)}})
    return {"frames": len(first), "rows": len(frames), "shards": len(writer.sizes)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("npz", help="an OGBench-layout .npz with uint8 observations (tools/make_minigrid_video.py)")
    parser.add_argument("out", help="output folder for frames-NNNNN.tar and sizes.json")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--every", type=int, default=1, help="keep every N-th row (default: all)")
    args = parser.parse_args(argv)
    print(json.dumps(write_frames(args.npz, args.out, args.samples_per_shard, args.every)))


if __name__ == "__main__":
    main()
