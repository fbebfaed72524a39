"""Evaluation environments behind one small interface (see ``evaluate.rollouts``):

    reset(episode) -> (frame [H, W, C] uint8, goal frame or None)
    step(action)   -> (frame, done, success)

MiniGrid plugs into ``vispre.envs.minigrid`` (episode i = layout seed ``eval_seed + i``, the
environment's own start, its own time limit); OGBench needs the ``ogbench`` package.
"""

from __future__ import annotations

import functools

import numpy as np

from .rl_recipe import EnvConfig


class MiniGridEval:
    """Episode i: layout seed ``seeds[i]``, the environment's own start, its own time limit by default."""

    def __init__(self, task: str, seeds: list[int], max_steps: int = 0, goal_frames: bool = False):
        from ..envs import minigrid

        self.mg = minigrid
        self.task = minigrid.get_task(task)
        self.env = minigrid.make_env(self.task)
        self.seeds, self.goal_frames = seeds, goal_frames
        self.max_steps = max_steps or default_max_steps(self.task.env_id)
        self.t = 0

    def reset(self, episode: int):
        layout = self.mg.reset(self.env, self.seeds[episode])
        self.t = 0
        goal = self._goal_frame(layout) if self.goal_frames else None
        return self.mg.render(self.env, self.task), goal

    def _goal_frame(self, layout) -> np.ndarray:
        """The frame with the agent standing on the goal (heading 0), then the agent put back."""
        pos, heading = tuple(self.env.agent_pos), int(self.env.agent_dir)
        self.mg.place_agent(self.env, *layout.goal, 0)
        frame = self.mg.render(self.env, self.task)
        self.mg.place_agent(self.env, *pos, heading)
        return frame

    def step(self, action):
        _, reward, terminated, _, _ = self.env.step(int(action))
        self.t += 1
        success = bool(terminated and reward > 0)
        return self.mg.render(self.env, self.task), bool(terminated or self.t >= self.max_steps), success


class MiniGridLayouts:
    """Which layouts evaluation uses, and which data rows lie on them.

    A new reset seed is not a new layout (SimpleCrossingS9N1 has 42 distinct layouts), so with
    ``holdout`` > 0 evaluation uses the first ``holdout`` distinct layouts met from ``first_seed`` on (the
    same layouts ``vispre.envs.layouts.LayoutHoldout(eval=holdout)`` keeps out of a video), and ``keep_rows``
    drops every data trajectory on one of them: the evaluation layouts are then truly unseen. With
    ``holdout`` = 0 episodes use seeds first_seed, first_seed + 1, ... as they come."""

    def __init__(self, task: str, first_seed: int, episodes: int, holdout: int = 0):
        from ..envs import layouts

        self.task, self.layout_of = task, layouts.layout_of
        if holdout <= 0:
            self.seeds = list(range(first_seed, first_seed + episodes))
            self.held_out = set()
            return
        self.held_out = {layout for _, layout in layouts.distinct_layouts(task, first_seed, holdout)}
        self.seeds, seed = [], first_seed
        while len(self.seeds) < episodes:
            if self.layout(seed) in self.held_out:
                self.seeds.append(seed)
            seed += 1

    def layout(self, seed: int):
        return self.layout_of(self.task, int(seed))

    def keep_rows(self, layout_seeds: np.ndarray) -> np.ndarray:
        """Rows whose layout is not held out (per-row ``layout_seeds`` of a data file)."""
        unique, inverse = np.unique(np.asarray(layout_seeds), return_inverse=True)
        keep = np.array([self.layout(s) not in self.held_out for s in unique], bool)
        return keep[inverse]

    def seen_in(self, layout_seeds: np.ndarray) -> int:
        """How many evaluation episodes run on a layout that occurs in data with these ``layout_seeds``."""
        data = {self.layout(s) for s in np.unique(np.asarray(layout_seeds))}
        return sum(self.layout(s) in data for s in self.seeds)


@functools.cache
def default_max_steps(env_id: str) -> int:
    """The registered MiniGrid environment's own time limit (SimpleCrossingS9N1: 324 steps)."""
    import gymnasium as gym

    env = gym.make(env_id)
    steps = int(env.unwrapped.max_steps)
    env.close()
    return steps


def import_ogbench():
    try:
        import ogbench
    except ImportError as e:
        raise ImportError("env.kind 'ogbench' needs the ogbench package: pip install ogbench "
                          "(and MUJOCO_GL=egl for the visual tasks on a machine without a display)") from e
    return ogbench


class OGBenchEval:
    """An OGBench task env, OGBench's evaluation protocol: goal-conditioned datasets cycle through ``task_ids``
    (episode i is task ``task_ids[i % len(task_ids)]``, reset seed ``first_seed + i``; the goal observation, an
    image for visual tasks, is ``info["goal"]``), an episode ends at the goal (the task env terminates there) or
    at the env's time limit, and it succeeded if its final step did; single-task datasets
    (``...-singletask-taskN-v0``) have their task fixed. ``render_quality`` must be the dataset's (lean
    datasets made by ``vispre.envs.ogbench_data`` are rendered without shadows, reflections, multisampling)."""

    def __init__(self, dataset_name: str, first_seed: int, task_ids: list[int], max_steps: int = 0,
                 render_quality: str = "default", **kwargs):
        from ..envs.ogbench_data import apply_render_quality

        ogbench = import_ogbench()
        self.env = apply_render_quality(ogbench.make_env_and_datasets(dataset_name, env_only=True, **kwargs),
                                        render_quality or "default")
        self.singletask = "singletask" in dataset_name.split("-")
        self.first_seed, self.task_ids, self.max_steps = first_seed, task_ids or [1, 2, 3, 4, 5], max_steps
        self.t = 0

    def reset(self, episode: int):
        self.t = 0
        if self.singletask:
            obs, _ = self.env.reset(seed=self.first_seed + episode)
            return obs, None
        task_id = self.task_ids[episode % len(self.task_ids)]
        obs, info = self.env.reset(seed=self.first_seed + episode, options={"task_id": task_id})
        return obs, info["goal"]

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(np.asarray(action))
        self.t += 1
        limit = self.max_steps and self.t >= self.max_steps
        return obs, bool(terminated or truncated or limit), bool(info.get("success", False))

    def close(self):
        self.env.close()


def ogbench_task_labels(dataset_name: str, path) -> dict[str, np.ndarray]:
    """Per-row rewards and masks of an OGBench file for a ``...-singletask-taskN-v0`` dataset, computed by
    OGBench's own ``relabel_dataset`` from the file's ``qpos`` / ``button_states`` (the files carry no rewards)."""
    import_ogbench()
    from ogbench.relabel_utils import relabel_dataset

    from ..data.ogbench_npz import npz_keys, read_npz

    splits = dataset_name.split("-")
    if "singletask" not in splits:
        raise ValueError(f"{dataset_name} is not a single-task dataset name (...-singletask-taskN-v0)")
    pos = splits.index("singletask")
    env_name = "-".join(splits[: pos - 1] + splits[pos:])
    env = import_ogbench().make_env_and_datasets(dataset_name, env_only=True)
    info = read_npz(path, keys=[k for k in ("qpos", "button_states") if k in npz_keys(path)])
    relabel_dataset(env_name, env, info)
    env.close()
    return {"rewards": info["rewards"], "masks": info["masks"]}


def eval_env_factory(cfg: EnvConfig, max_steps: int, goal_conditioned: bool, seeds: list[int] | None = None):
    """A zero-argument constructor of one evaluation environment for ``rollouts`` (MiniGrid: ``seeds``
    from :class:`MiniGridLayouts`)."""
    if cfg.kind == "minigrid":
        return functools.partial(MiniGridEval, cfg.name, seeds, max_steps, goal_conditioned, **cfg.kwargs)
    return functools.partial(OGBenchEval, cfg.name, cfg.eval_seed, list(cfg.task_ids), max_steps,
                             cfg.render_quality, **cfg.kwargs)
