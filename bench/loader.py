"""Loader throughput: vispre's image pipeline against a timm/open_clip-style baseline.

Same JPEG shards (real photos, shorter side 256 or 512 px), one process, one thread, no loader
workers: images/s per core. Each pipeline runs in a fresh subprocess so its peak RSS is its own.

* baseline: webdataset ``decode("pil")`` + torchvision RandomResizedCrop, flip, ColorJitter,
  ToTensor, Normalize, all on the CPU (what timm and open_clip do);
* vispre: header-first box sampling, reduced-size JPEG decode, uint8 crop + flip; colour
  augmentation runs batched on the training device, so it is not part of the loader's cost.

    python bench/loader.py [--images 400] [--views 1]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_shards(directory: Path, side: int, count: int, per_shard: int | None = None, extra=None) -> str:
    """JPEG q=90 crops of the photos bundled with scikit-image/scikit-learn, shorter side ``side``, in shards of
    ``per_shard`` samples (default: one shard); ``extra(i)`` adds fields to sample i (bench/gpu.py: txt, cls)."""
    import numpy as np
    from PIL import Image

    from vispre.data.demo import load_photos
    from vispre.data.shard_writer import ShardWriter

    photos = list(load_photos().values())
    rng = np.random.RandomState(side)
    with ShardWriter(directory, prefix=f"photos{side}", samples_per_shard=per_shard or count) as writer:
        for i in range(count):
            photo = photos[i % len(photos)]
            aspect = rng.uniform(0.75, 1.5)
            w, h = photo.size
            cw, ch = (w, int(w / aspect)) if w / aspect <= h else (int(h * aspect), h)
            x, y = rng.randint(0, w - cw + 1), rng.randint(0, h - ch + 1)
            crop = photo.crop((x, y, x + cw, y + ch))
            scale = side / min(crop.size)
            crop = crop.resize((max(side, round(crop.size[0] * scale)), max(side, round(crop.size[1] * scale))),
                               Image.BICUBIC)
            buffer = io.BytesIO()
            crop.convert("RGB").save(buffer, "JPEG", quality=90)
            writer.write({"__key__": f"{i:06d}", "jpg": buffer.getvalue(), **(extra(i) if extra else {})})
    return str(directory / f"photos{side}-00000.tar")


def run_baseline(spec: str, crop: int, views: int, jitter: bool = True) -> int:
    import torch
    import webdataset as wds
    from torchvision import transforms as T

    torch.set_num_threads(1)
    transform = T.Compose([T.RandomResizedCrop(crop, scale=(0.08, 1.0)), T.RandomHorizontalFlip()]
                          + ([T.ColorJitter(0.4, 0.4, 0.4, 0.1)] if jitter else [])
                          + [T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    dataset = wds.WebDataset(spec, shardshuffle=False, nodesplitter=wds.split_by_node).decode("pil")
    images = 0
    for sample in dataset:
        image = sample["jpg"].convert("RGB")
        torch.stack([transform(image) for _ in range(views)])
        images += 1
    return images


def run_vispre(spec: str, crop: int, views: int) -> int:
    import torch

    from vispre.data import CropGroup, DataConfig, build_loader

    torch.set_num_threads(1)
    config = DataConfig(spec=spec, format="image", resampled=False, batch_size=32, workers=0, shuffle_buffer=0,
                        views=[CropGroup(count=views, size=crop, scale=[0.08, 1.0])])
    return sum(len(batch["__key__"]) for batch in build_loader(config))


def run_geometry_baseline(spec: str, crop: int, views: int) -> int:
    return run_baseline(spec, crop, views, jitter=False)


PIPELINES = {"baseline": run_baseline, "baseline-nojitter": run_geometry_baseline, "vispre": run_vispre}


def peak_rss_mb() -> float:
    # VmHWM belongs to this process's address space; ru_maxrss would carry the parent's peak across exec.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> None:
    run = PIPELINES[args.child]
    run(args.spec, args.crop, args.views)  # warm-up pass (page cache, lazy imports)
    start = time.perf_counter()
    images = run(args.spec, args.crop, args.views)
    seconds = time.perf_counter() - start
    peak_mb = peak_rss_mb()
    print(json.dumps({"images_per_s": images / seconds, "peak_rss_mb": peak_mb}))


def measure(pipeline: str, spec: str, crop: int, views: int) -> dict:
    cmd = [sys.executable, __file__, "--child", pipeline, "--spec", spec, "--crop", str(crop), "--views", str(views)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{pipeline} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400, help="images per source size")
    parser.add_argument("--views", type=int, default=1, help="crops per image")
    parser.add_argument("--child", choices=list(PIPELINES), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--crop", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    print(f"images/s per core (1 process, 1 thread), {args.views} view(s) per image, {args.images} images")
    print("baseline: PIL + RandomResizedCrop + flip + ColorJitter on the CPU; no-jitter: the same without "
          "ColorJitter;\nvispre: reduced-size decode + uint8 crop + flip (colour jitter runs batched on the device)")
    print(f"{'source':>7} {'crop':>5} {'baseline':>9} {'no-jitter':>10} {'vispre':>8} {'ratio':>7} "
          f"{'vs no-jit':>9} {'RSS base':>9} {'RSS ours':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for side in (256, 512):
            spec = make_shards(Path(tmp) / str(side), side, args.images)
            for crop in (96, 224):
                base = measure("baseline", spec, crop, args.views)
                geometry = measure("baseline-nojitter", spec, crop, args.views)
                ours = measure("vispre", spec, crop, args.views)
                ratio = ours["images_per_s"] / base["images_per_s"]
                ratio_geometry = ours["images_per_s"] / geometry["images_per_s"]
                print(f"{side:>5}px {crop:>4}px {base['images_per_s']:>9.0f} {geometry['images_per_s']:>10.0f} "
                      f"{ours['images_per_s']:>8.0f} {ratio:>6.2f}x {ratio_geometry:>8.2f}x "
                      f"{base['peak_rss_mb']:>7.0f}MB {ours['peak_rss_mb']:>7.0f}MB", flush=True)


if __name__ == "__main__":
    main()
