"""From one shard URL to raw samples: ``{"__key__", "__url__", ext: bytes, ...}``.

We read members with ``tarfile`` directly instead of webdataset's ``tar_file_iterator`` +
``group_by_keys``: those raise on a duplicate member name (ending the shard) and do not say
whether a truncation hit a member's header or its data. Here a duplicate is counted and dropped,
and a truncated shard keeps every sample whose files were read whole: a cut inside a member's
data drops (and counts) that sample, a cut between members keeps it.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from typing import IO

from .skips import SkipCounter

RawSample = dict


def split_name(fname: str) -> tuple[str, str]:
    """``dir/KEY.ext.more`` -> (``dir/KEY``, ``ext.more``): the key ends at the first dot of the basename."""
    slash = fname.rfind("/")
    dot = fname.find(".", slash + 1)
    if dot < 0:
        return fname, ""
    return fname[:dot], fname[dot + 1:].lower()


class _DataError(Exception):
    """The tar ended inside a member's data: the sample that member belongs to is incomplete."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name = name


def _members(stream: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    archive = tarfile.open(fileobj=stream, mode="r|*")
    for info in archive:
        if info.isreg() and not info.name.split("/")[-1].startswith("__"):  # skip __meta__ files
            try:
                data = archive.extractfile(info).read()
            except (tarfile.TarError, EOFError, OSError) as e:
                raise _DataError(info.name, str(e)) from e
            if len(data) != info.size:
                raise _DataError(info.name, f"{len(data)} of {info.size} bytes")
            yield info.name, data
        archive.members = []  # streaming: do not keep every TarInfo in memory


def iter_shard(url: str, opener: Callable[[str], IO[bytes]], skips: SkipCounter) -> Iterator[RawSample]:
    """Yield the samples of one shard; every problem is counted in ``skips``, never raised."""
    try:
        stream = opener(url)
    except Exception as e:  # missing file, HTTP 404, no credentials, ...
        skips.add("unreadable_shard", url, detail=str(e))
        return
    current: RawSample | None = None
    try:
        for fname, data in _members(stream):
            key, ext = split_name(fname)
            if not ext:
                skips.add("bad_member_name", url, key, fname)
                continue
            if current is not None and key != current["__key__"]:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": url}
            if ext in current:
                skips.add("duplicate_member", url, key, fname)
                continue
            current[ext] = data
    except _DataError as e:
        skips.add("truncated_shard", url, None, str(e))
        cut_key = split_name(e.name)[0]
        if current is not None and current["__key__"] != cut_key:
            yield current  # complete: the cut is in the next sample's first member
        skips.add("incomplete_sample", url, cut_key)
        current = None
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        # Corrupt header, truncated between members, or a dropped connection: keep what was read.
        skips.add("truncated_shard", url, None, str(e))
    finally:
        stream.close()
    if current is not None:
        yield current
