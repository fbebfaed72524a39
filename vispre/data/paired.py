"""Several loaders stepped together, one batch of each per step: ``{name: batch}``.

The first loader is the main stream: its epochs are the run's epochs (``epoch``, ``epochs``, ``len``); the
others cycle through epochs of their own. Each keeps its exact, resumable position, so the pair's state is
theirs side by side. AB reads its bootstrap batch from the main stream and its annotation batch from the
second (the recipe's ``annotation_data``, or the main data again under another seed).
"""

from __future__ import annotations

from collections.abc import Iterator

from .loader import StreamLoader


class PairedLoader:
    def __init__(self, loaders: dict[str, StreamLoader]):
        if not loaders:
            raise ValueError("PairedLoader needs at least one loader")
        self.loaders = dict(loaders)
        self.main = next(iter(self.loaders))
        self._others: dict[str, Iterator] | None = None  # made on first use, after any load_state_dict

    @property
    def epoch(self) -> int:
        return self.loaders[self.main].epoch

    @property
    def epochs(self) -> list[dict]:
        return self.loaders[self.main].epochs

    def __len__(self) -> int:
        return len(self.loaders[self.main])

    @staticmethod
    def _cycle(loader: StreamLoader) -> Iterator[dict]:
        while True:
            yield from loader

    def __iter__(self) -> Iterator[dict]:
        if self._others is None:
            self._others = {k: self._cycle(v) for k, v in self.loaders.items() if k != self.main}
        for batch in self.loaders[self.main]:
            yield {self.main: batch, **{k: next(it) for k, it in self._others.items()}}

    def state_dict(self) -> dict:
        """Every rank must call this (each loader gathers all ranks' positions)."""
        return {"paired": {k: v.state_dict() for k, v in self.loaders.items()}}

    def load_state_dict(self, state: dict) -> None:
        if "paired" not in state or set(state["paired"]) != set(self.loaders):
            raise ValueError(f"cannot resume: the checkpoint's data state is not a pair of streams "
                             f"{sorted(self.loaders)} (was the run's method or annotation_data changed?)")
        self.close()
        for k, v in self.loaders.items():
            v.load_state_dict(state["paired"][k])

    def close(self) -> None:
        """Shut the other loaders' workers down. Their iterators stay alive between epochs of the main stream;
        left to interpreter exit, their workers (which ignore SIGTERM, see ``loader.py``) would make
        multiprocessing's exit handler wait forever. Closing a generator unwinds it down to the DataLoader
        iterator, whose release shuts its workers down. The next ``iter`` starts them again where they were."""
        for it in (self._others or {}).values():
            it.close()
        self._others = None
