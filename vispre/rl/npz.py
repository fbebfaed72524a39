"""Read ``.npz`` members without loading them: memory-mapped where the zip stores them uncompressed.

``np.load(path, mmap_mode="r")`` ignores ``mmap_mode`` for ``.npz`` archives (every member is read
into RAM on access), so a 1M-frame visual dataset (12 GB) would have to fit in memory. A member
written by ``np.savez`` is stored uncompressed: its ``.npy`` bytes sit contiguously in the archive
and can be ``np.memmap``-ed at their offset. A member written by ``np.savez_compressed`` (OGBench's
official files) cannot; it is either read into RAM, or, given ``cache_dir``, decompressed once in
chunks to a ``.npy`` file there and memory-mapped from it.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_LOCAL_HEADER = 30  # bytes of a zip local file header before the name and extra field


def _read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return shape, fortran, dtype


def _memmap_stored(path: Path, info: zipfile.ZipInfo) -> np.memmap:
    with open(path, "rb") as f:
        # The local header's extra field may differ from the central directory's (zip64): read it here.
        f.seek(info.header_offset)
        header = f.read(_LOCAL_HEADER)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        f.seek(info.header_offset + _LOCAL_HEADER + name_len + extra_len)
        shape, fortran, dtype = _read_npy_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: member {info.filename} holds Python objects; refusing to unpickle it")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _decompress_to_cache(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, cache_dir: Path) -> np.ndarray:
    stat = path.stat()
    target = cache_dir / f"{path.stem}.{info.filename[:-4]}.{stat.st_size}-{stat.st_mtime_ns}.npy"
    if not target.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        log.info("decompressing %s:%s to %s for memory mapping", path, info.filename, target)
        with zf.open(info) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, length=64 << 20)
        os.replace(tmp, target)
    return np.load(target, mmap_mode="r", allow_pickle=False)


def read_npz(path: str | Path, mmap: bool = True, cache_dir: str | Path | None = None,
             keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """Every member (or ``keys``) of an ``.npz``: memory-mapped when ``mmap`` and stored uncompressed;
    compressed members are decompressed to ``cache_dir`` and memory-mapped, or read into RAM without one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf:
        members = {info.filename[:-4]: info for info in zf.infolist() if info.filename.endswith(".npy")}
        for key in keys if keys is not None else list(members):
            if key not in members:
                raise KeyError(f"{path} has no array {key!r} (it has: {', '.join(sorted(members))})")
            info = members[key]
            if mmap and info.compress_type == zipfile.ZIP_STORED:
                out[key] = _memmap_stored(path, info)
            elif mmap and cache_dir:
                out[key] = _decompress_to_cache(path, zf, info, Path(cache_dir))
            else:
                with zf.open(info) as f:
                    out[key] = np.lib.format.read_array(f, allow_pickle=False)
    return out


def is_memory_mapped(array: np.ndarray) -> bool:
    return isinstance(array, np.memmap) or isinstance(getattr(array, "base", None), np.memmap)
