"""Trajectory arrays (OGBench-layout ``.npz``) as a resumable source of (s, s', s+, z) batches.

For data that is not in shards: one ``.npz`` with ``observations`` (uint8 [N, H, W, 3], episodes
concatenated) and ``terminals`` ([N], 1 on the last frame of every episode), as OGBench and
``vispre.envs`` write them. Row t is a state when it is not terminal (its next frame t + 1 is in
the same episode). Samples follow ``vispre.data.goals`` with the whole dataset as the random-goal
pool (each sample's POOL frame is uniform over all rows).

``TrajectoryLoader`` stands in for ``StreamLoader`` in the training loop: batches are a pure
function of (seed, epoch, rank, batch index), so its state is two integers and a resumed run
draws exactly the batches an uninterrupted one would. The whole array is held in memory.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..utils.seeding import stable_seed as _seed
from .goals import GoalMix, draw_samples
from .ogbench_npz import read_npz, trajectory_bounds

STATE_VERSION = 1


def load_trajectories(path: str | Path) -> dict[str, np.ndarray]:
    """``observations`` and ``terminals`` (plus any other arrays) of an OGBench-layout file, checked."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"trajectory file {path} does not exist")
    arrays = read_npz(path, mmap=False)
    for key in ("observations", "terminals"):
        if key not in arrays:
            raise ValueError(f"{path}: no '{key}' array (found {sorted(arrays)}); expected OGBench layout")
    obs, terminals = arrays["observations"], arrays["terminals"]
    if obs.dtype != np.uint8 or obs.ndim != 4 or obs.shape[-1] != 3:
        raise ValueError(f"{path}: 'observations' must be uint8 [N, H, W, 3] frames, got {obs.dtype} {obs.shape}")
    if terminals.shape != (len(obs),):
        raise ValueError(f"{path}: 'terminals' has shape {terminals.shape}, expected ({len(obs)},)")
    terminals = terminals.astype(bool)
    terminals[-1] = True  # the array's end ends the last episode
    arrays["terminals"] = terminals
    return arrays


def episode_ends(terminals: np.ndarray) -> np.ndarray:
    """For every row, the row index of its episode's last frame."""
    return trajectory_bounds(terminals)[1]


class TrajectoryLoader:
    def __init__(self, path: str | Path, mix: GoalMix, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, samples_per_epoch: int | None = None, frame_size: int | None = None):
        mix.check()
        arrays = load_trajectories(path)
        self.path, self.mix, self.batch_size = Path(path), mix, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.observations = torch.from_numpy(arrays["observations"])  # [N, H, W, 3], permuted per batch
        if frame_size is not None and tuple(self.observations.shape[1:3]) != (frame_size, frame_size):
            raise ValueError(f"{path}: frames are {tuple(self.observations.shape[1:3])} px but data.frame_size is "
                             f"{frame_size}")
        self.arrays = arrays
        self.ends = torch.from_numpy(episode_ends(arrays["terminals"]))
        self.states = torch.from_numpy(np.flatnonzero(~arrays["terminals"]))
        if len(self.states) == 0:
            raise ValueError(f"{path}: no transitions (every episode is a single frame)")
        self.samples_per_epoch = samples_per_epoch or len(self.states)
        self.epoch, self.batch = 0, 0

    # -- epochs -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return math.ceil(self.samples_per_epoch / (self.batch_size * self.world_size))

    def __iter__(self):
        """The rest of the current epoch; the counters move as the caller takes batches."""
        while self.batch < len(self):
            batch = self.make_batch(self.epoch, self.batch)
            self.batch += 1
            yield batch
        self.epoch, self.batch = self.epoch + 1, 0

    def make_batch(self, epoch: int, index: int) -> dict:
        generator = torch.Generator().manual_seed(_seed(self.seed, epoch, self.rank, index))
        t = self.states[torch.randint(len(self.states), (self.batch_size,), generator=generator)]
        sample = draw_samples(t, self.ends[t], self.mix, generator)
        pool = torch.randint(len(self.observations), (self.batch_size,), generator=generator)
        slots = torch.stack([t, t + 1, sample["g_index"], sample["z_index"], pool], 1)  # [B, 5]
        frames = self.observations[slots.clamp_min(0)].permute(0, 1, 4, 2, 3)  # [B, 5, 3, H, W]
        frames = frames * (slots >= 0).view(*slots.shape, 1, 1, 1).to(frames.dtype)  # random goals: blank
        return {**sample, "frames": frames.contiguous(), "valid": torch.ones(self.batch_size, dtype=torch.bool)}

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "epoch": self.epoch, "batch": self.batch, "seed": self.seed,
                "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        mismatch = [f"{k}: saved {state.get(k)}, now {v}" for k, v in
                    (("seed", self.seed), ("batch_size", self.batch_size), ("world_size", self.world_size))
                    if state.get(k) != v]
        if mismatch:
            raise ValueError("cannot resume the trajectory sampler exactly (" + "; ".join(mismatch) + ")")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    # -- whole episodes (diagnostics) ---------------------------------------------------------------------
    def episodes(self, count: int) -> list[tuple[torch.Tensor, dict]]:
        """The first ``count`` episodes: frames uint8 [T, 3, H, W] and their per-frame metadata."""
        out, start = [], 0
        for end in np.flatnonzero(self.arrays["terminals"])[:count]:
            rows = slice(start, end + 1)
            meta = {k: v[rows].tolist() for k, v in self.arrays.items() if k not in ("observations",)
                    and v.shape[:1] == self.arrays["terminals"].shape}
            if "rewards" in self.arrays:
                meta["success"] = bool(self.arrays["rewards"][rows].sum() > 0)
            out.append((self.observations[rows].permute(0, 3, 1, 2), meta))
            start = end + 1
        return out
