"""Linear-probe cost: the whole grid in one pass against the same grid one head at a time, same data.

    python bench/probe.py                                   # CPU: ViT-Tiny at 48 px on 4000 synthetic images
    python bench/probe.py --data runs/demo/data/digits-train
    python bench/probe.py --device cuda --model vit_base_patch16_224 --img-size 224 --patch 16 --images 50000 \\
        --classes 1000 --batch 1024 --epochs 10 --lrs dinov2

Features are extracted once (timed), then the grid (learning rates x {last 1, last 4 blocks} x {with,
without the mean patch token}) is fitted two ways: vispre's one pass (every head in one batched
matmul per input variant, ``train_grid``) and the naive way (``train_single_head`` per head: its own
nn.Linear, torch.optim.SGD and scheduler, its own pass over the data). Both see the same mini-batches
and do the same maths; the largest weight difference per learning rate is printed as a check. It stays
at float rounding for stable rates; at large ones (lr * |x|^2 >> 1) the trajectory is chaotic and
rounding grows (on the demo digits, changing the naive head's own lr 0.1 by 1e-7 relative moves its
weights by ~0.1 after 20 epochs), so differences there do not mean different maths; the unit tests
check the grid against single heads in a stable regime. Peak memory: CUDA's max allocated per phase;
on CPU the process's peak RSS (it only grows, so later rows are upper bounds).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from vispre.evaluation import EvalTransform, Features, Variant, extract, train_grid, train_single_head
from vispre.evaluation.probe_recipe import DINOV2_LRS
from vispre.models import build_encoder

DEMO_LRS = [1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0]  # eval/demo_digits.yaml


class SyntheticImages:
    """Random uint8 images with random labels: the cost of extraction and fitting does not depend on content."""

    def __init__(self, n: int, size: int, classes: int):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, classes, (n,), generator=g)

    def describe(self) -> str:
        return f"{len(self.labels)} synthetic images"

    def batches(self, transform, batch_size: int, workers: int):
        for start in range(0, len(self.labels), batch_size):
            yield self.images[start:start + batch_size], self.labels[start:start + batch_size]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(device, fn):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start, peak_mib(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--img-size", type=int, default=48)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--data", default=None, help="labelled shards (default: synthetic images)")
    parser.add_argument("--images", type=int, default=4000, help="synthetic images")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--lrs", default="demo", help="demo (10 rates, eval/demo_digits.yaml) | dinov2 (13)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--extract-batch", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    lrs = DEMO_LRS if args.lrs == "demo" else DINOV2_LRS
    torch.manual_seed(0)
    encoder = build_encoder(args.model, img_size=args.img_size, patch_size=args.patch).eval()
    if args.data:
        from vispre.evaluation.probe_data import ShardProbeSet

        source = ShardProbeSet(args.data, "labelled", "label", "single", None)
    else:
        source = SyntheticImages(args.images, args.img_size, args.classes)
    transform = EvalTransform.from_encoder(encoder)

    features, extract_s, extract_mem = timed(device, lambda: extract(
        encoder, source, transform, n_blocks=4, batch_size=args.extract_batch, workers=1 if args.data else 0,
        device=device, precision="auto"))
    classes = int(features.targets.max()) + 1
    features = Features(features.blocks, features.patch_mean, features.targets).to(device)
    variants = [Variant(n, a) for n in (1, 4) for a in (False, True)]
    common = dict(task="single", num_classes=classes, epochs=args.epochs, batch_size=args.batch, device=device)
    heads, grid_s, grid_mem = timed(device, lambda: train_grid(features, variants, lrs, **common))

    def naive():
        return {(v, lr): train_single_head(features, v, lr, **common) for v in variants for lr in lrs}

    singles, naive_s, naive_mem = timed(device, naive)
    with torch.no_grad():
        diff = {lr: max(float((singles[v, lr].weight.T - heads[v].head(i)[0]).abs().max()) for v in variants)
                for i, lr in enumerate(lrs)}

    steps = args.epochs * -(-len(features) // args.batch)
    n_heads = len(variants) * len(lrs)
    print(f"{args.model} @ {args.img_size}px on {source.describe()} ({len(features)} images, {classes} classes), "
          f"{device}, {torch.get_num_threads()} threads")
    print(f"grid: {len(lrs)} lrs x {len(variants)} input variants = {n_heads} heads, {args.epochs} epochs "
          f"= {steps} steps of {args.batch}")
    print(f"{'':<28}{'extract s':>10}{'fit s':>10}{'total s':>10}{'peak MiB':>10}")
    print(f"{'one pass (vispre)':<28}{extract_s:>10.2f}{grid_s:>10.2f}{extract_s + grid_s:>10.2f}{grid_mem:>10.0f}")
    print(f"{'one head at a time (naive)':<28}{extract_s:>10.2f}{naive_s:>10.2f}{extract_s + naive_s:>10.2f}"
          f"{naive_mem:>10.0f}")
    total_ratio = (extract_s + naive_s) / (extract_s + grid_s)
    print(f"naive / one pass: fit {naive_s / grid_s:.2f}x, extract + fit {total_ratio:.2f}x; "
          f"extraction alone {extract_mem:.0f} MiB peak")
    print("max |W_grid - W_naive| per learning rate: " + ", ".join(f"{lr:g}: {d:.1e}" for lr, d in diff.items()))


if __name__ == "__main__":
    main()
