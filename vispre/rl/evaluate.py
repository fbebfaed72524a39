"""How an agent is scored: rollouts on held-out layouts / goals, and the value error on the validation split.

Rollouts step ``num_envs`` environments together so the encoder sees one batch per step. An
evaluation environment (``vispre.rl.envs``) has ``reset(episode) -> (frame, goal_frame | None)`` and
``step(action) -> (frame, done, success)``; episode i is the same layout / goal for every arm and seed.
The policy samples its actions by default: greedy (argmax) policies fall into turn/bump loops in
MiniGrid (0-14% success against 46-78% sampled in the pilot, research/offline_rl.md section 5).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import torch

from .agent import Agent, to_torch
from .transitions import Transitions


def monte_carlo_returns(data: Transitions, discount: float) -> np.ndarray:
    """G_t = r_t + gamma * m_t * G_{t+1} within each trajectory, per row (NaN on rows that are not
    transitions). A trajectory cut by a time limit is not bootstrapped: its returns are truncated."""
    if data.rewards is None:
        raise ValueError("Monte-Carlo returns need rewards")
    is_valid = np.zeros(data.num_rows, bool)
    is_valid[data.valid] = True
    returns = np.full(data.num_rows, np.nan, np.float64)
    later = 0.0
    for t in data.valid[::-1]:
        continues = t + 1 < data.num_rows and is_valid[t + 1] and data.traj_start[t + 1] == data.traj_start[t]
        later = data.rewards[t] + discount * data.masks[t] * (later if continues else 0.0)
        returns[t] = later
    return returns


def goal_returns(data: Transitions, rows: np.ndarray, discount: float) -> np.ndarray:
    """MC return to the trajectory's last state under the sparse goal reward (-1 per step before it)."""
    steps = data.traj_last[rows] - rows
    return -(1.0 - discount ** steps) / (1.0 - discount)


@torch.no_grad()
def value_error(agent: Agent, data: Transitions, discount: float, device, max_rows: int = 4096,
                batch_size: int = 1024) -> dict[str, float]:
    """|V - G| against Monte-Carlo returns G of the data's own behaviour on (up to ``max_rows``) rows.

    IQL's V estimates an upper expectile of the behaviour's returns, so V > G is expected; the
    correlation says whether V orders states the way the returns do. Goal-conditioned agents are
    scored on V(s_t, s_T) with s_T the trajectory's last state."""
    agent.eval()
    rows = data.valid[np.unique(np.linspace(0, len(data.valid) - 1, min(max_rows, len(data.valid))).astype(int))]
    if agent.goal_conditioned:
        target = goal_returns(data, rows, discount)
    elif data.rewards is None:
        return {}
    else:
        target = monte_carlo_returns(data, discount)[rows]
    values = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        obs = to_torch({"o": data.stack(chunk, agent.frame_stack)}, device)["o"]
        goals = None
        if agent.goal_conditioned:
            goals = to_torch({"g": data.stack(data.traj_last[chunk], agent.frame_stack)}, device)["g"]
        v = agent.value(obs, goals)
        if v is None:
            return {}
        values.append(v.float().cpu().numpy())
    v = np.concatenate(values)
    corr = float(np.corrcoef(v, target)[0, 1]) if v.std() > 0 and target.std() > 0 else float("nan")
    return {"value_mae": float(np.abs(v - target).mean()), "value_bias": float((v - target).mean()),
            "value_corr": corr, "value_mean": float(v.mean()), "return_mean": float(target.mean())}


@torch.no_grad()
def rollouts(agent: Agent, make_env: Callable[[], object], episodes: int, device, mode: str = "sample",
             epsilon: float = 0.05, num_envs: int = 16, observe: Callable | None = None,
             seed: int = 0) -> dict[str, list]:
    """Run ``episodes`` episodes (0..episodes-1); per episode its success and length.

    ``observe`` maps the frame stacks [B, S, H, W, C] (uint8 tensor) to what the agent's encoder
    reads (the frozen arms: per-frame features); ``mode``: sample | epsilon (greedy, a random action
    with probability epsilon; discrete actions) | greedy."""
    agent.eval()
    generator = np.random.default_rng(seed)
    torch.manual_seed(seed)
    envs = [make_env() for _ in range(min(num_envs, episodes))]
    stacks: list[deque | None] = [None] * len(envs)
    goals: list[np.ndarray | None] = [None] * len(envs)
    running: dict[int, list] = {}  # env index -> [episode, length]
    success, length = np.zeros(episodes, bool), np.zeros(episodes, int)
    next_episode = 0

    def start(i: int) -> None:
        nonlocal next_episode
        frame, goal = envs[i].reset(next_episode)
        stacks[i] = deque([frame] * agent.frame_stack, maxlen=agent.frame_stack)
        goals[i] = None if goal is None else np.stack([goal] * agent.frame_stack)
        running[i] = [next_episode, 0]
        next_episode += 1

    for i in range(len(envs)):
        start(i)
    while running:
        active = sorted(running)
        obs = torch.from_numpy(np.stack([np.stack(stacks[i]) for i in active])).to(device)
        goal = None
        if agent.goal_conditioned:
            goal = torch.from_numpy(np.stack([goals[i] for i in active])).to(device)
            goal = observe(goal) if observe else goal
        obs = observe(obs) if observe else obs
        actions = agent.act(obs, goal, sample=(mode == "sample")).cpu().numpy()
        if mode == "epsilon" and agent.space.discrete:
            noise = generator.random(len(actions)) < epsilon
            actions = np.where(noise, generator.integers(0, agent.space.n, len(actions)), actions)
        for i, action in zip(active, actions):
            frame, done, succeeded = envs[i].step(action)
            stacks[i].append(frame)
            running[i][1] += 1
            if done:
                episode, steps = running.pop(i)
                success[episode], length[episode] = succeeded, steps
                if next_episode < episodes:
                    start(i)
    for env in envs:
        getattr(env, "close", lambda: None)()
    return {"success": success.tolist(), "length": length.tolist()}


class UniformPolicy:
    """The reference a learnt policy must beat: uniformly random actions (same episodes as the agents)."""

    goal_conditioned, frame_stack = False, 1

    def __init__(self, space):
        self.space = space

    def eval(self):
        return self

    def act(self, obs, goals=None, sample=True):
        if self.space.discrete:
            return torch.randint(0, self.space.n, (len(obs),))
        return torch.rand(len(obs), self.space.n) * 2 - 1
