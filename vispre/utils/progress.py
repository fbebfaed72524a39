"""One progress bar for every long loop (feature extraction, probe grids, offline RL, data and video
generation, shard writing): tqdm with items/s and ETA, on the main process only, and off under
``vispre -q`` or when stderr is no terminal (logs and CI get no carriage-return noise).

    for batch in progress(loader, total=len(loader), desc="features", unit="img"):
        ...
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

_QUIET = False
# VISPRE_PROGRESS=1 forces bars on (e.g. under a pager that is no TTY); 0 forces them off
ENV = "VISPRE_PROGRESS"


def set_quiet(quiet: bool) -> None:
    """``vispre -q``: no bars for the rest of the process."""
    global _QUIET
    _QUIET = quiet


def _main_process() -> bool:
    # accelerate / torchrun set RANK (and LOCAL_RANK); only rank 0 draws
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def enabled(stream=None) -> bool:
    """Whether bars are shown: not quiet, the main process, and stderr a terminal (or VISPRE_PROGRESS=1)."""
    forced = os.environ.get(ENV)
    if _QUIET or forced == "0" or not _main_process():
        return False
    if forced == "1":
        return True
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
             unit: str = "it", disable: bool | None = None, leave: bool = False, **kwargs):
    """A tqdm bar over ``iterable`` (or a manual one, ``bar.update(n)``), off unless ``enabled()``; ``disable``
    True switches it off for this loop too (a caller's own --json / progress=False)."""
    from tqdm import tqdm

    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        try:
            total = len(iterable)
        except TypeError:  # a stream whose length is unknown (StreamLoader without sizes.json): no total
            total = None
    off = bool(disable) or not enabled()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=off, leave=leave, file=sys.stderr,
                dynamic_ncols=True, **kwargs)


def quiet() -> bool:
    """``vispre -q`` was given (the training loop's own bar, which shows the loss, follows only this)."""
    return _QUIET
