"""Shard specs: which tar files a run reads, and how each one is opened.

A spec names one or more *sources* joined by ``::`` (open_clip's convention); each source is a
brace pattern (``shards/cc12m-{00000..00099}.tar``), a local directory (all its ``*.tar``), or a
URL: ``http(s)://``, any fsspec scheme (``s3://``, ``gs://``, ...), or ``pipe:CMD`` (a shell
command whose stdout is the tar; only when the config allows it, since it runs arbitrary code).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import braceexpand

log = logging.getLogger(__name__)

SOURCE_SEPARATOR = "::"


@dataclass
class ShardSet:
    """One source of a mixture: its shard URLs, mixing weight and (if known) samples per shard."""

    spec: str
    urls: list[str]
    weight: float = 1.0
    sizes: dict[str, int] | None = field(default=None, repr=False)

    @property
    def num_samples(self) -> int | None:
        return None if self.sizes is None else sum(self.sizes[u] for u in self.urls)


def scheme(url: str) -> str:
    if url.startswith("pipe:"):
        return "pipe"
    if "://" in url:
        return url.split("://", 1)[0].lower()
    return "file"


def expand_source(spec: str) -> list[str]:
    """Brace-expand one source; a local directory becomes its sorted ``*.tar`` files."""
    spec = spec.strip()
    if not spec:
        raise ValueError("empty shard spec (check for a stray '::')")
    if scheme(spec) == "file" and os.path.isdir(spec):
        urls = sorted(str(p) for p in Path(spec).glob("*.tar"))
        if not urls:
            from .plain_inputs import plain_input_hint  # an image folder or a saved HF dataset: say how to convert

            raise FileNotFoundError(plain_input_hint(spec) or f"shard directory {spec!r} holds no *.tar files")
        return urls
    if scheme(spec) == "pipe":  # a shell command is not brace-expanded as a whole (it may contain braces)
        return [spec]
    return list(braceexpand.braceexpand(spec))


def parse_spec(spec: str | Sequence[str], weights: Sequence[float] | None = None,
               allow_pipe: bool = False, read_sizes: bool = True) -> list[ShardSet]:
    """Split ``spec`` into weighted sources, check schemes, and look up shard sizes."""
    parts = spec.split(SOURCE_SEPARATOR) if isinstance(spec, str) else list(spec)
    if weights is not None and len(weights) != len(parts):
        raise ValueError(f"data.weights has {len(weights)} values but the spec has {len(parts)} sources "
                         f"(joined by '{SOURCE_SEPARATOR}'): {spec!r}")
    sources = []
    for i, part in enumerate(parts):
        urls = expand_source(part)
        for url in urls:
            if scheme(url) == "pipe" and not allow_pipe:
                raise PermissionError(f"shard URL {url!r} runs a shell command; allow 'pipe:' URLs with "
                                      "data.allow_pipe=true (vispre pretrain) or --allow-pipe (vispre shards)")
        weight = 1.0 if weights is None else float(weights[i])
        if not weight > 0:
            raise ValueError(f"data.weights[{i}] must be > 0, got {weight}")
        sizes = lookup_sizes(urls) if read_sizes else None
        sources.append(ShardSet(spec=part, urls=urls, weight=weight, sizes=sizes))
    return sources


# ---------------------------------------------------------------------------------------------
# Opening shards

class ShardDeadline(TimeoutError):
    """A shard read took longer than its overall deadline (``data.shard_deadline``)."""


class DeadlineReader:
    """A stream that fails once reading it has taken ``seconds`` in all.

    ``http_timeout`` bounds the wait for *one* byte; a server that trickles a byte every few seconds
    never trips it and holds a reader forever. The time counted is the time spent *inside* reads (waiting
    for the source), not the time the consumer takes between them: a shard read slowly because training
    is slow is not cut off. Reads go through ``read1`` where the stream has it (HTTP responses, files,
    pipes' buffered stdout): each call returns after at most one receive, so the deadline is checked at
    least once per ``http_timeout``.
    """

    def __init__(self, stream: IO[bytes], url: str, seconds: float):
        self.stream, self.url, self.seconds = stream, url, seconds
        self.spent = 0.0  # seconds spent in read() so far
        self._read1 = getattr(stream, "read1", None)

    def _check(self, since: float) -> None:
        if self.spent + time.monotonic() - since > self.seconds:
            raise ShardDeadline(f"{self.url}: reading the shard took more than data.shard_deadline="
                                f"{self.seconds:g} s")

    def read(self, size: int = -1) -> bytes:
        start = time.monotonic()
        self._check(start)
        try:
            if self._read1 is None:
                return self.stream.read(size)
            whole = size is None or size < 0
            parts, got = [], 0
            while whole or got < size:
                chunk = self._read1(1 << 16 if whole else size - got)
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
                if whole or got < size:
                    self._check(start)
            return b"".join(parts)
        finally:
            self.spent += time.monotonic() - start

    def close(self) -> None:
        self.stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def open_url(url: str, *, allow_pipe: bool = False, timeout: float = 60.0, retries: int = 3,
             deadline: float | None = None) -> IO[bytes]:
    """A readable binary stream for ``url``; with ``deadline``, reading it fails (``ShardDeadline``) after
    that many seconds. Errors name the URL."""
    stream = _open(url, allow_pipe=allow_pipe, timeout=timeout, retries=retries)
    return DeadlineReader(stream, url, deadline) if deadline else stream


def _open(url: str, *, allow_pipe: bool, timeout: float, retries: int) -> IO[bytes]:
    kind = scheme(url)
    if kind == "file":
        return open(url[len("file://"):] if url.startswith("file://") else url, "rb")
    if kind == "pipe":
        if not allow_pipe:
            raise PermissionError(f"{url!r}: 'pipe:' URLs are disabled (data.allow_pipe=false)")
        # webdataset's Pipe raises on close when the command exits non-zero (141, SIGPIPE, is fine).
        # ``webdataset.gopen`` is the *function* webdataset's __init__ exports, which shadows the module
        # of that name: import gopen_pipe from the module itself.
        from webdataset.gopen import gopen_pipe

        return gopen_pipe(url, "rb")
    if kind in ("http", "https"):
        return _open_http(url, timeout=timeout, retries=retries)
    return _open_fsspec(url)


def _open_http(url: str, timeout: float, retries: int) -> IO[bytes]:
    # urllib rather than webdataset's curl pipe: no external binary, and HTTP errors surface
    # in-process with the URL and status instead of as a short read from a subprocess.
    for attempt in range(retries):
        try:
            return urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code < 500 or attempt == retries - 1:
                raise OSError(f"{url}: HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            if attempt == retries - 1:
                raise OSError(f"{url}: {e}") from e
        time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def _open_fsspec(url: str) -> IO[bytes]:
    try:
        import fsspec

        return fsspec.open(url, "rb").open()
    except ImportError as e:  # e.g. s3fs / gcsfs not installed
        raise ImportError(f"{url}: {e} (install vispre[s3] or vispre[gcs])") from e


# ---------------------------------------------------------------------------------------------
# Shard sizes: sizes.json (vispre, open_clip) or img2dataset's per-shard NNNNN_stats.json

def _read_text(url: str, timeout: float = 10.0) -> str | None:
    try:
        with open_url(url, timeout=timeout, retries=1, deadline=3 * timeout) as f:  # a trickling server too
            return f.read().decode()
    except (OSError, ValueError, ImportError):
        return None


def _parent(url: str) -> str:
    return url.rsplit("/", 1)[0] if "/" in url else "."


def lookup_sizes(urls: Sequence[str]) -> dict[str, int] | None:
    """Samples per shard for every URL, or None when any is unknown."""
    if any(scheme(u) == "pipe" for u in urls):
        return None
    by_dir: dict[str, dict[str, int]] = {}
    sizes = {}
    for url in urls:
        parent, name = _parent(url), url.rsplit("/", 1)[-1]
        if parent not in by_dir:
            text = _read_text(f"{parent}/sizes.json")
            by_dir[parent] = json.loads(text) if text else {}
        if name in by_dir[parent]:
            sizes[url] = int(by_dir[parent][name])
            continue
        stats = _read_text(f"{parent}/{name.rsplit('.', 1)[0]}_stats.json")  # img2dataset
        if stats is None or "successes" not in json.loads(stats):
            return None
        sizes[url] = int(json.loads(stats)["successes"])
    return sizes
