"""How an agent is scored: rollouts on held-out layouts / goals, and the value error on the validation split.

Rollouts step ``num_envs`` environments together so the encoder sees one batch per step. An
evaluation environment (``vispre.rl.envs``) has ``reset(episode) -> (frame, goal_frame | None)`` and
``step(action) -> (frame, done, success)``; episode i is the same layout / goal for every arm and seed.
The policy samples its actions by default: greedy (argmax) policies fall into turn/bump loops in
MiniGrid (0-14% success against 46-78% sampled in the pilot, research/offline_rl.md section 5).
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections import deque
from collections.abc import Callable

import numpy as np
import torch

from ..utils.progress import progress as progress_bar
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


class _LocalEnv:
    """An evaluation environment in this process, behind the send / recv interface of :class:`_WorkerEnv`."""

    def __init__(self, make_env: Callable[[], object]):
        self.env, self.result = make_env(), None

    def send(self, command: str, arg) -> None:
        self.result = self.env.reset(arg) if command == "reset" else self.env.step(arg)

    def recv(self):
        return self.result

    def close(self) -> None:
        getattr(self.env, "close", lambda: None)()


def _env_worker(make_env: Callable[[], object], conn) -> None:
    env = make_env()
    while True:
        command, arg = conn.recv()
        if command == "close":
            getattr(env, "close", lambda: None)()
            conn.close()
            return
        try:
            conn.send((True, env.reset(arg) if command == "reset" else env.step(arg)))
        except Exception:  # the traceback goes back to the caller, which raises it
            conn.send((False, traceback.format_exc()))


class _WorkerEnv:
    """An evaluation environment in its own process (spawned: MuJoCo renderers do not survive a fork)."""

    def __init__(self, make_env: Callable[[], object]):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_env_worker, args=(make_env, child), daemon=True)
        self.process.start()
        child.close()

    def send(self, command: str, arg) -> None:
        self.conn.send((command, arg))

    def recv(self):
        ok, value = self.conn.recv()
        if not ok:
            raise RuntimeError(f"an evaluation worker failed:\n{value}")
        return value

    def close(self) -> None:
        try:
            self.conn.send(("close", None))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()


@torch.no_grad()
def rollouts(agent: Agent, make_env: Callable[[], object], episodes: int, device, mode: str = "sample",
             epsilon: float = 0.05, num_envs: int = 16, observe: Callable | None = None,
             seed: int = 0, workers: bool = False, progress: bool = False, desc: str = "episodes") -> dict[str, list]:
    """Run ``episodes`` episodes (0..episodes-1); per episode its success (at its final step) and length.

    ``num_envs`` environments run together, each in its own process with ``workers`` (they step in
    parallel while the agent acts for all of them in one batch); ``observe`` maps the frame stacks
    [B, S, H, W, C] (uint8 tensor) to what the agent's encoder reads (the frozen arms: per-frame features);
    ``mode``: sample | epsilon (greedy, a random action with probability epsilon; discrete actions) | greedy."""
    agent.eval()
    generator = np.random.default_rng(seed)
    torch.manual_seed(seed)
    n = min(num_envs, episodes)
    envs = [(_WorkerEnv if workers else _LocalEnv)(make_env) for _ in range(n)]
    stacks: list[deque | None] = [None] * n
    goals: list[np.ndarray | None] = [None] * n
    running: dict[int, list] = {}  # env index -> [episode, length]
    success, length = np.zeros(episodes, bool), np.zeros(episodes, int)
    next_episode = 0
    bar = progress_bar(total=episodes, desc=desc, unit="episode", disable=not progress)

    def reset(indices: list[int]) -> None:
        nonlocal next_episode
        for i in indices:
            envs[i].send("reset", next_episode)
            running[i] = [next_episode, 0]
            next_episode += 1
        for i in indices:
            frame, goal = envs[i].recv()
            stacks[i] = deque([frame] * agent.frame_stack, maxlen=agent.frame_stack)
            goals[i] = None if goal is None else np.stack([goal] * agent.frame_stack)

    try:
        reset(list(range(n)))
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
                envs[i].send("step", action)
            again = []
            for i in active:
                frame, done, succeeded = envs[i].recv()
                stacks[i].append(frame)
                running[i][1] += 1
                if done:
                    episode, steps = running.pop(i)
                    success[episode], length[episode] = succeeded, steps
                    bar.update(1)
                    if next_episode + len(again) < episodes:
                        again.append(i)
            if again:
                reset(again)
    finally:
        bar.close()
        for env in envs:
            env.close()
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
