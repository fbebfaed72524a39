"""Probe-grid cost: the whole learning-rate grid in one pass against the same heads trained one at a
time on the same features, for the linear probe and the MAP probe, side by side in one run.

    python bench/probe.py                                   # CPU: ViT-Tiny/8 at 48 px on 4000 synthetic images
    python bench/probe.py --data runs/demo/data/digits-train
    python bench/probe.py --device cuda --model vit_small_patch16_224 --img-size 224 --patch 16 --images 20000 \\
        --classes 1000 --batch 1024 --epochs 10 --lrs dinov2 --map-batch 512

Features (pooled and the last block's tokens, float16) are extracted once (timed). Linear: the grid
(learning rates x {last 1, last 4 blocks} x {with, without the mean patch token}) fitted by vispre's
one pass (one gather and one matmul per input variant per step, ``train_grid``) and the naive way
(``train_single_head`` per head: its own nn.Linear, torch.optim.SGD, scheduler and pass over the
data). MAP: the naive way is one timm AttentionPoolLatent + classifier per learning rate with
torch.optim.AdamW (``train_reference``); vispre's grid stacks the heads and folds the attention so
no token is projected (vispre.evaluation.stacked). The middle MAP row runs the folded head alone,
once per learning rate, to show how much of the gain is the folding and how much the one pass.
All rows see the same mini-batches and do the same maths; the largest difference per learning rate
(linear: weights; MAP: test logits) is printed as a check. It stays at float rounding for stable
rates; at large linear rates (lr * |x|^2 >> 1) the trajectory is chaotic and rounding grows, so
differences there do not mean different maths (the unit tests check the grids against single heads
in a stable regime). Peak memory: CUDA's max allocated per phase; on CPU the process's peak RSS (it
only grows, so later rows are upper bounds).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from vispre.evaluation import EvalTransform, Features, Variant, extract, train_grid, train_single_head
from vispre.evaluation.grid import GridOptimizer, fit, train_reference
from vispre.evaluation.probe_recipe import DINOV2_LRS, FeatureConfig, MapConfig
from vispre.evaluation.token_probe import attention_heads, make_grid, make_head, optim_config, warmup_steps
from vispre.evaluation.tokens import CachedTokens
from vispre.models import build_encoder

DEMO_LRS = [1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0]  # eval/demo_digits.yaml
MAP_LRS = [1e-4, 3e-4, 1e-3, 3e-3]  # MapConfig's default grid


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
    """(output, seconds, peak MiB). Seconds: wall clock, or with --clock cpu this process's CPU time, which other
    jobs on a shared host inflate much less (with 1 torch thread it equals wall time on an idle host)."""
    sync(device)
    start = CLOCK()
    out = fn()
    sync(device)
    return out, CLOCK() - start, peak_mib(device)


CLOCK = time.perf_counter


def fastest(device, fns: dict, repeats: int) -> dict:
    """{name: (output, fastest seconds, peak MiB)}: every fn run ``repeats`` times, interleaved, so a load spike
    from other jobs on a shared machine does not land on one row only."""
    out = {}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            value, seconds, mem = timed(device, fn)
            best = out.get(name)
            out[name] = (value, min(seconds, best[1]) if best else seconds, mem)
    return out


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
    parser.add_argument("--map-epochs", type=int, default=5)
    parser.add_argument("--map-batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every fit this many times, interleaved, and keep each one's fastest (shared hosts)")
    parser.add_argument("--extract-batch", type=int, default=128)
    parser.add_argument("--random-features", metavar="T,D", default=None,
                        help="skip the encoder: random features with T tokens of width D per image (e.g. 197,384 "
                             "for ViT-S/16 at 224 px); fitting costs do not depend on the values")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: elapsed seconds; cpu: this process's CPU seconds (CPU device only; meant for 1 "
                             "thread on a shared machine, where other jobs stretch wall time unevenly)")
    args = parser.parse_args()
    global CLOCK
    if args.clock == "cpu":
        if args.device != "cpu":
            parser.error("--clock cpu times CPU work only; use --clock wall with --device cuda")
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    lrs = DEMO_LRS if args.lrs == "demo" else DINOV2_LRS
    torch.manual_seed(0)
    if args.random_features:
        tokens_shape = [int(v) for v in args.random_features.split(",")]
        source = SyntheticImages(0, 1, args.classes)
        source.describe = lambda: f"{args.images} random feature sets"  # noqa: E731
        features, extract_s, extract_mem = timed(device, lambda: random_features(args.images, *tokens_shape,
                                                                                  args.classes))
        args.model, args.img_size = "no encoder", 0
        return fit_and_report(args, device, lrs, source, features, extract_s, extract_mem)
    encoder = build_encoder(args.model, img_size=args.img_size, patch_size=args.patch).eval()
    if args.data:
        from vispre.evaluation.probe_data import ShardProbeSet

        source = ShardProbeSet(args.data, "labelled", "label", "single", None)
    else:
        source = SyntheticImages(args.images, args.img_size, args.classes)
    transform = EvalTransform.from_encoder(encoder)

    features, extract_s, extract_mem = timed(device, lambda: extract(
        encoder, source, transform, n_blocks=4, batch_size=args.extract_batch, workers=1 if args.data else 0,
        device=device, precision="auto", tokens=True))
    return fit_and_report(args, device, lrs, source, features, extract_s, extract_mem)


def random_features(n: int, tokens: int, dim: int, classes: int) -> Features:
    g = torch.Generator().manual_seed(0)
    return Features([torch.randn(n, dim, generator=g) for _ in range(4)], torch.randn(n, dim, generator=g),
                    torch.randint(0, classes, (n,), generator=g),
                    torch.randn(n, tokens, dim, generator=g).half())


def fit_and_report(args, device, lrs, source, features, extract_s, extract_mem):
    classes = int(features.targets.max()) + 1
    tokens = CachedTokens(features.tokens, features.targets, float32_mib=FeatureConfig().token_float32_mib)
    features = Features(features.blocks, features.patch_mean, features.targets).to(device)
    variants = [Variant(n, a) for n in (1, 4) for a in (False, True)]
    common = dict(task="single", num_classes=classes, epochs=args.epochs, batch_size=args.batch, device=device)
    def naive():
        return {(v, lr): train_single_head(features, v, lr, **common) for v in variants for lr in lrs}

    runs = fastest(device, {"grid": lambda: train_grid(features, variants, lrs, **common), "naive": naive},
                   args.repeats)
    (heads, grid_s, grid_mem), (singles, naive_s, naive_mem) = runs["grid"], runs["naive"]
    with torch.no_grad():
        diff = {lr: max(float((singles[v, lr].weight.T - heads[v].head(i)[0]).abs().max()) for v in variants)
                for i, lr in enumerate(lrs)}
    map_rows, map_diff = bench_map(tokens, classes, args, device)

    steps = args.epochs * -(-len(features) // args.batch)
    n_heads = len(variants) * len(lrs)
    print(f"{args.model} @ {args.img_size}px on {source.describe()} ({len(features)} images, {classes} classes, "
          f"tokens {list(tokens.tokens.shape[1:])}), {device}, {torch.get_num_threads()} threads; "
          f"extraction {extract_s:.1f} s, {extract_mem:.0f} MiB peak")
    print(f"fastest of {args.repeats} interleaved run(s) per row, {args.clock} clock")
    print(f"linear: {len(lrs)} lrs x {len(variants)} input variants = {n_heads} heads, {args.epochs} epochs "
          f"= {steps} steps of {args.batch}")
    map_steps = tokens.steps(args.map_batch, args.map_epochs)
    print(f"MAP: {len(MAP_LRS)} lrs, {args.map_epochs} epochs = {map_steps} steps of {args.map_batch}, "
          f"{attention_heads(MapConfig(), tokens.dim)} attention heads")
    print(f"{'':<44}{'fit s':>9}{'naive / this':>14}{'peak MiB':>10}")
    rows = [("linear: one head at a time (naive)", naive_s, naive_mem), ("linear: one pass (vispre)", grid_s, grid_mem)]
    for label, seconds, mem in rows:
        print(f"{label:<44}{seconds:>9.2f}{naive_s / seconds:>13.2f}x{mem:>10.0f}")
    for label, seconds, mem in map_rows:
        print(f"{label:<44}{seconds:>9.2f}{map_rows[0][1] / seconds:>13.2f}x{mem:>10.0f}")
    print(f"one pass vs one head at a time: linear {naive_s / grid_s:.2f}x, MAP {map_rows[0][1] / map_rows[-1][1]:.2f}x"
          f" (fit only; extraction is shared)")
    print("linear max |W_grid - W_naive| per lr: " + ", ".join(f"{lr:g}: {d:.1e}" for lr, d in diff.items()))
    print("MAP max |logits_grid - logits_naive| per lr: " + ", ".join(f"{lr:g}: {d:.1e}" for lr, d in map_diff.items()))


def bench_map(tokens, classes: int, args, device):
    """(rows, logit differences): timm heads one at a time, the folded head one at a time, the one-pass grid."""
    cfg = MapConfig(learning_rates=MAP_LRS, epochs=args.map_epochs, batch_size=args.map_batch)
    total = tokens.steps(cfg.batch_size, cfg.epochs)
    warmup = warmup_steps(cfg, total)
    head = make_head("map", cfg, tokens.dim, classes, seed=0)
    probe_x = tokens.tokens[:256].to(device)

    def naive():
        out = {}
        for lr in MAP_LRS:
            alone = make_head("map", cfg, tokens.dim, classes, seed=0).to(device)
            train_reference(alone, tokens.batches(cfg.batch_size, cfg.epochs, 0, device), total, task="single",
                            lr=lr, optim=optim_config(cfg), warmup=warmup)
            out[lr] = alone
        return out

    def folded_alone():
        for lr in MAP_LRS:
            grid = make_grid("map", head, [lr]).to(device)
            fit(grid, GridOptimizer(grid.param_lrs(), optim_config(cfg)),
                tokens.batches(cfg.batch_size, cfg.epochs, 0, device), total, task="single", warmup=warmup)

    def one_pass():
        grid = make_grid("map", head, MAP_LRS).to(device)
        fit(grid, GridOptimizer(grid.param_lrs(), optim_config(cfg)),
            tokens.batches(cfg.batch_size, cfg.epochs, 0, device), total, task="single", warmup=warmup)
        return grid

    runs = fastest(device, {"naive": naive, "folded": folded_alone, "grid": one_pass}, args.repeats)
    (singles, naive_s, naive_mem), (_, folded_s, folded_mem), (grid, grid_s, grid_mem) = runs.values()
    with torch.no_grad():
        together = grid(probe_x)
        diff = {lr: float((singles[lr](probe_x) - together[:, i]).abs().max()) for i, lr in enumerate(MAP_LRS)}
    rows = [("MAP: timm head, one at a time (naive)", naive_s, naive_mem),
            ("MAP: folded head, one at a time", folded_s, folded_mem), ("MAP: one pass (vispre)", grid_s, grid_mem)]
    return rows, diff


if __name__ == "__main__":
    main()
