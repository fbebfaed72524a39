"""Step metrics kept on the device between logs: one host sync per ``train.log_every`` steps, not per step.

Turning a CUDA tensor into a Python number (``.item()``, ``float()``, ``bool()``) makes the host wait for
every kernel queued so far, so the GPU idles while the host prepares the next step. The loop instead adds
each step's metrics (detached 0-dim tensors) into device sums here and reads them all with one ``tolist``
when it logs (``MetricWindow.reduce``).

A metric that is NaN on some step is averaged over the steps where it is finite (a crop-accuracy IoU bin
with no pair in that batch is NaN: 0 / 0), and left out of the row when it was never finite, as before.
``loss`` and ``nonfinite`` are plain means: a NaN loss must show in the log.

``NonFiniteWatch`` follows skipped (non-finite) steps on the device too: how many in a row, the first skipped
step of the window and the first step where the run grew past ``train.max_nonfinite_skips``; the loop reads it
at each log and before each checkpoint (``check_nonfinite``).
"""

from __future__ import annotations

import logging

import torch

from ..utils.device_constants import device_constant

log = logging.getLogger("vispre.train")

PLAIN_MEAN = ("loss", "nonfinite")  # averaged as they are, NaN included


class NonFiniteLoss(RuntimeError):
    """The loss or the gradients were NaN or inf (train.nonfinite=stop, or too many skips in a row)."""


class MetricWindow:
    """Device sums of each step's metrics since the last log."""

    def __init__(self):
        self.groups: dict[tuple[str, ...], list] = {}  # the metric names of a step -> [sums, finite counts]
        self.host: dict[str, list[float]] = {}  # Python numbers (a method may return some): summed on the host
        self.plain: dict[tuple[str, ...], torch.Tensor] = {}  # per name set: which are PLAIN_MEAN (made once)
        self.steps = 0

    def add(self, metrics: dict) -> None:
        """One step's metrics: 0-dim tensors (any device, any float dtype) or Python numbers."""
        self.steps += 1
        names, values = [], []
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor):
                names.append(k)
                values.append(v.detach().reshape(()).float())
            else:
                self.host.setdefault(k, []).append(float(v))
        if not values:
            return
        key = tuple(names)
        device = values[0].device  # a method may return a CPU scalar beside device ones: moved, not read
        vec = torch.stack([v.to(device, non_blocking=True) for v in values])  # one kernel per step, not per metric
        if key not in self.groups:
            self.groups[key] = [torch.zeros_like(vec), torch.zeros_like(vec)]
            self.plain[key] = device_constant([k in PLAIN_MEAN for k in key], vec.device, torch.bool)
        sums, counts = self.groups[key]
        finite = torch.isfinite(vec) | self.plain[key]
        sums.add_(torch.where(finite, vec, 0.0))
        counts.add_(finite.to(counts.dtype))

    def reduce(self, extra: torch.Tensor | None = None) -> tuple[dict[str, float], list[float]]:
        """({name: window mean}, ``extra`` as a list), with one host sync for everything (``extra``: other
        device values the caller wants at log time, e.g. ``NonFiniteWatch.state``)."""
        parts = [t for sums, counts in self.groups.values() for t in (sums, counts)]
        flat = [t.reshape(-1).to(torch.float64) for t in parts + ([extra] if extra is not None else [])]
        if flat:
            device = flat[0].device
            numbers = torch.cat([t.to(device) for t in flat]).tolist()  # the one host sync
        else:
            numbers = []
        totals: dict[str, list[float]] = {}
        at = 0
        for key in self.groups:
            n = len(key)
            sums, counts = numbers[at:at + n], numbers[at + n:at + 2 * n]
            at += 2 * n
            for k, s, c in zip(key, sums, counts):
                total = totals.setdefault(k, [0.0, 0.0])
                total[0] += s
                total[1] += c
        row = {k: s / c for k, (s, c) in totals.items() if c > 0}
        row.update({k: sum(v) / len(v) for k, v in self.host.items()})
        return row, numbers[at:]


class NonFiniteWatch:
    """Skipped steps followed on the device: ``update`` adds no host sync; ``state`` is read at log time."""

    def __init__(self, device, limit: int):
        self.limit = limit
        # [skipped in a row now, first skipped step, its loss, first step past the limit, its loss]
        self.values = torch.zeros(5, dtype=torch.float64, device=device)

    def update(self, step: int, skipped: torch.Tensor, loss: torch.Tensor) -> None:
        """After step ``step`` (1-based); ``skipped``: 0-dim bool on the device."""
        v = self.values
        skipped = skipped.to(v.dtype)
        loss = loss.detach().to(v.dtype)
        run = (v[0] + 1) * skipped
        first = (v[1] == 0) & (skipped > 0)
        over = (v[3] == 0) & (run > self.limit)
        step = float(step)  # a Python scalar: no host-to-device copy
        self.values = torch.stack([run, torch.where(first, step, v[1]), torch.where(first, loss, v[2]),
                                   torch.where(over, step, v[3]), torch.where(over, loss, v[4])])

    @property
    def state(self) -> torch.Tensor:
        return self.values

    def read(self, numbers: list[float]) -> dict:
        """The host's view of ``state`` read back (``MetricWindow.reduce``'s extra); starts a new window (the
        run in a row carries over)."""
        run, first, first_loss, over, over_loss = numbers
        self.values = self.values.clone()
        self.values[1:] = 0
        return {"in_row": int(run), "first": int(first), "first_loss": first_loss, "over": int(over),
                "over_loss": over_loss}


def check_nonfinite(seen: dict, train, step: int) -> None:
    """At a log or before a checkpoint, with ``NonFiniteWatch.read``: ``train.nonfinite=stop`` after a skipped
    non-finite step, or more than ``train.max_nonfinite_skips`` in a row, stop the run (the skipped steps
    changed nothing, so the model is the last finite state); else a warning. ``step``: the trainer's now."""
    if not seen["first"]:
        return
    what = f"step {seen['first']}: non-finite loss or gradients (loss {seen['first_loss']})"
    if train.nonfinite == "stop":
        raise NonFiniteLoss(f"{what}; train.nonfinite=stop: the last checkpoint is the newest finite state")
    if seen["over"]:
        raise NonFiniteLoss(f"step {seen['over']}: non-finite loss or gradients (loss {seen['over_loss']}): "
                            f"{train.max_nonfinite_skips + 1} in a row, more than train.max_nonfinite_skips="
                            f"{train.max_nonfinite_skips}; the last checkpoint is the newest finite state (lower "
                            "optim.lr, raise optim.clip_grad or check the data, then --resume)")
    log.warning("%s and after: skipped (no optimizer or target update; %d in a row at step %d)", what,
                seen["in_row"], step)
