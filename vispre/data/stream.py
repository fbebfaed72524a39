"""The shard stream: an IterableDataset that yields whole batches, one reader per (rank, worker).

Each (rank, worker) pair is a *slot*. Splitting by rank and worker happens here, in the
dataset, never through ``accelerator.prepare`` (which would broadcast rank 0's split or split
the data a second time). Two kinds of epoch:

* finite (``resampled=False``): the shard list is shuffled from (seed, epoch) and dealt out
  round-robin to the slots, so every sample is read exactly once per epoch over all slots;
* resampled: each slot draws shards with replacement and a source per sample by the mixing
  weights, and yields exactly ``batches_per_slot`` full batches, so all ranks take the same
  number of steps.

Every random choice comes from (seed, epoch, slot), so a slot's stream is a pure function of
them. A batch carries its slot and the slot's *position* (raw samples taken from its shuffle
buffer so far); resuming at that position replays the raw stream without decoding and skips
that many samples: the data order continues exactly, nothing is seen twice or lost.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..utils.seeding import stable_seed as _seed
from .skips import SkipCounter, SkipSample
from .tar import DEFAULT_MAX_MEMBER_BYTES, iter_shard
from .transforms import collate
from .urls import ShardSet, open_url


@dataclass(frozen=True)
class RankLayout:
    """How the stream is split: ``world_size`` ranks x ``workers`` loader workers (0 counts as 1)."""

    world_size: int = 1
    rank: int = 0
    workers: int = 1

    @property
    def slots(self) -> int:
        return self.world_size * self.workers

    def slot(self, worker: int, rank: int | None = None) -> int:
        return (self.rank if rank is None else rank) * self.workers + worker


def _rng(*parts) -> random.Random:
    return random.Random(_seed(*parts))


def shuffle_buffer(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """Reservoir shuffle: hold ``size`` items, emit a random one as each new one arrives."""
    if size <= 1:
        yield from items
        return
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


class ShardStream(IterableDataset):
    def __init__(self, sources: list[ShardSet], decoder: Callable[[dict, torch.Generator], dict], *,
                 batch_size: int, layout: RankLayout, resampled: bool = True, samples_per_epoch: int | None = None,
                 shuffle_buffer: int = 1000, shard_shuffle: bool = True, seed: int = 0,
                 allow_pipe: bool = False, timeout: float = 60.0, deadline: float | None = None,
                 max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES):
        if not sources:
            raise ValueError("no data sources")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.sources = sources
        self.decoder = decoder
        self.batch_size = batch_size
        self.layout = layout
        self.resampled = resampled
        self.samples_per_epoch = samples_per_epoch
        self.buffer = shuffle_buffer
        self.shard_shuffle = shard_shuffle
        self.seed = seed
        self.opener = partial(open_url, allow_pipe=allow_pipe, timeout=timeout, deadline=deadline)
        self.max_member_bytes = max_member_bytes
        self.sizes = {u: n for s in sources if s.sizes for u, n in s.sizes.items()}
        self.epoch = 0
        self.resume: dict[int, tuple[int, int]] = {}  # slot -> (position, batches already yielded)
        if resampled:
            if not samples_per_epoch or samples_per_epoch < 1:
                raise ValueError("data.samples_per_epoch must be set (>= 1) when data.resampled=true")
        else:
            if any(s.weight != 1.0 for s in sources):
                raise ValueError("data.weights need data.resampled=true (a finite epoch reads every shard once)")
            if self.num_shards < layout.slots:
                raise ValueError(
                    f"{self.num_shards} shards cannot feed {layout.world_size} ranks x {layout.workers} workers "
                    f"= {layout.slots} readers in a finite epoch: write more, smaller shards "
                    "(vispre shards write --samples-per-shard), use fewer data.workers, or set data.resampled=true")

    # -- epoch geometry -------------------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return sum(len(s.urls) for s in self.sources)

    @property
    def batches_per_slot(self) -> int:
        """Resampled epochs: full batches every slot yields."""
        return math.ceil(self.samples_per_epoch / (self.batch_size * self.layout.slots))

    def epoch_shards(self, epoch: int) -> list[str]:
        urls = [u for s in self.sources for u in s.urls]
        if self.shard_shuffle:
            _rng(self.seed, epoch, "shards").shuffle(urls)
        return urls

    def slot_shards(self, slot: int, epoch: int) -> list[str]:
        return self.epoch_shards(epoch)[slot::self.layout.slots]

    def slot_samples(self, slot: int, epoch: int) -> int | None:
        """Finite epochs: raw samples in a slot's shards, if every shard's size is known."""
        sizes = {}
        for s in self.sources:
            if s.sizes is None:
                return None
            sizes.update(s.sizes)
        return sum(sizes[u] for u in self.slot_shards(slot, epoch))

    def rank_batches(self, rank: int, epoch: int) -> int | None:
        """Batches ``rank`` yields this epoch (None when shard sizes are unknown)."""
        if self.resampled:
            return self.layout.workers * self.batches_per_slot
        counts = [self.slot_samples(self.layout.slot(w, rank), epoch) for w in range(self.layout.workers)]
        if any(c is None for c in counts):
            return None
        return sum(math.ceil(c / self.batch_size) for c in counts)

    # -- raw samples ----------------------------------------------------------------------------
    def shard(self, url: str, skips: SkipCounter) -> Iterator[dict]:
        """One shard's raw samples; a whole read whose count differs from sizes.json is reported (epoch
        lengths and the ranks' padding are computed from those counts)."""
        count, before = 0, skips.shards.get(url, 0)
        for sample in iter_shard(url, self.opener, skips, self.max_member_bytes):
            count += 1
            yield sample
        expected = self.sizes.get(url)
        if expected is not None and count != expected and skips.shards.get(url, 0) == before:
            skips.add("size_mismatch", url, None, f"sizes.json says {expected} samples, the shard has {count}; "
                                                  "rewrite it: vispre shards inspect SPEC --write-sizes")

    def _finite(self, slot: int, skips: SkipCounter) -> Iterator[dict]:
        for url in self.slot_shards(slot, self.epoch):
            yield from self.shard(url, skips)

    def _resampled_source(self, index: int, slot: int, skips: SkipCounter) -> Iterator[dict]:
        source, rng = self.sources[index], _rng(self.seed, self.epoch, slot, "source", index)
        empty = 0
        while True:
            got = 0
            for sample in self.shard(rng.choice(source.urls), skips):
                got += 1
                yield sample
            empty = 0 if got else empty + 1
            if empty > 2 * len(source.urls) + 10:
                raise RuntimeError(f"source {source.spec!r}: {empty} shards in a row gave no samples "
                                   f"(skips so far: {dict(skips.reasons)})")

    def _resampled(self, slot: int, skips: SkipCounter) -> Iterator[dict]:
        streams = [self._resampled_source(i, slot, skips) for i in range(len(self.sources))]
        weights = [s.weight for s in self.sources]
        rng = _rng(self.seed, self.epoch, slot, "mix")
        while True:
            (stream,) = rng.choices(streams, weights)
            yield next(stream)

    def raw_samples(self, slot: int, skips: SkipCounter) -> Iterator[dict]:
        """The slot's raw samples after the shuffle buffer: the sequence positions count."""
        raw = self._resampled(slot, skips) if self.resampled else self._finite(slot, skips)
        return shuffle_buffer(raw, self.buffer, _rng(self.seed, self.epoch, slot, "buffer"))

    # -- batches --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers = info.num_workers if info else 1
        if workers != self.layout.workers:
            raise RuntimeError(f"the stream was built for {self.layout.workers} workers but runs in {workers}")
        slot = self.layout.slot(info.id if info else 0)
        position, batches = self.resume.get(slot, (0, 0))
        limit = self.batches_per_slot if self.resampled else None
        skips = SkipCounter()
        samples: list[dict] = []
        raw = self.raw_samples(slot, skips)
        for _ in range(position):  # resume: replay without decoding
            next(raw, None)
        for item in raw:
            if limit is not None and batches >= limit:
                break
            position += 1
            generator = torch.Generator().manual_seed(_seed(self.seed, self.epoch, slot, position))
            try:
                samples.append(self.decoder(item, generator))
            except SkipSample as e:
                skips.add(e.reason, item["__url__"], item["__key__"], str(e))
                continue
            if len(samples) == self.batch_size:
                batches += 1
                yield self._batch(samples, slot, position, batches, skips)
                samples = []
        if samples and limit is None:  # finite epochs keep the last partial batch
            batches += 1
            yield self._batch(samples, slot, position, batches, skips)
        yield {"__end__": True, "__slot__": slot, "__pos__": position, "__batches__": batches,
               "__skips__": skips.take()}

    def _batch(self, samples, slot, position, batches, skips) -> dict:
        batch = collate(samples)
        batch.update({"__slot__": slot, "__pos__": position, "__batches__": batches, "__skips__": skips.take(),
                      "valid": torch.ones(len(samples), dtype=torch.bool)})
        return batch
