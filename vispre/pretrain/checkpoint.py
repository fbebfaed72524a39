"""Checkpoints written atomically, loaded without unpickling.

A checkpoint is a directory ``checkpoint-00001234/`` with ``model.safetensors`` (the whole
method: online and target networks, buffers), ``optimizer.pt`` (tensors and numbers only, read
back with ``torch.load(weights_only=True)``) and ``state.json`` (step, the data streams' states,
the resolved config). It is assembled under a temporary name and renamed in one step, then the
``latest`` file is replaced: a run killed at any moment leaves either the old or the new
checkpoint, never half of one. We do not use ``accelerator.save_state``: it pickles the RNG
states, which a resumed run would have to unpickle.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from ..utils.io import write_atomic

LATEST = "latest"


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}"


def save_checkpoint(directory: str | Path, step: int, model: torch.nn.Module, optimizer, state: dict,
                    keep: int = 2) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / checkpoint_name(step)
    tmp = directory / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    with open(tmp / "state.json", "w") as f:
        json.dump({"step": step, **state}, f, indent=1)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_atomic(directory / LATEST, final.name)
    _prune(directory, keep)
    return final


def _prune(directory: Path, keep: int) -> None:
    checkpoints = sorted(p for p in directory.glob("checkpoint-*") if p.is_dir())
    for old in checkpoints[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(directory: str | Path, which: str = "latest") -> Path | None:
    """``latest`` (the newest complete checkpoint under ``directory``) or an explicit path."""
    if which != "latest":
        path = Path(which)
        if not (path / "state.json").exists():
            raise FileNotFoundError(f"{path} is not a vispre checkpoint (no state.json)")
        return path
    directory = Path(directory)
    pointer = directory / LATEST
    if pointer.exists() and (directory / pointer.read_text().strip() / "state.json").exists():
        return directory / pointer.read_text().strip()
    complete = sorted(p for p in directory.glob("checkpoint-*") if (p / "state.json").exists())
    return complete[-1] if complete else None


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer=None) -> dict:
    """Load weights (strict: a missing or unexpected key is an error naming it) and optimizer state."""
    path = Path(path)
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise KeyError(f"{path}/model.safetensors does not match the model: missing {sorted(missing)[:10]}, "
                       f"unexpected {sorted(unexpected)[:10]}")
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    with open(path / "state.json") as f:
        return json.load(f)
