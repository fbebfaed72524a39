"""MiniGrid tasks as full-grid RGB frames (64x64x3 uint8), and the state the oracle plans over.

A task is a MiniGrid environment id, a tile size that makes the whole grid about 64 px, and the
actions its oracle uses. Frames are ``env.get_frame`` of the whole grid (not the agent's
egocentric view), padded with black at the bottom and right to 64x64:

    simple_crossing   MiniGrid-SimpleCrossingS9N1-v0   9x9 grid,  tile 7 -> 63 px  (+1 px pad)
    doorkey           MiniGrid-DoorKey-8x8-v0          8x8 grid,  tile 8 -> 64 px
    fourrooms         MiniGrid-FourRooms-v0            19x19 grid, tile 3 -> 57 px (+7 px pad)

The view-cone highlight is off (a frame is then a function of the state alone) except for
FourRooms, where the agent is 3 px wide and the cone is what shows its heading.

A *layout* is what ``env.reset(seed=layout_seed)`` draws: walls, goal, key and door. The
agent's *state* is ``(x, y, heading, carrying_key, door_open)``; the frame, the dynamics and the
shortest-path distances are functions of (layout, state). Headings are MiniGrid's: 0 right
(+x), 1 down (+y), 2 left, 3 up. Actions are MiniGrid's integers: 0 left, 1 right, 2 forward,
3 pickup, 5 toggle.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* environment ids)
import numpy as np

FRAME_SIZE = 64
LEFT, RIGHT, FORWARD, PICKUP, TOGGLE = 0, 1, 2, 3, 5
MOVES = (LEFT, RIGHT, FORWARD)  # what noise draws from: never drops the key or closes the door
DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))  # minigrid.core.constants.DIR_TO_VEC


@dataclass(frozen=True)
class Task:
    name: str
    env_id: str
    tile: int  # pixels per grid cell
    actions: tuple[int, ...]  # the actions the oracle may take
    highlight: bool = False  # draw the agent's view cone


TASKS = {
    "simple_crossing": Task("simple_crossing", "MiniGrid-SimpleCrossingS9N1-v0", 7, MOVES),
    "doorkey": Task("doorkey", "MiniGrid-DoorKey-8x8-v0", 8, (*MOVES, PICKUP, TOGGLE)),
    "fourrooms": Task("fourrooms", "MiniGrid-FourRooms-v0", 3, MOVES, highlight=True),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown MiniGrid task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


State = tuple[int, int, int, int, int]  # x, y, heading, carrying_key, door_open


@dataclass(frozen=True)
class Layout:
    """The static part of an episode: grid size, blocked cells, goal, key and door cells."""

    width: int
    height: int
    blocked: frozenset  # walls and lava: never entered
    goal: tuple[int, int]
    key: tuple[int, int] | None = None
    door: tuple[int, int] | None = None

    @classmethod
    def from_env(cls, env) -> Layout:
        """Read the layout of a freshly reset environment (before the key is picked up)."""
        grid = env.unwrapped.grid
        blocked, goal, key, door = set(), None, None, None
        for x in range(grid.width):
            for y in range(grid.height):
                cell = grid.get(x, y)
                kind = None if cell is None else cell.type
                if kind in ("wall", "lava"):
                    blocked.add((x, y))
                elif kind == "goal":
                    goal = (x, y)
                elif kind == "key":
                    key = (x, y)
                elif kind == "door":
                    door = (x, y)
                elif kind is not None:
                    raise ValueError(f"MiniGrid cell type {kind!r} at {(x, y)} is not supported by the oracle")
        if goal is None:
            raise ValueError("the MiniGrid layout has no goal")
        return cls(grid.width, grid.height, frozenset(blocked), goal, key, door)

    def cells(self) -> list[tuple[int, int]]:
        """Every cell the agent could stand on (key and door cells included)."""
        return [(x, y) for y in range(self.height) for x in range(self.width) if (x, y) not in self.blocked]


def make_env(task: Task):
    """The raw MiniGrid environment (no time limit of its own: rollouts cut episodes themselves)."""
    return gym.make(task.env_id, max_steps=10**9).unwrapped


def reset(env, layout_seed: int) -> Layout:
    env.reset(seed=int(layout_seed))
    return Layout.from_env(env)


def state_of(env) -> State:
    x, y = (int(v) for v in env.agent_pos)
    door_open = 0
    for obj in env.grid.grid:
        if obj is not None and obj.type == "door":
            door_open = int(obj.is_open)
    return (x, y, int(env.agent_dir), int(env.carrying is not None), door_open)


def place_agent(env, x: int, y: int, heading: int) -> None:
    """Move the agent (a start state other than the environment's own)."""
    env.agent_pos = (int(x), int(y))
    env.agent_dir = int(heading)


def render(env, task: Task) -> np.ndarray:
    """The whole grid as a FRAME_SIZE x FRAME_SIZE x 3 uint8 image (black padding bottom/right)."""
    if task.highlight:
        frame = env.get_frame(highlight=True, tile_size=task.tile)
    else:  # what get_frame draws without the cone, minus its unused view-cone computation
        frame = env.grid.render(task.tile, env.agent_pos, env.agent_dir)
    h, w = frame.shape[:2]
    if h > FRAME_SIZE or w > FRAME_SIZE:
        raise ValueError(f"task {task.name}: a {w}x{h} frame does not fit {FRAME_SIZE} px; use a smaller tile")
    out = np.zeros((FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    out[:h, :w] = frame
    return out
