"""What is in a shard spec: samples, extensions, bytes and bad samples per shard."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from . import formats
from .decode import DEFAULT_MAX_PIXELS, check_size, decode_rgb, image_size
from .shard_writer import update_sizes
from .skips import SkipCounter, SkipSample
from .tar import iter_shard
from .urls import open_url, parse_spec, scheme


def check_sample(raw: dict, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Decode every image (or clip frame) and parse the json; raise SkipSample on the first problem."""
    formats.metadata(raw)
    frames = [ext for ext in raw if "." in ext and ext.split(".")[0].isdigit()]
    images = frames or [ext for ext in formats.IMAGE_EXTS if ext in raw]
    if not images:
        raise SkipSample("missing_key", "no image")
    for ext in images:
        check_size(*image_size(raw[ext]), max_pixels)
        decode_rgb(raw[ext])


def inspect_shard(url: str, decode: bool = False, allow_pipe: bool = False,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    skips = SkipCounter(first_warnings=0, warn_every_s=float("inf"))  # reported in the result instead
    extensions: Counter[str] = Counter()
    samples = size = 0
    for raw in iter_shard(url, lambda u: open_url(u, allow_pipe=allow_pipe), skips):
        samples += 1
        extensions.update(k for k in raw if not k.startswith("__"))
        size += sum(len(v) for k, v in raw.items() if not k.startswith("__"))
        if decode:
            try:
                check_sample(raw, max_pixels)
            except SkipSample as e:
                skips.add(e.reason, url, raw["__key__"], str(e))
    return {"url": url, "samples": samples, "bad": skips.samples, "bytes": size,
            "extensions": dict(sorted(extensions.items())), "skipped": dict(skips.reasons)}


def inspect_spec(spec: str, decode: bool = False, allow_pipe: bool = False, write_sizes: bool = False,
                 progress: Iterable | None = None) -> dict:
    """Inspect every shard of ``spec``; ``write_sizes`` records the counts in each local sizes.json.

    ``samples`` counts whole samples read from the tars (bad ones included, as sizes.json does):
    the stream's epoch length is in those units.
    """
    urls = [u for source in parse_spec(spec, allow_pipe=allow_pipe, read_sizes=False) for u in source.urls]
    shards = [inspect_shard(u, decode, allow_pipe) for u in (progress(urls) if progress else urls)]
    if write_sizes:
        by_dir: dict[Path, dict[str, int]] = {}
        for shard in shards:
            if scheme(shard["url"]) != "file":
                raise ValueError(f"--write-sizes writes next to local shards only, not {shard['url']}")
            path = Path(shard["url"])
            by_dir.setdefault(path.parent, {})[path.name] = shard["samples"]
        for directory, sizes in by_dir.items():
            update_sizes(directory, sizes)
    return {"samples": sum(s["samples"] for s in shards), "bad": sum(s["bad"] for s in shards), "shards": shards}


def format_report(report: dict) -> str:
    lines = [f"{'shard':<50} {'samples':>8} {'bad':>5} {'MB':>8}  extensions"]
    for s in report["shards"]:
        name = s["url"] if len(s["url"]) <= 50 else "..." + s["url"][-47:]
        exts = " ".join(f"{k}:{v}" for k, v in s["extensions"].items())
        lines.append(f"{name:<50} {s['samples']:>8} {s['bad']:>5} {s['bytes'] / 1e6:>8.2f}  {exts}")
        if s["skipped"]:
            lines.append(f"{'':<50} skipped: {json.dumps(s['skipped'])}")
    lines.append(f"total: {len(report['shards'])} shards, {report['samples']} samples, {report['bad']} bad")
    return "\n".join(lines)
