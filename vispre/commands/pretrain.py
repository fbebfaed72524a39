"""``vispre pretrain RECIPE [key=value ...]``: train an encoder (any method) on one loop."""

from __future__ import annotations

import argparse
import re

# a key=value override (``train.steps=5``, ``arms.2.encoder=DIR``); a checkpoint path has a '/' before any '='
OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="latest|CHECKPOINT",
                        help="continue from the newest checkpoint in train.output_dir (or a given one)")
    parser.add_argument("--overwrite", action="store_true", default=None,
                        help="train.output_dir holds an earlier run: delete its checkpoints and metrics and start "
                             "over (without --resume or --overwrite such a directory is refused)")
    parser.add_argument("--print-config", action="store_true", default=None,
                        help="print the resolved recipe and exit (values still missing show as ???)")


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "pretrain", help="pretrain an encoder from a recipe (AB, DINO, SimCLR, CLIP, ...)",
        description="Pretrain an encoder from a YAML recipe: a path, or the name of a shipped one ('vispre "
                    "recipes' lists them, e.g. demo/simclr). key=value arguments override recipe fields, e.g. "
                    "'train.steps=200 data.batch_size=32 method.ab.gamma=0.5', before or after the options. "
                    "For many processes: accelerate launch -m vispre pretrain RECIPE ...")
    # optional to argparse only so that '--resume RECIPE' (the option first) parses: see parse_args_in_any_order
    parser.add_argument("recipe", nargs="?", help="recipe YAML, or a shipped recipe's name (vispre recipes pretrain)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe fields to override")
    _options(parser)
    # argparse takes the positionals before the first option: what follows it is re-read by parse_args_in_any_order
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)
    return parser


def parse_args_in_any_order(args: argparse.Namespace) -> argparse.Namespace:
    """Options and key=value overrides in any order, overrides kept in the order given (a later one wins).
    ``--resume`` takes an optional value, so argparse gives it the override that follows (``--resume
    train.steps=8``): such a value is an override, and --resume means the newest checkpoint. Given before the
    recipe (``--resume RECIPE``), it takes the recipe, which is then put back: a recipe is always required."""
    from ..utils.errors import UserError

    overrides = list(args.overrides)
    if args.resume not in (None, "latest") and (args.recipe is None or OVERRIDE.match(args.recipe)):
        if args.recipe is not None:
            overrides.insert(0, args.recipe)  # '--resume RECIPE key=value': the override went to the recipe slot
        args.recipe, args.resume = args.resume, "latest"
    if args.recipe is None:
        raise UserError("a recipe is required (vispre pretrain RECIPE [key=value ...]; 'vispre recipes' lists them)")
    if args.resume is not None and OVERRIDE.match(args.resume):
        overrides.append(args.resume)  # it came right after the options' start: after the first overrides
        args.resume = "latest"
    rest = list(getattr(args, "rest", None) or [])
    for i, token in enumerate(rest[:-1]):
        if token == "--resume" and OVERRIDE.match(rest[i + 1]):
            rest[i] = "--resume=latest"
    if rest:
        tail = argparse.ArgumentParser(prog="vispre pretrain")
        tail.add_argument("overrides", nargs="*")
        _options(tail)
        more = tail.parse_intermixed_args(rest)
        for key, value in vars(more).items():
            if key == "overrides":
                overrides += list(value)
            elif value is not None:
                setattr(args, key, value)
    args.overrides, args.rest = overrides, []
    args.overwrite, args.print_config = bool(args.overwrite), bool(args.print_config)
    return args


def run(args: argparse.Namespace) -> int:
    from ..pretrain.recipe import _plugins, load_recipe, recipe_schema
    from ..utils.recipe_files import resolve_recipe
    from ..utils.typed_config import preview_yaml

    args = parse_args_in_any_order(args)
    recipe = resolve_recipe(args.recipe, "pretrain")
    if args.print_config:  # no value checks: show the recipe as it stands, missing values as ???
        print(preview_yaml(recipe_schema(_plugins(recipe, args.overrides)), recipe, args.overrides), end="")
        return 0
    cfg = load_recipe(recipe, args.overrides)
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
