"""``vispre shards stream SPEC``: run the training loader over shards and report what it read.

A loader-only run: samples/s, batches, skipped samples by reason. Use it to check a dataset and
the loader's speed before spending GPU time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..data.formats import FORMATS  # light: vispre.data imports its loader lazily


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "stream", help="read shards through the training loader and report throughput and skips",
        description="Iterate the training data loader over SPEC for some epochs (random multi-crop views, or "
                    "centre crops with --eval-size) and print batches, samples/s and skipped samples.")
    parser.add_argument("spec", help="shard spec (sources joined by '::')")
    parser.add_argument("--format", choices=FORMATS, default="image")
    parser.add_argument("--weights", type=lambda s: [float(x) for x in s.split(",")], default=None,
                        help="mixing weights per source, e.g. 0.7,0.3 (needs --samples-per-epoch)")
    parser.add_argument("--samples-per-epoch", type=int, default=None,
                        help="resampled epochs of this many samples (default: finite epochs over every sample)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--crop", type=int, default=96, help="random crop size in px")
    parser.add_argument("--crops", type=int, default=2, help="random crops per image")
    parser.add_argument("--eval-size", type=int, default=None, help="centre crops of this size instead")
    parser.add_argument("--frame-size", type=int, default=64, help="clip format: frame size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..data import CropGroup, DataConfig, build_loader
    from ..utils.errors import EXIT_FAILURE
    from ..utils.progress import progress

    config = DataConfig(spec=args.spec, format=args.format, weights=args.weights,
                        resampled=args.samples_per_epoch is not None, samples_per_epoch=args.samples_per_epoch,
                        batch_size=args.batch_size, workers=args.workers, seed=args.seed,
                        views=[CropGroup(count=args.crops, size=args.crop)], eval_size=args.eval_size,
                        frame_size=args.frame_size)
    loader = build_loader(config)
    start = time.perf_counter()
    for _ in range(args.epochs):
        total = loader.target_batches()
        for _ in progress(loader, total=total, desc=f"epoch {loader.epoch}", unit="batch", disable=args.json):
            pass
    seconds = time.perf_counter() - start
    samples = sum(e["samples"] for e in loader.epochs)
    report = {"epochs": loader.epochs, "samples": samples, "seconds": round(seconds, 3),
              "samples_per_s": round(samples / seconds, 1)}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for e in loader.epochs:
            print(f"epoch {e['epoch']}: {e['batches']} batches, {e['samples']} samples, "
                  f"{e['skipped']['samples']} skipped {e['skipped']['reasons'] or ''}")
        print(f"{samples} samples in {seconds:.1f} s: {report['samples_per_s']} samples/s "
              f"({args.workers} workers)")
    failed = sorted({url for e in loader.epochs for url in e["skipped"]["failed_shards"]})
    if failed or not samples:
        print(f"vispre shards stream: error: {len(failed)} shards could not be read (missing, unreadable or "
              f"corrupt), {samples} samples read: {', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''}",
              file=sys.stderr)
        return EXIT_FAILURE
    return 0
