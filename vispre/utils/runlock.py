"""One run per output directory: a lock file that says who holds it.

``DIR/.vispre.lock`` holds the holder's pid, host, start time and command line, and the holder keeps an
``flock`` on it for as long as it runs. The kernel drops an flock when its process dies (SIGKILL included),
so on one machine a dead holder's lock is never mistaken for a live one, and a reused pid does not matter.
The pid/host content covers what flock does not: the message names the holder, and a lock written on this
host by a pid that no longer runs is taken over as stale. A lock from another host that is not flocked (a
filesystem without working flock across machines) is refused, with the file to delete if that run is gone.

Not the ``filelock`` package: its FileLock is the same flock but records no holder (the message could not
say which run holds the directory), and its SoftFileLock cannot tell a stale lock from a live one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from .errors import UserError

log = logging.getLogger("vispre")

LOCK_FILE = ".vispre.lock"


class DirectoryLocked(UserError):
    """Another live run holds the output directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class RunLock:
    def __init__(self, directory: str | Path, what: str = "train.output_dir"):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.what = what
        self.fd: int | None = None

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _describe(self, holder: dict | None) -> str:
        if not holder:
            return "another process (the lock file names none)"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
        return f"pid {holder.get('pid')} on {holder.get('host')} (since {since}: {holder.get('command', '?')})"

    def acquire(self, orphan_wait: float = 30.0) -> RunLock:
        """Take the lock. A holder that no longer runs may still hold the flock for a moment through the loader
        workers it forked (they inherit the lock and exit a few seconds after their parent): then wait up to
        ``orphan_wait`` seconds for them before calling the directory busy."""
        self.directory.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + orphan_wait
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = self.holder()
                if (holder and holder.get("host") == socket.gethostname()
                        and not _alive(int(holder.get("pid", -1))) and time.monotonic() < deadline):
                    time.sleep(0.2)  # the dead holder's forked workers still hold the flock
                    continue
                raise DirectoryLocked(f"{self.directory} ({self.what}) is in use by "
                                      f"{self._describe(holder)}: wait for that run to end, stop it, or "
                                      "choose another output directory") from None
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break  # not a file its holder unlinked (released) while we opened it
            except FileNotFoundError:
                pass
            os.close(fd)
        holder = self.holder()
        if holder and holder.get("pid") != os.getpid():
            here = holder.get("host") == socket.gethostname()
            if not here:  # flock may not reach across machines: the other host's run may be alive
                os.close(fd)
                raise DirectoryLocked(
                    f"{self.directory} ({self.what}) is locked by {self._describe(holder)}, on another host, which "
                    f"this machine cannot check: if that run has ended, delete {self.path}")
            state = "no longer runs" if not _alive(int(holder.get("pid", -1))) else "does not hold its lock"
            log.warning("taking over the stale lock %s: %s %s", self.path, self._describe(holder), state)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still flocked: nobody can take it in between
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
