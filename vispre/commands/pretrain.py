"""``vispre pretrain RECIPE [key=value ...]``: train an encoder (any method) on one loop."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "pretrain", help="pretrain an encoder from a recipe (AB, DINO, SimCLR, CLIP, ...)",
        description="Pretrain an encoder from a YAML recipe (see recipes/). key=value arguments override "
                    "recipe fields, e.g. 'train.steps=200 data.batch_size=32 method.ab.gamma=0.5'. "
                    "For many processes: accelerate launch -m vispre pretrain RECIPE ...")
    parser.add_argument("recipe", help="recipe YAML (recipes/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe fields to override")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="latest|CHECKPOINT",
                        help="continue from the newest checkpoint in train.output_dir (or a given one)")
    parser.add_argument("--overwrite", action="store_true",
                        help="train.output_dir holds an earlier run: delete its checkpoints and metrics and start "
                             "over (without --resume or --overwrite such a directory is refused)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..pretrain.recipe import load_recipe
    from ..utils.typed_config import to_yaml

    cfg = load_recipe(args.recipe, args.overrides)
    if args.print_config:
        print(to_yaml(cfg))
        return 0
    import sys

    from ..pretrain.checkpoint import CheckpointWriteError, NonFiniteCheckpoint
    from ..pretrain.loop import NonFiniteLoss, Preempted, pretrain
    from ..utils.errors import EXIT_FAILURE, EXIT_NONFINITE, EXIT_PREEMPTED

    try:
        out = pretrain(cfg, resume=args.resume, overwrite=args.overwrite)
    except Preempted as e:
        print(f"vispre pretrain: preempted by {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (NonFiniteLoss, NonFiniteCheckpoint) as e:
        print(f"vispre pretrain: stopped: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except CheckpointWriteError as e:  # a full disk is no bug: the message says where, no traceback
        print(f"vispre pretrain: {e}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"checkpoints: {out / 'checkpoints'}\nlogs: {out / 'metrics.jsonl'} (tensorboard: {out})")
    return 0
