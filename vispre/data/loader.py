"""One rank's view of the stream: a DataLoader over ``ShardStream`` with a resumable state.

Use it as is; do not pass it to ``accelerator.prepare`` (accelerate would re-split or broadcast
the already-split stream). Move batches to the device yourself. The state (epoch and each
slot's position, counted in batches the *training loop has taken*, not batches the workers
prefetched) is JSON, so checkpoints never need pickle.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .skips import SkipCounter
from .stream import ShardStream

log = logging.getLogger("vispre.data")

STATE_VERSION = 1
# The training process stops on these (finishes its step, saves, exits); a worker that died of one would
# take the batch being fetched with it, so workers leave them to the training process.
TRAINING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def _worker_ignores_signals(worker_id: int) -> None:
    for sig in TRAINING_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StreamLoader:
    def __init__(self, stream: ShardStream, num_workers: int = 2, prefetch_factor: int = 2,
                 pin_memory: bool = False, even_batches: bool = True):
        if max(num_workers, 1) != stream.layout.workers:
            raise ValueError(f"num_workers={num_workers} but the stream's layout has {stream.layout.workers} workers")
        self.stream = stream
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor if num_workers > 0 else None
        self.pin_memory = pin_memory
        self.even_batches = even_batches
        self.epoch = 0
        self.positions: dict[int, tuple[int, int]] = {}  # this rank's slots -> (position, batches)
        self.turn = 0  # index (among workers still active) of the worker whose batch comes next
        self.skips = SkipCounter()  # this epoch, this rank
        self.epochs: list[dict] = []  # per finished epoch: batches, samples, skips
        layout = stream.layout
        if (not stream.resampled and even_batches and layout.world_size > 1
                and stream.rank_batches(layout.rank, 0) is None):
            raise ValueError("a finite epoch on several ranks needs the shard sizes to give every rank the same "
                             "number of batches: write sizes.json (vispre shards inspect SPEC --write-sizes) "
                             "or set data.resampled=true")

    # -- length ---------------------------------------------------------------------------------
    def target_batches(self, epoch: int | None = None) -> int | None:
        """Batches every rank yields in ``epoch`` (padding included), when known in advance."""
        epoch = self.epoch if epoch is None else epoch
        counts = [self.stream.rank_batches(r, epoch) for r in range(self.stream.layout.world_size)]
        if any(c is None for c in counts):
            return None
        if self.stream.resampled or not self.even_batches:
            return counts[self.stream.layout.rank]
        return max(counts)

    def __len__(self) -> int:
        n = self.target_batches()
        if n is None:
            raise TypeError("epoch length unknown: shard sizes are not known (no sizes.json)")
        return n

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        """One epoch (the rest of it, after a resume). The epoch counter moves on only at its end."""
        self.stream.epoch = self.epoch
        self.stream.resume = dict(self.positions)
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers,
                            prefetch_factor=self.prefetch_factor, pin_memory=self.pin_memory,
                            persistent_workers=False,
                            worker_init_fn=_worker_ignores_signals if self.num_workers else None)
        yielded = sum(b for _, b in self.positions.values())
        samples, last = 0, None
        for batch in self._in_turn(loader):
            yielded += 1
            samples += len(batch["valid"])
            last = batch
            yield batch
        target = self.target_batches() if self.even_batches else None
        if target is not None and yielded < target:
            if last is None:
                raise RuntimeError(f"rank {self.stream.layout.rank} read no batch this epoch but must take "
                                   f"{target} steps; check the skip counts: {self.skips.summary()['reasons']}")
            log.info("rank %d pads its epoch with %d empty batches (valid=False) to match the other ranks",
                     self.stream.layout.rank, target - yielded)
            while yielded < target:
                pad = dict(last)
                pad["valid"] = torch.zeros_like(last["valid"])
                yielded += 1
                yield pad
        self._end_epoch(yielded, samples)

    def _in_turn(self, loader: DataLoader) -> Iterator[dict]:
        """Batches in the order an uninterrupted epoch has: workers take turns from worker 0.

        The DataLoader always starts its round-robin at worker 0, so after a resume its order
        would differ from the uninterrupted run; batches are put back in turn order here (at most
        one batch per worker waits in ``queues``). ``self.turn`` is saved with the state.
        """
        slots = [self.stream.layout.slot(w) for w in range(self.stream.layout.workers)]
        queues: dict[int, list[dict]] = {slot: [] for slot in slots}
        active = list(slots)
        for item in loader:
            queues[item["__slot__"]].append(item)
            while active and queues[active[self.turn % len(active)]]:
                index = self.turn % len(active)
                batch = queues[active[index]].pop(0)
                self.skips.merge(batch.pop("__skips__"))
                self.positions[batch.pop("__slot__")] = (batch.pop("__pos__"), batch.pop("__batches__"))
                if batch.pop("__end__", False):
                    active.pop(index)  # the next worker moves into this index
                    self.turn = index
                    continue
                self.turn = index + 1
                yield batch

    def _end_epoch(self, batches: int, samples: int) -> None:
        summary = {"epoch": self.epoch, "batches": batches, "samples": samples, "skipped": self.skips.summary()}
        self.epochs.append(summary)
        if self.skips.samples or self.skips.reasons:
            log.warning("epoch %d, rank %d: %d samples skipped %s", self.epoch, self.stream.layout.rank,
                        self.skips.samples, dict(self.skips.reasons))
        self.epoch += 1
        self.positions = {}
        self.turn = 0
        self.skips = SkipCounter()

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-able state of *all* ranks (gathered when distributed: every rank must call it)."""
        mine = {"positions": {str(k): list(v) for k, v in self.positions.items()}, "turn": self.turn}
        layout = self.stream.layout
        ranks = [mine]
        if layout.world_size > 1 and dist.is_available() and dist.is_initialized():
            ranks = [None] * layout.world_size
            dist.all_gather_object(ranks, mine)
        return {"version": STATE_VERSION, "epoch": self.epoch,
                "positions": {k: v for part in ranks for k, v in part["positions"].items()},
                "turns": [part["turn"] for part in ranks],
                "layout": {"world_size": layout.world_size, "workers": layout.workers},
                "seed": self.stream.seed, "resampled": self.stream.resampled,
                "batch_size": self.stream.batch_size}

    def load_state_dict(self, state: dict) -> None:
        layout = self.stream.layout
        saved = state["layout"]
        mismatch = [f"{k}: saved {saved[k]}, now {v}" for k, v in
                    (("world_size", layout.world_size), ("workers", layout.workers)) if saved[k] != v]
        mismatch += [f"data.{k}: saved {state[k]}, now {v}" for k, v in
                     (("seed", self.stream.seed), ("resampled", self.stream.resampled),
                      ("batch_size", self.stream.batch_size)) if state[k] != v]
        if mismatch:
            raise ValueError("cannot resume the data stream exactly, the layout changed (" + "; ".join(mismatch)
                             + "); resume with the same processes, data.workers, seed and batch size")
        mine = {layout.slot(w) for w in range(layout.workers)}
        self.epoch = int(state["epoch"])
        self.positions = {int(k): (int(v[0]), int(v[1])) for k, v in state["positions"].items() if int(k) in mine}
        self.turn = int(state["turns"][layout.rank if len(state["turns"]) > 1 else 0])
