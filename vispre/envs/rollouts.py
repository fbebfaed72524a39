"""Noisy shortest-path rollouts in MiniGrid, recorded frame by frame.

Two behaviours, both driven by the BFS oracle (``vispre.envs.oracle``):

``noisy``  walk to the task's goal; at every step, with probability epsilon (drawn per episode
           from ``epsilons``), a uniformly random move (left, right, forward) instead.
``play``   walk to a random sub-goal cell (uniform over reachable cells, the goal included), a
           new one on arrival, with epsilon noise (OGBench's "navigate" style). The goal
           matters only in that stepping on it ends the episode: the data are goal-agnostic.

An episode ends on reaching the goal or after ``max_steps`` actions. It is recorded as
``steps + 1`` rows, one per frame: row t holds the frame *before* action t, and the last row the
frame after the last action (the agent on the goal for a success), with action 0 (none taken)
and ``terminal = 1``. ``reward[t] = 1`` and ``mask[t] = 0`` on the row whose action reaches the
goal (the OGBench convention: reward and mask belong to the transition row t -> t + 1).
Every episode is a pure function of (task, layout seed, episode seed, behaviour settings).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .minigrid import MOVES, Task, make_env, place_agent, render, reset, state_of
from .oracle import Oracle


@dataclass
class Episode:
    """One trajectory: arrays of length steps + 1 (one row per frame)."""

    frames: np.ndarray  # [T, 64, 64, 3] uint8
    actions: np.ndarray  # [T] int64; row T-1: 0 (no action)
    rewards: np.ndarray  # [T] float32
    masks: np.ndarray  # [T] float32
    terminals: np.ndarray  # [T] float32, 1 on the last row
    states: np.ndarray  # [T, 5] int64: x, y, heading, carrying_key, door_open
    distances: np.ndarray  # [T] int64: shortest-path distance to the goal
    goal: tuple[int, int]
    layout_seed: int
    success: bool

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class Behaviour:
    kind: str = "play"  # noisy | play
    epsilons: tuple[float, ...] = (0.2,)  # per-episode noise level, drawn uniformly from these
    max_steps: int = 100
    random_start: bool = True  # start from a random reachable state, not the environment's own start

    def __post_init__(self):
        if self.kind not in ("noisy", "play"):
            raise ValueError(f"behaviour must be 'noisy' or 'play', got {self.kind!r}")
        if self.max_steps < 1 or not self.epsilons or not all(0 <= e <= 1 for e in self.epsilons):
            raise ValueError(f"bad behaviour settings: {self}")


def reachable_cells(oracle: Oracle, state) -> list[tuple[int, int]]:
    """Cells the agent can stand on from ``state``."""
    return sorted({(s[0], s[1]) for s in oracle.state_distances(state)})


def random_start(env, oracle: Oracle, rng: np.random.Generator) -> None:
    """A random cell and heading reachable from the environment's own start with the key and the
    door untouched (DoorKey: the key's side of the door), the goal cell excluded."""
    start = state_of(env)
    cells = sorted({(s[0], s[1]) for s in oracle.state_distances(start) if s[3:] == start[3:]}
                   - {oracle.layout.goal})
    x, y = cells[int(rng.integers(len(cells)))]
    place_agent(env, x, y, int(rng.integers(4)))


class Roller:
    """Keeps one environment per task (construction is the slow part) and rolls episodes out."""

    def __init__(self, task: Task, behaviour: Behaviour):
        self.task = task
        self.behaviour = behaviour
        self.env = make_env(task)

    def episode(self, layout_seed: int, rng: np.random.Generator) -> Episode:
        task, b, env = self.task, self.behaviour, self.env
        layout = reset(env, layout_seed)
        oracle = Oracle(layout, task.actions)
        if b.random_start:
            random_start(env, oracle, rng)
        epsilon = float(b.epsilons[int(rng.integers(len(b.epsilons)))])
        state = state_of(env)
        subgoal = self._subgoal(oracle, state, rng)
        rows = {k: [] for k in ("frames", "actions", "rewards", "states", "distances")}
        success = False
        for t in range(b.max_steps + 1):
            rows["frames"].append(render(env, task))
            rows["states"].append(state)
            rows["distances"].append(oracle.distance(state))
            if success or t == b.max_steps:
                rows["actions"].append(0)
                rows["rewards"].append(0.0)
                break
            if b.kind == "play" and (state[0], state[1]) == subgoal:
                subgoal = self._subgoal(oracle, state, rng)
            action = None
            if rng.random() >= epsilon:
                action = oracle.action(state, [subgoal] if b.kind == "play" else None, rng)
            if action is None:  # noise, or no path (cannot happen from a reachable start)
                action = MOVES[int(rng.integers(len(MOVES)))]
            _, _, terminated, _, _ = env.step(action)
            state = state_of(env)
            success = bool(terminated)
            rows["actions"].append(action)
            rows["rewards"].append(float(success))
        n = len(rows["frames"])
        rewards = np.asarray(rows["rewards"], np.float32)
        terminals = np.zeros(n, np.float32)
        terminals[-1] = 1
        return Episode(frames=np.stack(rows["frames"]), actions=np.asarray(rows["actions"], np.int64),
                       rewards=rewards, masks=1 - rewards, terminals=terminals,
                       states=np.asarray(rows["states"], np.int64),
                       distances=np.asarray(rows["distances"], np.int64), goal=layout.goal,
                       layout_seed=int(layout_seed), success=success)

    def _subgoal(self, oracle: Oracle, state, rng: np.random.Generator) -> tuple[int, int]:
        if self.behaviour.kind != "play":
            return oracle.layout.goal
        cells = [c for c in reachable_cells(oracle, state) if c != (state[0], state[1])]
        return cells[int(rng.integers(len(cells)))]
