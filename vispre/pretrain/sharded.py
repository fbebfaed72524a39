"""Checkpoints of a model sharded by FSDP2 (``recipes/accelerate/fsdp_vit.yaml``), in the same files as an
unsharded run's (``checkpoint.py``): one ``model.safetensors`` holding the whole model, ``optimizer.pt``, and
``state.json``.

Under FSDP each rank holds a shard of every parameter, so a full state dict is a collective: every rank gathers
(``get_model_state_dict`` / ``get_optimizer_state_dict`` with ``full_state_dict=True``, what accelerate's
``get_state_dict`` does for FSDP2), rank 0 receives the whole, on the CPU (``cpu_offload``), checks it for NaN or
inf and writes it; its verdict (written, non-finite, a failed write) is broadcast so that every rank raises the
same error. Resuming, every rank reads the full files and keeps its own shard (``set_model_state_dict`` /
``set_optimizer_state_dict``), so the checkpoint directory must be readable on every node, as for an unsharded
run. The optimizer state is keyed by parameter name here (torch.distributed.checkpoint's form), not by index as
in an unsharded run's ``optimizer.pt``: a sharded run resumes a sharded run's checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule

from .checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    NonFiniteCheckpoint,
    checkpoint_name,
    read_optimizer,
    read_state,
    read_weights,
    save_checkpoint,
)

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def is_sharded(model: torch.nn.Module) -> bool:
    """Some module of ``model`` is FSDP2-sharded (``fully_shard``: accelerate's FSDP2 preparation)."""
    return any(isinstance(m, FSDPModule) for m in model.modules())


def _torch_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps torch's


def save_sharded_checkpoint(directory: str | Path, step: int, model: torch.nn.Module, optimizer, state: dict,
                            keep: int = 2) -> Path:
    """Every rank calls it (the gathers are collectives); rank 0 writes. Raises ``NonFiniteCheckpoint`` or
    ``CheckpointWriteError`` on every rank when rank 0 refuses or fails."""
    tensors = get_model_state_dict(model, options=FULL)  # rank 0: every tensor, whole; other ranks: none
    optimizer_state = get_optimizer_state_dict(model, _torch_optimizer(optimizer), options=FULL)
    error = None
    if dist.get_rank() == 0:
        try:
            save_checkpoint(directory, step, tensors, optimizer_state, state, keep=keep)
        except (NonFiniteCheckpoint, CheckpointWriteError) as e:
            error = (type(e).__name__, str(e))
    verdict = [error]
    dist.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        kind, message = verdict[0]
        raise (NonFiniteCheckpoint if kind == "NonFiniteCheckpoint" else CheckpointWriteError)(message)
    return Path(directory) / checkpoint_name(step)


def load_sharded_checkpoint(path: str | Path, model: torch.nn.Module, optimizer=None) -> dict:
    """Every rank calls it: the full weights (strict: a missing or unexpected key names it) and optimizer state
    into this rank's shards. Returns state.json."""
    path = Path(path)
    state = read_state(path)
    weights = path / "model.safetensors"
    full = read_weights(weights)
    shapes = {k: v.shape for k, v in model.state_dict().items()}  # global shapes (DTensors); no communication
    missing, unexpected = sorted(set(shapes) - set(full)), sorted(set(full) - set(shapes))
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not match the model: missing {missing[:10]}, "
                              f"unexpected {unexpected[:10]}")
    for key, value in full.items():  # a 0-dim scalar from before they became 1-element (heads.py)
        if value.shape != shapes[key] and value.numel() == shapes[key].numel():
            full[key] = value.reshape(shapes[key])
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True))
    if optimizer is not None:
        file = path / "optimizer.pt"
        saved = read_optimizer(file)
        try:
            set_optimizer_state_dict(model, _torch_optimizer(optimizer), saved,
                                     options=StateDictOptions(full_state_dict=True))
        except (ValueError, KeyError, TypeError, RuntimeError, AssertionError) as e:
            raise CheckpointError(f"{file} does not match the optimizer (a sharded run resumes a sharded run's "
                                  f"checkpoint): {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return state
