"""Multi-task offline data for V-PTR's stages 2-3: per-task datasets with V-PTR's sparse rewards and
Monte-Carlo returns, read together with mixing weights (and a switch to prior / target mixing).

V-PTR's reward convention (``examples/train_utils.py``: ``num_final_reward_steps``, ``term_as_rew``,
``reward_scale`` 11, ``reward_shift`` -1): in a successful trajectory the last K transitions are positive
(K = 3 in the launch script); each transition's 0/1 label p gives

    r = scale * p + shift   (10 on positive steps, -1 elsewhere)      m = 1 - p  (a positive step ends the backup)

and the return-to-go G_t = r_t + gamma * m_t * G_{t+1} (G of a trajectory's last transition is its reward),
the Monte-Carlo bound of CQL's regulariser. A trajectory counts as successful when the data says so (a
mask of 0: the task was completed) or, for demonstration data without rewards, always.

Mixing (V-PTR's ``MixingReplayBuffer``): a batch of B holds floor(B * w_i) rows of each source, the rest from the
last source with a positive weight; stage 3 switches the weights to (ratio, 1 - ratio) of (prior, target) from a
given step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .transitions import Transitions


@dataclass
class RewardConvention:
    final_steps: int = 3  # num_final_reward_steps (V-PTR's launch script: 3)
    scale: float = 11.0  # reward_scale
    shift: float = -1.0  # reward_shift
    all_successful: bool = False  # demonstrations: every trajectory is a success (else: the data's masks say)


def trajectory_ends(data: Transitions) -> np.ndarray:
    """[N] for each transition row in ``data.valid``: its trajectory's last transition row."""
    return data.traj_last[data.valid]


def sparse_task_rewards(data: Transitions, conv: RewardConvention,
                        discount: float) -> tuple[Transitions, np.ndarray]:
    """(``data`` with V-PTR's rewards and masks in place of its own, ``mc_returns`` [R] per row).

    The positive steps are the K transitions up to a successful trajectory's end: its last transition
    (demonstrations) or the first where the data's mask is 0 (the task completed)."""
    valid = data.valid
    traj = data.traj_last[valid]  # names each transition's trajectory
    if conv.all_successful or data.masks is None:
        end = {int(t): int(t) for t in np.unique(traj)}
    else:
        end = {}
        for r in np.sort(valid[data.masks[valid] == 0]):
            end.setdefault(int(data.traj_last[r]), int(r))
    ends = np.array([end.get(int(t), -1) for t in traj], np.int64)
    pos = (ends >= 0) & (valid <= ends) & (valid > ends - conv.final_steps)
    positive = np.zeros(data.num_rows, bool)
    positive[valid[pos]] = True
    # r = scale * p + shift, m = 1 - p (term_as_rew)
    out = replace(data, rewards=(conv.scale * positive + conv.shift).astype(np.float32),
                  masks=(1.0 - positive).astype(np.float32))
    return out, monte_carlo_returns(out, discount)


def monte_carlo_returns(data: Transitions, discount: float) -> np.ndarray:
    """G_t = r_t + gamma * m_t * G_{t+1} within each trajectory, backwards from its last transition."""
    g = np.zeros(data.num_rows, np.float32)
    valid = np.sort(data.valid)
    is_valid = np.zeros(data.num_rows + 1, bool)
    is_valid[valid] = True
    for r in valid[::-1]:
        nxt = g[r + 1] if (r < data.traj_last[r] and is_valid[r + 1]) else 0.0
        g[r] = data.rewards[r] + discount * data.masks[r] * nxt
    return g


@dataclass
class TaskSource:
    """One dataset of one task: transitions (V-PTR rewards), their Monte-Carlo returns, the task index."""

    name: str
    data: Transitions
    mc_returns: np.ndarray
    task: int

    def batch(self, rows: np.ndarray, frame_stack: int = 1) -> dict[str, np.ndarray]:
        out = self.data.batch(rows, frame_stack)
        out["mc_returns"] = self.mc_returns[rows]
        out["task"] = np.full(len(rows), self.task, np.int64)
        return out


class DatasetMix:
    """Batches drawn from several sources in fixed proportions (V-PTR's MixingReplayBuffer, any count)."""

    def __init__(self, sources: list[TaskSource], weights: list[float]):
        if len(sources) != len(weights) or not sources:
            raise ValueError(f"{len(sources)} sources for {len(weights)} weights")
        self.sources = sources
        self.set_weights(weights)

    def set_weights(self, weights: list[float]) -> None:
        w = np.asarray(weights, float)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"mixing weights must be >= 0 with a positive sum, got {weights}")
        self.weights = (w / w.sum()).tolist()

    def counts(self, batch_size: int) -> list[int]:
        """floor(B * w_i) rows of each source, the rest to the last source with a positive weight (two sources:
        V-PTR's floor(B * ratio) and B - floor(B * ratio))."""
        counts = [int(np.floor(batch_size * w + 1e-9)) for w in self.weights]
        last = max(i for i, w in enumerate(self.weights) if w > 0)
        counts[last] += batch_size - sum(counts)
        return counts

    def sample(self, batch_size: int, rng: np.random.Generator, frame_stack: int = 1) -> dict[str, np.ndarray]:
        parts = [s.batch(s.data.sample(n, rng), frame_stack)
                 for s, n in zip(self.sources, self.counts(batch_size)) if n > 0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def stage_weights(step: int, prior_weights: list[float], num_target: int, target_from_step: int,
                  target_ratio: float = 0.9) -> list[float]:
    """Stage 2 (step < target_from_step, or no target_from_step): the prior sources by their weights, no
    target data; stage 3: ``target_ratio`` of the batch from the prior sources (in their proportions), the
    rest from the target sources (equally). Sources are ordered prior first, then target."""
    prior = np.asarray(prior_weights, float)
    prior = prior / prior.sum()
    if target_from_step < 0 or step < target_from_step or num_target == 0:
        return prior.tolist() + [0.0] * num_target
    return (target_ratio * prior).tolist() + [(1 - target_ratio) / num_target] * num_target
