"""Build the embedded demo dataset (offline): ``python tools/make_demo_data.py OUT_DIR``.

Thin wrapper over ``vispre.data.demo.build_demo_data``; an up-to-date OUT_DIR is reused.
"""

from __future__ import annotations

import argparse
import json
import logging

from vispre.data.demo import build_demo_data


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build the embedded demo dataset (offline).")
    parser.add_argument("out_dir", help="output: scenes/, scenes-val/, digits-train/, digits-test/, "
                        "shapes-train/, shapes-test/")
    parser.add_argument("--scenes", type=int, default=4000, help="training scenes (default 4000)")
    parser.add_argument("--val-scenes", type=int, default=500, help="held-out scenes (default 500)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT_DIR is up to date")
    return parser.parse_args(argv)


def summary(info: dict) -> dict:
    """What to print: parameters, per-split counts and shards, whether it was reused."""
    splits = {name: {"samples": entry["samples"], "shards": entry["shards"]}
              for name, entry in info["splits"].items()}
    return {"params": info["params"], "splits": splits, "reused": info["reused"], "seconds": info["seconds"]}


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    info = build_demo_data(args.out_dir, scenes=args.scenes, val_scenes=args.val_scenes, size=args.size,
                           seed=args.seed, force=args.force)
    print(json.dumps(summary(info), indent=1))


if __name__ == "__main__":
    main()
