"""OGBench-layout ``.npz`` files: the one reader for ICVF's trajectory arrays and offline RL.

``load_ogbench`` gives the two readings of ``ogbench.utils.load_dataset`` (regular and compact, see
``vispre.rl.transitions`` for the layout); ``read_npz`` underneath reads members without loading them,
memory-mapped where the zip stores them uncompressed.

``np.load(path, mmap_mode="r")`` ignores ``mmap_mode`` for ``.npz`` archives (every member is read
into RAM on access), so a 1M-frame visual dataset (12 GB) would have to fit in memory. A member
written by ``np.savez`` is stored uncompressed: its ``.npy`` bytes sit contiguously in the archive
and can be ``np.memmap``-ed at their offset. A member written by ``np.savez_compressed`` (OGBench's
official files) cannot; it is either read into RAM, or, given ``cache_dir``, decompressed once in
chunks to a ``.npy`` file there and memory-mapped from it.
"""

from __future__ import annotations

import logging
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np

from ..utils.io import atomic_output

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
        log.info("decompressing %s:%s to %s for memory mapping", path, info.filename, target)
        with atomic_output(target) as tmp, zf.open(info) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, length=64 << 20)
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


REQUIRED = ("observations", "actions", "terminals")
READ = (*REQUIRED, "rewards", "masks")  # other members (qpos, positions, ...) are not read


def load_ogbench(path: str | Path, compact: bool = False, mmap: bool = True, cache_dir: str | Path | None = None,
                 keep_rows: np.ndarray | None = None, labels: dict | None = None) -> dict[str, np.ndarray]:
    """An OGBench ``.npz`` as ``ogbench.utils.load_dataset`` returns it (regular or compact), with
    ``rewards``/``masks`` kept (row-aligned like ``actions``) where the file has them or ``labels`` (per
    file row, e.g. OGBench's single-task relabelling) gives them. ``keep_rows`` (bool per file row, whole
    trajectories) drops trajectories first (a copy: no longer memory-mapped)."""
    path = Path(path)
    raw = read_npz(path, mmap=mmap, cache_dir=cache_dir, keys=[k for k in READ if k in npz_keys(path)])
    raw.update(labels or {})
    if keep_rows is not None:
        raw = _keep_trajectories(path, raw, np.asarray(keep_rows, bool))
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise KeyError(f"{path}: missing array(s) {', '.join(missing)} (OGBench layout needs {', '.join(REQUIRED)})")
    rows = len(raw["observations"])
    for key in READ:
        if key in raw and len(raw[key]) != rows:
            raise ValueError(f"{path}: {key} has {len(raw[key])} rows, observations has {rows}")
    terminals = np.asarray(raw["terminals"], dtype=np.float32)
    if rows == 0 or terminals[-1] != 1:
        raise ValueError(f"{path}: terminals[-1] must be 1 (the last row must end a trajectory)")
    data = {"observations": raw["observations"], "actions": np.asarray(raw["actions"])}
    for key in ("rewards", "masks"):
        if key in raw:
            data[key] = np.asarray(raw[key], dtype=np.float32)
    if compact:
        data["valids"] = 1.0 - terminals
        shifted = np.concatenate([terminals[1:], [1.0]])
        data["terminals"] = np.minimum(terminals + shifted, 1.0).astype(np.float32)
        return data
    keep = terminals == 0  # rows that have a next frame
    after = np.concatenate([[False], keep[:-1]])  # rows that are some row's next frame
    out = {k: v[keep] for k, v in data.items()}
    out["next_observations"] = data["observations"][after]
    out["terminals"] = np.concatenate([terminals[1:], [1.0]])[keep].astype(np.float32)
    return out


def npz_keys(path: str | Path) -> set[str]:
    with np.load(path, allow_pickle=False) as f:
        return set(f.files)


def _keep_trajectories(path: Path, raw: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    if len(keep) != len(raw["observations"]):
        raise ValueError(f"{path}: keep_rows has {len(keep)} rows, the file {len(raw['observations'])}")
    start, _ = trajectory_bounds(np.asarray(raw["terminals"]) > 0)
    if np.any(keep != keep[start]):
        raise ValueError(f"{path}: keep_rows must keep or drop whole trajectories")
    if not keep.any():
        raise ValueError(f"{path}: keep_rows drops every trajectory")
    return {k: np.asarray(v)[keep] for k, v in raw.items()}


def trajectory_bounds(ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every row: the first row of its trajectory and the last (``ends`` marks last rows)."""
    end_rows = np.flatnonzero(ends)
    pos = np.searchsorted(end_rows, np.arange(len(ends)))
    last = end_rows[pos]
    start = np.where(pos == 0, 0, end_rows[np.maximum(pos - 1, 0)] + 1)
    return start.astype(np.int64), last.astype(np.int64)
