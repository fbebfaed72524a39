"""``vispre shards inspect SPEC``: samples, keys, sizes and bad samples per shard."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "inspect", help="count samples, extensions and bad samples per shard",
        description="Read every shard of SPEC (brace patterns, a directory, http(s)://, s3://..., sources "
                    "joined by '::') and report samples, extensions, bytes and bad samples per shard.")
    parser.add_argument("spec", help="shard spec, e.g. 'data/cc12m-{00000..00099}.tar' or a directory")
    parser.add_argument("--decode", action="store_true", help="also decode every image and parse every json")
    parser.add_argument("--json", action="store_true",
                        help='print {"samples": N, "bad": M, "shards": [...]} as JSON')
    parser.add_argument("--write-sizes", action="store_true",
                        help="record the sample counts in sizes.json next to local shards")
    parser.add_argument("--allow-pipe", action="store_true", help="allow 'pipe:' URLs (they run shell commands)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..data.inspect import format_report, inspect_spec
    from ..data.skips import FAILED_SHARD
    from ..utils.errors import EXIT_FAILURE
    from ..utils.progress import progress as progress_bar

    progress = (lambda urls: progress_bar(urls, desc="shards", unit="shard")) if not args.json else None
    report = inspect_spec(args.spec, decode=args.decode, allow_pipe=args.allow_pipe,
                          write_sizes=args.write_sizes, progress=progress)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    failed = [s["url"] for s in report["shards"] if set(s["skipped"]) & FAILED_SHARD]
    if failed or not report["shards"]:
        print(f"vispre shards inspect: error: {len(failed)} of {len(report['shards'])} shards could not be read "
              f"(missing, unreadable or corrupt): {', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''}",
              file=sys.stderr)
        return EXIT_FAILURE
    return 0
