"""Offline RL data in OGBench's ``.npz`` layout (read by ``vispre.data.ogbench_npz``): batches with frame
stacks and goals drawn at sample time.

The file (OGBench, and vispre's MiniGrid generator) concatenates trajectories row after row::

    observations [R, H, W, C] uint8   s0 s1 s2 s3 | s0 s1 s2 ...
    actions      [R] int / [R, A]     a0 a1 a2 a3 | ...          (the last frame's action is a dummy)
    terminals    [R]                   0  0  0  1 | ...          (1 on the LAST FRAME of each trajectory)
    rewards, masks [R] (optional)      reward of the transition leaving the row; masks = 0 only where
                                       the task was completed (Q-learning bootstraps with masks; trajectory
                                       ends come from terminals, never from masks)

OGBench reads it two ways (``ogbench.utils.load_dataset``), reproduced by :func:`load_ogbench`:

* regular: ``next_observations`` by shifting, each trajectory's last frame dropped (a copy of all frames);
* compact: frames kept as they are, ``valids`` = 0 on the last frame (no copy: stays memory-mapped).

:class:`Transitions` samples from either without building stacks or goal images in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..data.goals import RANDOM, GoalMix, draw_goals, future_indices
from ..data.ogbench_npz import load_ogbench, trajectory_bounds


@dataclass
class Transitions:
    """Transitions (s_t, a_t, r_t, m_t, s_{t+1}) over the rows of ``observations``.

    ``observations`` may be frames or per-frame features (the frozen-encoder path): sampling only
    indexes rows. ``next_observations`` is None when the next state is the next row (compact layout).
    """

    observations: np.ndarray
    actions: np.ndarray
    valid: np.ndarray  # [N] rows that start a transition
    traj_start: np.ndarray  # [R] first row of each row's trajectory
    traj_last: np.ndarray  # [R] last transition row of each row's trajectory (goals stop there, as in OGBench)
    rewards: np.ndarray | None = None
    masks: np.ndarray | None = None
    next_observations: np.ndarray | None = None

    @classmethod
    def from_layout(cls, data: dict[str, np.ndarray]) -> Transitions:
        """From :func:`load_ogbench`'s regular (``next_observations``) or compact (``valids``) dict."""
        rows = len(data["observations"])
        common = {"observations": data["observations"], "actions": data["actions"],
                      "rewards": data.get("rewards"), "masks": data.get("masks")}
        if common["rewards"] is not None and common["masks"] is None:
            common["masks"] = np.ones(rows, np.float32)
        if "valids" in data:  # compact: the last frame of a trajectory is the row with valids == 0
            start, last_frame = trajectory_bounds(data["valids"] == 0)
            return cls(valid=np.flatnonzero(data["valids"] > 0), traj_start=start, traj_last=last_frame - 1, **common)
        if "next_observations" in data:  # regular: terminals = 1 on each trajectory's last transition
            start, last = trajectory_bounds(np.asarray(data["terminals"]) > 0)
            return cls(valid=np.arange(rows), traj_start=start, traj_last=last,
                       next_observations=data["next_observations"], **common)
        raise KeyError("a dataset dict needs 'valids' (compact layout) or 'next_observations' (regular layout)")

    @classmethod
    def from_file(cls, path: str | Path, compact: bool = True, mmap: bool = True, cache_dir: str | Path | None = None,
                  keep_rows: np.ndarray | None = None, labels: dict | None = None) -> Transitions:
        return cls.from_layout(load_ogbench(path, compact, mmap, cache_dir, keep_rows, labels))

    def __len__(self) -> int:
        return len(self.valid)

    @property
    def num_rows(self) -> int:
        return len(self.observations)

    @property
    def discrete(self) -> bool:
        return np.issubdtype(self.actions.dtype, np.integer)

    def with_observations(self, observations: np.ndarray, next_observations: np.ndarray | None = None):
        """The same transitions over other per-row observations (e.g. precomputed features)."""
        if len(observations) != self.num_rows:
            raise ValueError(f"{len(observations)} observation rows for a dataset of {self.num_rows}")
        return replace(self, observations=observations, next_observations=next_observations)

    def with_rewards(self, scale: float = 1.0, shift: float = 0.0) -> Transitions:
        """r <- scale * r + shift (e.g. shift -1 turns 0/1 success rewards into OGBench's -1/0)."""
        if self.rewards is None:
            raise ValueError("this dataset has no rewards (a goal-conditioned file: use a goal-conditioned agent)")
        return replace(self, rewards=(self.rewards * scale + shift).astype(np.float32))

    # ----- sampling
    def sample(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Rows of ``batch_size`` uniformly drawn transitions."""
        return self.valid[rng.integers(0, len(self.valid), batch_size)]

    def stack(self, rows: np.ndarray, frame_stack: int = 1) -> np.ndarray:
        """[B, S, ...] the last S states up to each row, oldest first; before a trajectory's start the
        first frame repeats (stacks are gathered here, never stored)."""
        back = np.arange(frame_stack - 1, -1, -1)
        idx = np.maximum(rows[:, None] - back, self.traj_start[rows][:, None])
        return self.observations[idx.ravel()].reshape(len(rows), frame_stack, *self.observations.shape[1:])

    def next_stack(self, rows: np.ndarray, frame_stack: int = 1) -> np.ndarray:
        """[B, S, ...] the stack ending at s_{t+1}."""
        if self.next_observations is None:
            return self.stack(rows + 1, frame_stack)
        newest = self.next_observations[rows][:, None]
        if frame_stack == 1:
            return newest
        back = np.arange(frame_stack - 2, -1, -1)  # s_{t+1-k}, k = S-1..1, live in observations
        idx = np.maximum(rows[:, None] - back, self.traj_start[rows][:, None])
        older = self.observations[idx.ravel()].reshape(len(rows), frame_stack - 1, *self.observations.shape[1:])
        return np.concatenate([older, newest], axis=1)

    def batch(self, rows: np.ndarray, frame_stack: int = 1) -> dict[str, np.ndarray]:
        out = {"observations": self.stack(rows, frame_stack), "next_observations": self.next_stack(rows, frame_stack),
               "actions": self.actions[rows]}
        if self.rewards is not None:
            out["rewards"], out["masks"] = self.rewards[rows], self.masks[rows]
        return out

    # ----- goals (goal-conditioned agents)
    def future_rows(self, rows: np.ndarray, rng: np.random.Generator, geometric_p: float | None = None) -> np.ndarray:
        """A later state of the same trajectory: offset ~ Geometric(p) >= 1 clipped at the trajectory's
        last transition (OGBench ``value_geom_sample``), or uniform over (t, last] when ``geometric_p`` is None.
        The last frame itself is never a goal: as a state it is never trained on (OGBench's final_state_idxs).
        Drawn by the one goal sampler, ``vispre.data.goals``."""
        future = "uniform_after" if geometric_p is None else "geometric"
        discount = 0.99 if geometric_p is None else 1.0 - geometric_p
        return future_indices(torch.from_numpy(rows), torch.from_numpy(self.traj_last[rows]), future, discount,
                              _torch_generator(rng)).numpy()

    def sample_goals(self, rows: np.ndarray, rng: np.random.Generator, p_current: float = 0.2,
                     p_trajectory: float = 0.5, p_random: float = 0.3, discount: float | None = 0.99) -> np.ndarray:
        """Goal rows: the state itself (p_current), a future state of the same trajectory (p_trajectory,
        geometric with p = 1 - discount, uniform when ``discount`` is None), or any transition's state (p_random)."""
        if not np.isclose(p_current + p_trajectory + p_random, 1.0):
            raise ValueError(f"goal probabilities must sum to 1, got {p_current}+{p_trajectory}+{p_random}")
        mix = GoalMix(p_current, p_trajectory, p_random, "uniform_after" if discount is None else "geometric",
                      0.99 if discount is None else discount, p_same=0.0)
        kind, index = draw_goals(torch.from_numpy(rows), torch.from_numpy(self.traj_last[rows]), mix,
                                 _torch_generator(rng))
        index = index.numpy()
        random = kind.numpy() == RANDOM
        index[random] = self.sample(int(random.sum()), rng)
        return index


def _torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A torch generator drawn from the numpy one, so a run's goals stay a function of its seed."""
    return torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))


def goal_rewards(rows: np.ndarray, goal_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OGBench's sparse goal reward: success = (s_t is the goal); r = success - 1, mask = 1 - success."""
    success = (rows == goal_rows).astype(np.float32)
    return success - 1.0, 1.0 - success
