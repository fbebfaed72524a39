"""RL checkpoints that resume exactly: weights and optimizer moments in safetensors, everything else in JSON
(never pickle), each file written atomically (``vispre.utils.io``), ``state.json`` last as the mark of a
complete checkpoint.

    DIR/checkpoint-00001000/agent.safetensors      the agent's state dict (encoders, heads, Polyak targets)
                            optimizer.safetensors  Adam's per-parameter tensors ("state.<i>.<key>")
                            rng.safetensors        the agent's torch generator and torch's global RNG state
                            extra.safetensors      (optional) caller's arrays, e.g. a replay buffer
                            state.json             step, optimizer hyper-parameters, numpy generator state,
                                                   the caller's JSON state (mixing weights, counters)

A resumed run rebuilds the agent as the first run did, then :func:`load_checkpoint` restores all of it:
the same parameters, the same optimizer moments and the same random streams, so the next batch and the
next update equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file, save_model

from ..utils.io import atomic_output, write_atomic, write_json

STATE = "state.json"
PATTERN = re.compile(r"checkpoint-(\d{8})$")


def _save(path: Path, fn, obj, *args) -> None:
    with atomic_output(path) as tmp:
        fn(obj, str(tmp), *args)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Adam's state dict as flat tensors (``state.<param index>.<key>``) and its JSON part (param_groups)."""
    sd = optimizer.state_dict()
    tensors = {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{index}.{key}"] = t.detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(out_dir: str | Path, step: int, agent, rng: np.random.Generator, state: dict | None = None,
                    extra: dict[str, np.ndarray] | None = None, keep: int = 2, pin: bool = False) -> Path:
    """Write ``out_dir/checkpoint-<step>``; keep the newest ``keep`` checkpoints (0: all) and every pinned one
    (``pin``: e.g. the stage-2 checkpoint stage 3 starts from)."""
    directory = Path(out_dir) / f"checkpoint-{step:08d}"
    directory.mkdir(parents=True, exist_ok=True)
    _save(directory / "agent.safetensors", save_model, agent)
    tensors, opt_json = optimizer_tensors(agent.optimizer)
    _save(directory / "optimizer.safetensors", save_file, tensors)
    _save(directory / "rng.safetensors", save_file, {"agent_generator": agent.generator.get_state(),
                                                    "torch_global": torch.get_rng_state()})
    if extra:
        _save(directory / "extra.safetensors", save_numpy, {k: np.ascontiguousarray(v) for k, v in extra.items()})
    write_json(directory / STATE, {"step": step, "optimizer": opt_json, "numpy_rng": rng.bit_generator.state,
                                   "extra": sorted(extra) if extra else [], "state": state or {}, "pinned": pin})
    if keep:
        for old in list_checkpoints(out_dir)[:-keep]:
            if json.loads((old / STATE).read_text()).get("pinned"):
                continue
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
    return directory


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints (with state.json), oldest first."""
    root = Path(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if PATTERN.match(p.name) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(PATTERN.match(p.name).group(1)))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def load_agent_weights(agent: torch.nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Load ``agent``'s weights from a safetensors file written by ``save_model``; returns (missing, unexpected)
    names and loads only when both are empty. save_model writes one name per group of tensors that share
    storage (the critic's encoder is the agent's), and the name it keeps is not stable across a fresh and a
    trained agent (BatchNorm's 0-dim num_batches_tracked), so names are matched through the model's own
    aliases (tensors sharing storage) instead of safetensors' load_model."""
    state = load_file(str(path))
    own = agent.state_dict()
    aliases: dict[tuple, list[str]] = {}
    for name, tensor in own.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        aliases.setdefault(key, []).append(name)
    for names in aliases.values():
        present = [n for n in names if n in state]
        for name in names:
            if present and name not in state:
                state[name] = state[present[0]]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if not missing and not unexpected:
        agent.load_state_dict(state)
    return missing, unexpected


def load_checkpoint(directory: str | Path, agent, weights_only: bool = False) -> dict:
    """Restore ``agent`` (built and configured as when saved) from ``directory``; returns
    {"step", "rng" (a numpy Generator in the saved state), "state", "extra"}. ``weights_only``: the
    parameters only (a new stage starting from them, with fresh optimizer and random streams)."""
    directory = Path(directory)
    meta = json.loads((directory / STATE).read_text())
    missing, unexpected = load_agent_weights(agent, directory / "agent.safetensors")
    if missing or unexpected:
        raise KeyError(f"{directory}: the agent does not match: missing {sorted(missing)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}")
    out = {"step": meta["step"], "state": meta["state"], "rng": None, "extra": {}}
    if weights_only:
        return out
    load_optimizer(agent.optimizer, load_file(str(directory / "optimizer.safetensors")),
                   meta["optimizer"]["param_groups"])
    rng_state = load_file(str(directory / "rng.safetensors"))
    agent.generator.set_state(rng_state["agent_generator"])
    torch.set_rng_state(rng_state["torch_global"])
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["numpy_rng"]
    out["rng"] = rng
    if meta["extra"]:
        out["extra"] = load_numpy(str(directory / "extra.safetensors"))
    return out


def _row_step(row: dict) -> int | None:
    """The step a metrics row belongs to: its own ``step`` / ``env_step`` or that of its one nested record."""
    for key in ("step", "env_step"):
        if key in row:
            return int(row[key])
    for value in row.values():
        if isinstance(value, dict):
            found = _row_step(value)
            if found is not None:
                return found
    return None


def trim_metrics(path: str | Path, step: int) -> None:
    """On resume: drop the rows a killed run logged after its checkpoint at ``step`` (and a line cut mid-write),
    so the log holds each step once."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        at = _row_step(row) if isinstance(row, dict) else None
        if at is None or at <= step:
            kept.append(line)
    write_atomic(path, "".join(x + "\n" for x in kept))
