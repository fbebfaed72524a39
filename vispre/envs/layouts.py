"""Which MiniGrid layouts a split may use: layout identity, not reset seed.

A new reset seed is not a new layout: SimpleCrossingS9N1 has only 42 distinct layouts, so seed ranges
that differ still share layouts. Held-out layouts are therefore chosen and checked by identity (the
``Layout``: walls, goal, key, door):

    evaluation layouts  the first ``eval`` distinct layouts met from ``eval_seed`` on (what downstream
                        agents are scored on; ``vispre.rl`` picks them the same way)
    validation layouts  the first ``val`` distinct layouts met from the val split's first seed that are
                        not evaluation layouts (ICVF's held-out diagnostics and report)
    training layouts    every other layout

``LayoutHoldout(eval=0, val=0)`` holds nothing out: the ICVF paper's in-domain setting, a passive video that
includes the test layouts. With counts > 0 the video excludes them (generalisation to unseen layouts).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

from .minigrid import Layout, get_task, make_env, reset

EVAL_SEED = 2_000_000  # layout_seed("test", 0): the evaluation episodes' first reset seed


@functools.cache
def layout_of(task: str, seed: int) -> Layout:
    """The layout a reset with ``seed`` produces (cached: resets are deterministic)."""
    return reset(_env(task), int(seed))


@functools.cache
def _env(task: str):
    return make_env(get_task(task))


def distinct_layouts(task: str, first_seed: int, count: int, exclude: frozenset = frozenset(),
                     search: int = 100_000) -> list[tuple[int, Layout]]:
    """The first ``count`` distinct layouts met from ``first_seed`` on, skipping ``exclude``: (seed, layout)."""
    found: dict[Layout, int] = {}
    for seed in range(first_seed, first_seed + search):
        if len(found) >= count:
            break
        layout = layout_of(task, seed)
        if layout not in exclude and layout not in found:
            found[layout] = seed
    if len(found) < count:
        raise ValueError(f"{task}: only {len(found)} distinct layouts (of {count} asked) from seed {first_seed}")
    return [(seed, layout) for layout, seed in found.items()]


@dataclass(frozen=True)
class LayoutHoldout:
    eval: int = 0  # evaluation layouts held out of the video
    val: int = 0  # validation layouts: the val split uses only these, the train split none of them
    eval_seed: int = EVAL_SEED

    def sets(self, task: str, val_seed: int) -> tuple[frozenset, frozenset]:
        """(evaluation layouts, validation layouts) as sets of ``Layout``."""
        evaluation = frozenset(layout for _, layout in distinct_layouts(task, self.eval_seed, self.eval))
        validation = frozenset(layout for _, layout in distinct_layouts(task, val_seed, self.val, exclude=evaluation))
        return evaluation, validation

    def seeds(self, task: str, split: str, first_seed: int, val_seed: int) -> Iterator[int]:
        """Reset seeds from ``first_seed`` on whose layout ``split`` may use (all of them when nothing is held out)."""
        evaluation, validation = self.sets(task, val_seed) if self.eval or self.val else (frozenset(), frozenset())
        seed = first_seed
        while True:
            layout = layout_of(task, seed) if evaluation or validation else None
            if layout is None or (layout not in evaluation and (
                    layout in validation if split == "val" and validation else layout not in validation)):
                yield seed
            seed += 1
