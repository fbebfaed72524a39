"""Counting what the stream skips, with rate-limited warnings that name shard and key.

A bad sample never stops a run: it is counted under a reason ("decode", "missing_key",
"too_large", "truncated_shard", ...) and per shard. Worker processes send their counts to the
main process inside the batches they yield, so the per-epoch totals are exact.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

log = logging.getLogger("vispre.data")


# Events about a whole shard; every other reason counts one skipped sample.
SHARD_EVENTS = frozenset({"unreadable_shard", "truncated_shard", "size_mismatch"})
# Events that mean a shard could not be read (whole): ``vispre shards inspect / stream`` exit non-zero on them.
FAILED_SHARD = frozenset({"unreadable_shard", "truncated_shard"})


class SkipSample(Exception):
    """Raised by a decode stage for a sample that must be skipped; ``reason`` is the counter key."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason


class SkipCounter:
    def __init__(self, warn_every_s: float = 10.0, first_warnings: int = 5):
        self.reasons: Counter[str] = Counter()
        self.shards: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()  # shards with an unreadable / truncated event
        self.warn_every_s = warn_every_s
        self.first_warnings = first_warnings
        self._warned = 0
        self._last_warning = 0.0
        self._suppressed = 0

    def add(self, reason: str, url: str, key: str | None = None, detail: str = "") -> None:
        self.reasons[reason] += 1
        self.shards[url] += 1
        if reason in FAILED_SHARD:
            self.failed[url] += 1
        now = time.monotonic()
        # The first few warnings always show; after that at most one per warn_every_s seconds.
        if self._warned < self.first_warnings or now - self._last_warning >= self.warn_every_s:
            more = f" ({self._suppressed} more skipped since the last warning)" if self._suppressed else ""
            where = f"{url} key {key!r}" if key is not None else url
            log.warning("skipped %s: %s %s%s", where, reason, detail, more)
            self._warned += 1
            self._last_warning = now
            self._suppressed = 0
        else:
            self._suppressed += 1

    @property
    def samples(self) -> int:
        """Samples skipped (shard-level events such as a truncated tar are not samples)."""
        return sum(n for reason, n in self.reasons.items() if reason not in SHARD_EVENTS)

    def take(self) -> dict:
        """Counts since the last ``take`` (to ship with a batch), then reset them."""
        out = {"reasons": dict(self.reasons), "shards": dict(self.shards), "failed_shards": dict(self.failed)}
        self.reasons.clear()
        self.shards.clear()
        self.failed.clear()
        return out

    def merge(self, delta: dict) -> None:
        self.reasons.update(delta.get("reasons", {}))
        self.shards.update(delta.get("shards", {}))
        self.failed.update(delta.get("failed_shards", {}))

    def summary(self) -> dict:
        return {"samples": self.samples, "reasons": dict(self.reasons), "shards": dict(self.shards),
                "failed_shards": dict(self.failed)}
