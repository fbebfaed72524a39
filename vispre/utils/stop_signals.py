"""Stop requests by signal: SIGTERM (SLURM's scancel and time limit, Kubernetes), SIGINT (Ctrl-C) and SIGUSR1
(SLURM's ``--signal=USR1@SECONDS`` warning before the time limit).

The first one only sets a flag: the training loop finishes its step, writes a checkpoint and exits with
``EXIT_PREEMPTED``. A second one of the same kind acts as the signal always does (Ctrl-C twice stops at once).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger("vispre.train")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopSignals:
    def __init__(self, signals=STOP_SIGNALS):
        self.signals = signals
        self.received: int | None = None
        self.previous: dict[int, object] = {}

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received).name if self.received else None

    def _handle(self, signum, frame) -> None:
        if self.received == signum:  # the second time: what this signal does without us
            self.restore()
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        log.warning("%s received: finishing this step, writing a checkpoint, then exiting (send it again to stop "
                    "at once, without a checkpoint)", signal.Signals(signum).name)

    def install(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
            return self
        for sig in self.signals:
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc) -> bool:
        self.restore()
        return False
