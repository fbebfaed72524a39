"""``vispre recipes``: the pretraining and evaluation recipes that ship with vispre, one line each."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "recipes", help="list the shipped pretraining and evaluation recipes",
        description="List the recipes that ship with vispre, with the first line of each one's comment. "
                    "'vispre pretrain NAME' and 'vispre eval NAME' take these names as well as paths.")
    parser.add_argument("kind", nargs="?", choices=("pretrain", "eval"), default=None,
                        help="only pretraining or only evaluation recipes")
    parser.add_argument("--paths", action="store_true", help="also print where each file is")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..utils.recipe_files import describe, recipe_root, shipped_recipes

    for kind, title in (("pretrain", "pretraining recipes (vispre pretrain NAME)"),
                        ("eval", "evaluation recipes (vispre eval NAME --encoder DIR)")):
        if args.kind not in (None, kind):
            continue
        found = shipped_recipes(kind)
        print(f"{title}: {len(found)} in {recipe_root(kind)}")
        width = max((len(name) for name, _ in found), default=0)
        for name, path in found:
            line = f"  {name:<{width}}  {describe(path)}"
            print(f"{line}\n  {'':<{width}}  {path}" if args.paths else line)
    return 0
