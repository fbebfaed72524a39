"""The ``vispre`` command: ``vispre shards write|inspect|stream``, ``pretrain``, ``export``, ``eval``, ``recipes``.

Each sub-command lives in ``vispre/commands/`` and registers its own parser; the modules import torch & co.
only in their ``run()``, so ``vispre --help`` and argument errors are instant (tests/test_cli_startup.py).
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    from .commands import eval as eval_command
    from .commands import export, pretrain, recipes, shards_inspect, shards_stream, shards_write

    parser = argparse.ArgumentParser(
        prog="vispre",
        description="Visual encoders from unlabeled images and videos with RL value objectives. "
                    "Data lives in WebDataset shards; start with 'vispre shards --help'.")
    parser.add_argument("--version", action="version", version=f"vispre {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars (also off when stderr is no TTY)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    shards = commands.add_parser("shards", help="write and inspect WebDataset shards",
                                 description="Write shards from image folders, Hugging Face datasets, COCO "
                                             "captions or videos, and inspect existing shards.")
    shard_commands = shards.add_subparsers(dest="shards_command", metavar="SUBCOMMAND", required=True)
    shards_write.register(shard_commands)
    shards_inspect.register(shard_commands)
    shards_stream.register(shard_commands)
    pretrain.register(commands)
    export.register(commands)
    eval_command.register(commands)
    recipes.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit statuses (vispre.utils.errors): 0 done, 1 failed (unreadable shards, or a bug: with its traceback),
    2 a user error (one message naming the file and field; -v adds the traceback), 3 training stopped on a
    non-finite loss, 75 preempted by a signal after writing a checkpoint."""
    from .utils.errors import EXIT_USER_ERROR, UserError

    args = build_parser().parse_args(argv)
    if args.quiet:
        from .utils.progress import set_quiet

        set_quiet(True)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError,
            PermissionError) as e:  # PermissionError: no access to a path, or 'pipe:' without data.allow_pipe
        if args.verbose:
            raise
        # FileNotFoundError & co. come from a wrong path the user gave; their message names it
        message = str(e) if isinstance(e, UserError) or not getattr(e, "filename", None) else \
            f"{e.filename}: {e.strerror}"
        command = " ".join(c for c in (args.command, getattr(args, "shards_command", None)) if c)
        print(f"vispre {command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
