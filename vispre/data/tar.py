"""From one shard URL to raw samples: ``{"__key__", "__url__", ext: bytes, ...}``.

We read members with ``tarfile`` directly instead of webdataset's ``tar_file_iterator`` +
``group_by_keys``: those raise on a duplicate member name (ending the shard) and do not say
whether a truncation hit a member's header or its data. Here a duplicate is counted and dropped,
and a truncated shard keeps every sample whose files were read whole: a cut inside a member's
data drops (and counts) that sample, a cut between members keeps it.

A member whose header claims more than ``max_member_bytes`` (a sparse or forged entry saying 8 GiB in a
10 KB tar, plain or gzip-compressed) is never read: its sample is dropped and counted as ``too_large``,
as ``max_pixels`` does for decompression bombs. A shard read that passes its deadline (see
``vispre.data.urls.open_url``) counts as ``unreadable_shard``.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from typing import IO

from .skips import SkipCounter
from .urls import ShardDeadline

RawSample = dict
DEFAULT_MAX_MEMBER_BYTES = 1 << 30  # 1 GiB: far above any image; raise data.max_member_bytes for long videos


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


def _members(stream: IO[bytes], max_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[tuple[str, bytes | None]]:
    """(name, data) per regular member; data is None for a member over ``max_bytes`` (not read)."""
    archive = tarfile.open(fileobj=stream, mode="r|*")
    for info in archive:
        if info.isreg() and not info.name.split("/")[-1].startswith("__"):  # skip __meta__ files
            if info.size > max_bytes:  # checked on the header, before any byte is read or allocated
                yield info.name, None
                archive.members = []
                continue
            try:
                data = archive.extractfile(info).read()
            except ShardDeadline:
                raise
            except (tarfile.TarError, EOFError, OSError) as e:
                raise _DataError(info.name, str(e)) from e
            if len(data) != info.size:
                raise _DataError(info.name, f"{len(data)} of {info.size} bytes")
            yield info.name, data
        archive.members = []  # streaming: do not keep every TarInfo in memory


def iter_shard(url: str, opener: Callable[[str], IO[bytes]], skips: SkipCounter,
               max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[RawSample]:
    """Yield the samples of one shard; every problem is counted in ``skips``, never raised."""
    try:
        stream = opener(url)
    except Exception as e:  # missing file, HTTP 404, no credentials, ...
        skips.add("unreadable_shard", url, detail=str(e))
        return
    current: RawSample | None = None
    dropped = None  # the key of a sample dropped for a too-large member: its other members go too
    try:
        for fname, data in _members(stream, max_member_bytes):
            key, ext = split_name(fname)
            if not ext:
                skips.add("bad_member_name", url, key, fname)
                continue
            if key == dropped:
                continue
            if data is None:
                skips.add("too_large", url, key, f"member {fname} claims more than data.max_member_bytes="
                                                 f"{max_member_bytes} bytes; not read")
                if current is not None and current["__key__"] != key:
                    yield current
                current, dropped = None, key
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
    except ShardDeadline as e:  # a trickling server: what was read whole is kept, the shard counts as unreadable
        skips.add("unreadable_shard", url, None, str(e))
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
        try:
            stream.close()
        except Exception as e:  # a 'pipe:' command that exited non-zero says so on close
            skips.add("unreadable_shard", url, None, str(e))
            current = None
    if current is not None:
        yield current
