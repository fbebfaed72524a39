"""Checkpoints written atomically, loaded without unpickling.

A checkpoint is a directory ``checkpoint-00001234/`` with ``model.safetensors`` (the whole
method: online and target networks, buffers), ``optimizer.pt`` (tensors and numbers only, read
back with ``torch.load(weights_only=True)``) and ``state.json`` (step, the data streams' states,
the resolved config). It is assembled under a temporary name and renamed in one step, then the
``latest`` file is replaced: a run killed at any moment leaves either the old or the new
checkpoint, never half of one. We do not use ``accelerator.save_state``: it pickles the RNG
states, which a resumed run would have to unpickle.

Nothing non-finite is ever written: a model holding NaN or inf is refused before the first byte
(``NonFiniteCheckpoint``), so a diverged run cannot replace or prune the good checkpoints. A failed write
(a full disk) removes its temporary directory and says so with the path; temporary directories left by a
SIGKILL are removed when the next run starts (``clean_temporary``). Reading a checkpoint checks
``state.json``'s fields and types and names the file and field of any problem (``CheckpointError``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from ..utils.errors import UserError
from ..utils.io import write_atomic

log = logging.getLogger("vispre.train")

LATEST = "latest"
TEMPORARY = ".tmp-checkpoint-*"


class CheckpointError(UserError):
    """A checkpoint that cannot be read: a corrupt file, or state.json with a missing or mistyped field."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (no space left, permissions); nothing half-written is left."""


class NonFiniteCheckpoint(RuntimeError):
    """The model holds NaN or inf: such a checkpoint is never written (and never exported)."""


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}"


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or inf."""
    return [name for name, t in tensors.items()
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _no_space(error: BaseException) -> bool:
    """ENOSPC anywhere in the chain: torch reports a full disk as ``enforce fail at inline_container.cc``
    with the OSError as its context, safetensors as ``No space left on device (os error 28)``."""
    seen = error
    while seen is not None:
        if getattr(seen, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(seen) \
                or "os error 28" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _write_error(error: BaseException, tmp: Path, final: Path) -> CheckpointWriteError:
    try:
        free = f"{shutil.disk_usage(final.parent).free / 2**20:.0f} MiB free there now"
    except OSError:
        free = "free space unknown"
    if _no_space(error):
        message = f"cannot write checkpoint {final}: no space left on device ({free}); the previous ones are kept"
    else:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        message = f"cannot write checkpoint {final}: {first} ({free}); the previous checkpoints are kept"
    written = CheckpointWriteError(message)  # one argument: str() is the message (errno would reformat it)
    written.no_space, written.path = _no_space(error), final
    return written


def save_checkpoint(directory: str | Path, step: int, model: torch.nn.Module | dict, optimizer, state: dict,
                    keep: int = 2) -> Path:
    """``model``: the module, or its full state dict as FSDP gathers it (``sharded.py``); ``optimizer``: the
    optimizer, or its (gathered) state dict."""
    directory = Path(directory)
    final = directory / checkpoint_name(step)
    bad = nonfinite_tensors(model if isinstance(model, dict) else model.state_dict())
    if bad:
        raise NonFiniteCheckpoint(f"not writing {final}: the model holds NaN or inf in {len(bad)} tensors "
                                  f"({', '.join(bad[:5])}); the previous checkpoints are kept")
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        if isinstance(model, dict):  # gathered tensors: fresh copies, none shares memory with another
            save_file({k: v.contiguous() for k, v in model.items()}, str(tmp / "model.safetensors"))
        else:
            save_model(model, str(tmp / "model.safetensors"))
        # through a Python file: a full disk then surfaces as OSError(ENOSPC) instead of torch's bare
        # "enforce fail at inline_container.cc"
        with open(tmp / "optimizer.pt", "wb") as f:
            torch.save(optimizer if isinstance(optimizer, dict) else optimizer.state_dict(), f)
        with open(tmp / "state.json", "w") as f:
            json.dump({"step": step, **state}, f, indent=1)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(e, tmp, final) from e
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


def clean_temporary(directory: str | Path) -> list[Path]:
    """Remove the temporary directories a killed save left (call it only while holding the run's lock)."""
    removed = sorted(p for p in Path(directory).glob(TEMPORARY) if p.is_dir())
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s, left by an interrupted checkpoint write", path)
    return removed


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


def read_state(path: str | Path) -> dict:
    """A checkpoint's state.json, its fields checked: ``step`` a non-negative integer, ``data`` and ``config``
    of the right types when present. Errors name the file and field."""
    file = Path(path) / "state.json"
    try:
        state = json.loads(file.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{file} does not exist: {Path(path)} is not a complete checkpoint") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(state).__name__}")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{file}: step must be a non-negative integer, got {step!r}")
    for key, kind in (("data", dict), ("config", str)):
        if key in state and state[key] is not None and not isinstance(state[key], kind):
            raise CheckpointError(f"{file}: {key} must be a JSON {'object' if kind is dict else 'string'}, "
                                  f"got {type(state[key]).__name__}")
    return state


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer=None) -> dict:
    """Load weights (strict: a missing or unexpected key is an error naming it) and optimizer state."""
    path = Path(path)
    state = read_state(path)  # first: a bad state.json fails before anything is loaded
    weights = path / "model.safetensors"
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except FileNotFoundError as e:
        raise CheckpointError(f"{weights} does not exist") from e
    except Exception as e:  # safetensors' own error for a truncated or corrupt file does not name it
        raise CheckpointError(f"{weights}: cannot read the weights ({str(e).splitlines()[0]})") from e
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not match the model: missing {sorted(missing)[:10]}, "
                              f"unexpected {sorted(unexpected)[:10]}")
    if optimizer is not None:
        file = path / "optimizer.pt"
        saved = read_optimizer(file)
        try:
            optimizer.load_state_dict(saved)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{file} does not match the optimizer: {str(e).splitlines()[0]}") from e
        _one_element_moments(optimizer)
    return state


def read_weights(weights: Path) -> dict[str, torch.Tensor]:
    """``model.safetensors`` as a state dict on the CPU; a missing or corrupt file is a CheckpointError naming it."""
    try:
        return load_file(str(weights))
    except FileNotFoundError as e:
        raise CheckpointError(f"{weights} does not exist") from e
    except Exception as e:  # safetensors' own error for a truncated or corrupt file does not name it
        raise CheckpointError(f"{weights}: cannot read the weights ({str(e).splitlines()[0]})") from e


def read_optimizer(file: Path) -> dict:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{file} does not exist") from e
    except Exception as e:  # corrupt, or a pickled object weights_only refuses
        raise CheckpointError(f"{file}: cannot read the optimizer state ({str(e).splitlines()[0]})") from e


def _one_element_moments(optimizer) -> None:
    """Adam's moments of a parameter that was 0-dim when saved (a logit scale, AB's bias: 1-element now, for
    FSDP2) take the parameter's shape; an in-place update of a 0-dim moment by a [1] gradient would fail."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if key != "step" and torch.is_tensor(value) and value.dim() == 0 and p.shape == (1,):
                    optimizer.state[p][key] = value.reshape(1)
