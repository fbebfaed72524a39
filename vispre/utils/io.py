"""Atomic file writes: the content goes to a temporary file beside the target, then ``os.replace`` swaps
it in, so a reader (or a run killed mid-write) sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temp_path(path: str | Path) -> Path:
    """A per-process temporary name beside ``path`` (same filesystem, so the rename is atomic); it keeps
    the suffix, so writers that pick a format by extension (matplotlib, numpy) still do."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """``with atomic_output(p) as tmp: write to tmp``: ``tmp`` replaces ``p`` when the block succeeds and
    is removed when it fails."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
    return Path(path)


def write_json(path: str | Path, value: Any, indent: int = 1) -> Path:
    return write_atomic(path, json.dumps(value, indent=indent) + "\n")


def swap_in_dir(tmp: str | Path, out: str | Path) -> Path:
    """Rename a finished folder ``tmp`` into place at ``out`` (readers see the old folder or the new one, never
    half of either); an older ``out`` is moved aside first, then deleted. Files get the umask's permissions
    (safetensors writes 0600; exports are meant to be read by others)."""
    tmp, out = Path(tmp), Path(out)
    umask = os.umask(0)
    os.umask(umask)
    for file in tmp.iterdir():
        if file.is_file():
            file.chmod(0o666 & ~umask)
    old = out.parent / f".old-{out.name}-{os.getpid()}"
    if out.exists() and any(out.iterdir()):
        os.replace(out, old)
    elif out.exists():
        out.rmdir()
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out
