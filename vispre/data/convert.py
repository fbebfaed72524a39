"""Write a source (``vispre.data.sources``) to WebDataset shards with a pool of processes.

Shard i holds the samples of chunk i of ``source.items`` (``samples_per_shard`` items each), and
each task writes one whole shard with ``write_shard`` (atomic: a shard exists complete or not at
all). The shard contents depend only on the source and ``samples_per_shard``, never on the number
of workers or on which finishes first, so runs are byte-for-byte reproducible.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vispre.data.shard_writer import read_sizes, shard_name, update_sizes, write_shard
from vispre.data.sources import Skipped, Source
from vispre.utils.io import write_json
from vispre.utils.progress import progress as progress_bar

log = logging.getLogger(__name__)


@dataclass
class ShardResult:
    index: int
    name: str
    samples: int
    bytes: int
    skipped: list[Skipped] = field(default_factory=list)


def plan_shards(num_items: int, samples_per_shard: int) -> list[tuple[int, int, int]]:
    """(shard index, first item, end item) for each shard."""
    return [(i, start, min(start + samples_per_shard, num_items))
            for i, start in enumerate(range(0, num_items, samples_per_shard))]


# The source lives in each worker as a global (set once by the pool initializer) so that tasks
# only carry three integers, not the items or an open dataset.
_SOURCE: Source | None = None
_OUT: tuple[Path, str] | None = None


def _init_worker(source: Source, out_dir: Path, prefix: str) -> None:
    global _SOURCE, _OUT
    _SOURCE, _OUT = source, (out_dir, prefix)


def _write_task(task: tuple[int, int, int]) -> ShardResult:
    index, start, end = task
    out_dir, prefix = _OUT
    skipped: list[Skipped] = []
    name = shard_name(prefix, index)
    count = write_shard(out_dir / name, _SOURCE.read(_SOURCE.items[start:end], skipped))
    return ShardResult(index, name, count, (out_dir / name).stat().st_size, skipped)


def _run_tasks(tasks, source: Source, out_dir: Path, prefix: str, workers: int) -> Iterator[ShardResult]:
    if workers == 1 or len(tasks) <= 1:  # in-process: no start-up cost, plain tracebacks
        _init_worker(source, out_dir, prefix)
        yield from map(_write_task, tasks)
        return
    with multiprocessing.get_context().Pool(workers, _init_worker, (source, out_dir, prefix)) as pool:
        yield from pool.imap_unordered(_write_task, tasks)


def _existing_shards(out_dir: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in out_dir.glob(f"{prefix}-*.tar"))


def _remove_partial(out_dir: Path, prefix: str) -> None:
    """Delete ``NAME.tar.tmpPID`` files that workers stopped mid-shard (pool terminate) left."""
    for tmp in out_dir.glob(f"{prefix}-*.tar.tmp*"):
        tmp.unlink(missing_ok=True)


def write_shards(source: Source, out_dir: str | os.PathLike, samples_per_shard: int = 1000,
                 workers: int = 1, prefix: str = "shard", progress: bool = True,
                 resume: bool = False) -> dict[str, Any]:
    """Write ``source`` as ``{prefix}-00000.tar, ...`` in ``out_dir``; return a summary dict.

    Unreadable inputs are skipped and listed in the summary. Shards already in ``out_dir`` with
    this prefix are an error, unless ``resume``: then those listed in ``sizes.json`` are kept and
    only the missing ones are written (the plan is deterministic, so they fit together).
    ``sizes.json`` is updated with every shard written, even when a later shard fails.
    """
    if samples_per_shard < 1 or workers < 1:
        raise ValueError(f"samples_per_shard and workers must be >= 1, got {samples_per_shard}, {workers}")
    began = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_shards(len(source), samples_per_shard)
    existing = _existing_shards(out_dir, prefix)
    if existing and not resume:
        raise FileExistsError(f"{out_dir} already has {len(existing)} '{prefix}-*.tar' shards "
                              "(resume, or choose another prefix or output folder)")
    done = {name: n for name, n in read_sizes(out_dir).items() if name in existing} if resume else {}
    tasks = [task for task in plan if shard_name(prefix, task[0]) not in done]
    for name, value in source.extra_files().items():
        write_json(out_dir / name, value)

    results: list[ShardResult] = []
    bar = progress_bar(total=len(source), unit="sample", desc=f"{out_dir.name}/{prefix}", disable=not progress)
    bar.update(sum(end - start for i, start, end in plan if shard_name(prefix, i) in done))
    try:
        for result in _run_tasks(tasks, source, out_dir, prefix, workers):
            results.append(result)
            bar.update(plan[result.index][2] - plan[result.index][1])
    finally:
        bar.close()
        _remove_partial(out_dir, prefix)
        # Record what was written even if a shard failed: a resumed run then skips those.
        if results:
            update_sizes(out_dir, {r.name: r.samples for r in results})
    return _summary(source, out_dir, results, done, time.perf_counter() - began)


def _summary(source: Source, out_dir: Path, results: list[ShardResult], kept: dict[str, int],
             seconds: float) -> dict[str, Any]:
    results = sorted(results, key=lambda r: r.index)
    skipped = list(source.skipped) + [s for r in results for s in r.skipped]
    summary = {
        "out_dir": str(out_dir),
        "format": source.format,
        "shards": len(results) + len(kept),
        "shards_written": len(results),
        "samples": sum(r.samples for r in results) + sum(kept.values()),
        "bytes": sum(r.bytes for r in results) + sum((out_dir / n).stat().st_size for n in kept),
        "skipped": len(skipped),
        "skipped_inputs": [asdict(s) for s in skipped],
        "seconds": round(seconds, 3),
    }
    log.info("wrote %d shards, %d samples, %d bytes to %s in %.1f s (%d inputs skipped)",
             summary["shards_written"], summary["samples"], summary["bytes"], out_dir, seconds,
             summary["skipped"])
    return summary
