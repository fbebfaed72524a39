"""Environments that make data for vispre: MiniGrid tasks as 64x64 frames with a shortest-path oracle.

``build_minigrid_video`` writes noisy-oracle rollouts as OGBench-layout ``.npz`` and ``clip`` shards.
"""

from .minigrid import FRAME_SIZE, TASKS, Layout, Task, get_task, make_env, render, reset, state_of
from .oracle import UNREACHABLE, Oracle
from .recordings import SPLITS, build_minigrid_video, episodes, layout_seed, save_npz, to_arrays
from .rollouts import Behaviour, Episode, Roller

__all__ = ["FRAME_SIZE", "SPLITS", "TASKS", "UNREACHABLE", "Behaviour", "Episode", "Layout", "Oracle", "Roller",
           "Task", "build_minigrid_video", "episodes", "get_task", "layout_seed", "make_env", "render", "reset",
           "save_npz", "state_of", "to_arrays"]
