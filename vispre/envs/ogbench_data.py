"""OGBench-layout datasets made locally with OGBench's own manipulation environments and oracles.

OGBench's published datasets are downloads; this module regenerates datasets of the same layout with
the package's own environments (``cube-*``, ``scene``, ``puzzle-*``, state or ``visual-`` pixels) and
data-collecting oracles (``ogbench.manipspace.oracles``), following the protocol of OGBench's
``data_gen_scripts/generate_manipspace.py`` (read, not copied):

    play   the plan oracle (open loop along a pre-computed plan, smoothed action noise ``noise`` = 0.1,
           ``noise_smoothing`` = 0.5); a new target is set each time the oracle finishes one
    noisy  the closed-loop (Markov) oracle (``min_norm`` = 0.4) with Gaussian action noise of scale
           xi ~ U(0, noise) per episode on (x, y, z, yaw x3, gripper x10), and a uniformly random action
           with probability ``p_random_action`` (0.1 for cube and scene, 0.2 for puzzle)

Episodes last ``episode_steps`` (1001) steps, the environment never terminates at a goal
(``terminate_at_goal=False``, ``mode='data_collection'``); cube stacking probability per episode as
OGBench sets it (single 0, double U(0, .25), triple U(.05, .35), quadruple U(.1, .5)); scene episodes
whose cube leaves the visible area are redrawn. ``episodes`` training episodes and ``episodes // 10``
(at least one) validation episodes are written as ``NAME.npz`` and ``NAME-val.npz`` (``observations``, ``actions``,
``terminals`` = 1 on each episode's last step, ``qpos``, ``qvel``, ``button_states`` where the
environment has them), which ``ogbench.utils.load_dataset`` and ``vispre.data.ogbench_npz`` read.

Rendering (``render_quality``): ``default`` is OGBench's own (4096^2 shadow map, 4x multisampling,
reflections), about 165 ms per 64x64 frame on a CPU; ``lean`` turns shadows, multisampling and
reflections off (about 38 ms). Lean frames differ from the published ones: the quality is recorded in
the dataset's metadata (``NAME.json`` and a ``metadata`` member of the ``.npz``) and must be the one
the evaluation environment renders with (:func:`make_env`).

Generation is resumable: episodes are made in chunks, each written atomically under
``OUT/.parts/NAME/`` with its own seeds, so an interrupted run restarts at the first missing chunk and
the result does not depend on where it stopped (or on ``workers``).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ..utils.io import atomic_output, write_json

RENDER_QUALITIES = ("default", "lean")
DATASET_TYPES = ("play", "noisy")
FAMILIES = ("cube", "scene", "puzzle")


def import_ogbench():
    try:
        import ogbench
        import ogbench.manipspace  # noqa: F401  (registers the manipulation environments)
    except ImportError as e:
        raise ImportError("OGBench datasets need the ogbench package: pip install 'vispre[ogbench]' "
                          "(and MUJOCO_GL=egl for pixel observations on a machine without a display)") from e
    return ogbench


# ----- rendering ---------------------------------------------------------------------------------------------
def lean_model(model) -> None:
    """No shadows, no multisampling, no reflections (what costs a CPU renderer most)."""
    model.vis.quality.shadowsize = 0
    model.vis.quality.offsamples = 0
    model.mat_reflectance[:] = 0


def apply_render_quality(env, quality: str = "default"):
    """Make ``env`` (an OGBench MuJoCo env, wrapped or not) render at ``quality``; returns ``env``.

    The renderer is created lazily and recreated when the model is recompiled; the lean settings are
    applied to the model right before every renderer is made, so no frame (goal images included) is
    rendered at another quality."""
    if quality not in RENDER_QUALITIES:
        raise ValueError(f"render quality must be one of {', '.join(RENDER_QUALITIES)}, got {quality!r}")
    if quality == "default":
        return env
    base = env.unwrapped
    make_renderer = base._initialize_renderer

    def initialize_lean_renderer():
        lean_model(base._model)
        make_renderer()

    base._initialize_renderer = initialize_lean_renderer
    if getattr(base, "_renderer", None) is not None:  # already rendered once: start again, lean
        base._renderer.close()
        base._renderer = None
    return env


def make_env(env_name: str, render_quality: str = "default", **kwargs):
    """``gymnasium.make(env_name, **kwargs)`` for an OGBench environment, rendering at ``render_quality``."""
    import gymnasium

    import_ogbench()
    return apply_render_quality(gymnasium.make(env_name, **kwargs), render_quality)


# ----- the protocol ------------------------------------------------------------------------------------------
@dataclass
class DatasetSpec:
    """One dataset: the environment, the behaviour, its size and seeds (defaults: OGBench's protocol)."""

    env_name: str = "cube-single-v0"  # an OGBench manipulation env (visual-... for pixels)
    dataset_type: str = "play"  # play (plan oracle) | noisy (Markov oracle + Gaussian noise)
    episodes: int = 1000  # training episodes; validation: episodes // 10 more
    episode_steps: int = 1001
    noise: float = 0.1  # play: the plan oracle's action noise; noisy: the upper bound of xi
    noise_smoothing: float = 0.5  # play
    min_norm: float = 0.4  # noisy
    p_random_action: float = -1.0  # < 0: OGBench's (play 0; noisy 0.1, puzzle 0.2)
    seed: int = 0
    render_quality: str = "default"  # pixels only: default (OGBench's) | lean (no shadows / MSAA / reflections)
    width: int = 0  # pixels: 0 = the registered size (64)
    height: int = 0

    def __post_init__(self):
        if self.dataset_type not in DATASET_TYPES:
            raise ValueError(f"dataset_type must be play or noisy, got {self.dataset_type!r}")
        if self.render_quality not in RENDER_QUALITIES:
            raise ValueError(f"render_quality must be one of {', '.join(RENDER_QUALITIES)}")
        if self.family not in FAMILIES:
            raise ValueError(f"{self.env_name}: only OGBench's manipulation environments ({', '.join(FAMILIES)}) "
                             "have oracles in the package")
        if self.p_random_action < 0:
            self.p_random_action = 0.0 if self.dataset_type == "play" else (0.2 if self.family == "puzzle" else 0.1)

    @property
    def family(self) -> str:
        parts = self.env_name.split("-")
        return parts[1] if parts[0] == "visual" else parts[0]

    @property
    def pixels(self) -> bool:
        return self.env_name.startswith("visual-")

    @property
    def name(self) -> str:
        """The OGBench dataset name: cube-single-v0 + play -> cube-single-play-v0."""
        stem, version = self.env_name.rsplit("-", 1)
        return f"{stem}-{self.dataset_type}-{version}"

    @property
    def val_episodes(self) -> int:
        return max(1, self.episodes // 10)

    @property
    def total_episodes(self) -> int:
        return self.episodes + self.val_episodes


def spec_from_name(dataset: str, **kwargs) -> DatasetSpec:
    """``visual-cube-single-play-v0`` -> DatasetSpec(env_name='visual-cube-single-v0', dataset_type='play')."""
    parts = dataset.split("-")
    if len(parts) < 3 or parts[-2] not in DATASET_TYPES:
        raise ValueError(f"{dataset!r} is not an OGBench dataset name ENV-{{play,noisy}}-vN (e.g. cube-single-play-v0)")
    return DatasetSpec(env_name="-".join(parts[:-2] + parts[-1:]), dataset_type=parts[-2], **kwargs)


def _stack_probability(env_name: str, rng: np.random.Generator) -> float:
    for size, (low, high) in {"single": (0, 0), "double": (0, .25), "triple": (.05, .35), "quadruple": (.1, .5),
                              "octuple": (0, .35)}.items():
        if size in env_name:
            return float(rng.uniform(low, high)) if high > 0 else 0.0
    return 0.5


def _oracles(spec: DatasetSpec, env) -> dict:
    from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
    from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
    from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
    from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle
    from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
    from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
    from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

    markov = spec.dataset_type == "noisy"
    m = {"min_norm": spec.min_norm}
    p = {"noise": spec.noise, "noise_smoothing": spec.noise_smoothing}
    if spec.family == "cube":
        return {"cube": CubeMarkovOracle(env=env, **m) if markov else CubePlanOracle(env=env, **p)}
    if spec.family == "puzzle":
        return {"button": ButtonMarkovOracle(env=env, gripper_always_closed=True, **m) if markov
                else ButtonPlanOracle(env=env, gripper_always_closed=True, **p)}
    if markov:
        return {"cube": CubeMarkovOracle(env=env, max_step=100, **m), "button": ButtonMarkovOracle(env=env, **m),
                "drawer": DrawerMarkovOracle(env=env, **m), "window": WindowMarkovOracle(env=env, **m)}
    return {"cube": CubePlanOracle(env=env, **p), "button": ButtonPlanOracle(env=env, **p),
            "drawer": DrawerPlanOracle(env=env, **p), "window": WindowPlanOracle(env=env, **p)}


def _scene_healthy(qpos: np.ndarray) -> bool:
    """OGBench's scene check: the cube stays visible (not too far right, not far left outside the drawer)."""
    xyz = qpos[:, 14:17]
    too_far_left = (xyz[:, 1] <= -0.3) & ((xyz[:, 2] < 0.06) | (xyz[:, 2] > 0.08))
    return not ((xyz[:, 1] >= 0.29).any() or too_far_left.any())


def _env_kwargs(spec: DatasetSpec) -> dict:
    kwargs = {"terminate_at_goal": False, "mode": "data_collection", "max_episode_steps": spec.episode_steps}
    if spec.pixels and spec.width:
        kwargs.update(width=spec.width, height=spec.height or spec.width)
    return kwargs


def collect_chunk(spec: DatasetSpec, first: int, count: int, progress=None) -> dict[str, np.ndarray]:
    """Episodes ``first .. first + count - 1`` as OGBench's arrays plus ``episode_lengths``. Every episode
    draws from its own seeds (spec.seed, episode), so a chunk is the same whoever makes it, whenever."""
    env = make_env(spec.env_name, spec.render_quality, **_env_kwargs(spec))
    oracles = _oracles(spec, env)
    has_buttons = hasattr(env.unwrapped, "_cur_button_states")
    data: dict[str, list] = defaultdict(list)
    lengths = []
    for episode in range(first, first + count):
        attempt = 0
        while True:
            seeds = np.random.SeedSequence([spec.seed, episode, attempt])
            reset_seed, np_seed, space_seed = (int(s) for s in seeds.generate_state(3))
            np.random.seed(np_seed)  # OGBench's oracles draw from numpy's global generator
            env.action_space.seed(space_seed)
            rng = np.random.default_rng(np_seed)
            episode_data = _episode(spec, env, oracles, has_buttons, reset_seed, rng, progress)
            if spec.family != "scene" or _scene_healthy(np.asarray(episode_data["qpos"])):
                break
            attempt += 1
        for k, v in episode_data.items():
            data[k].extend(v)
        lengths.append(len(episode_data["actions"]))
    env.close()
    out = _as_arrays(data)
    out["episode_lengths"] = np.asarray(lengths, np.int64)
    return out


def _episode(spec, env, oracles, has_buttons, reset_seed, rng, progress) -> dict[str, list]:
    ob, info = env.reset(seed=reset_seed)
    p_stack = _stack_probability(spec.env_name, rng)
    xi = float(rng.uniform(0, spec.noise)) if spec.dataset_type == "noisy" else 0.0
    agent = oracles[info["privileged/target_task"]]
    agent.reset(ob, info)
    data: dict[str, list] = defaultdict(list)
    done = False
    while not done:
        if rng.random() < spec.p_random_action:
            action = env.action_space.sample()
        else:
            action = np.asarray(agent.select_action(ob, info))
            if spec.dataset_type == "noisy":
                action = action + rng.normal(0, [xi, xi, xi, xi * 3, xi * 10], action.shape)
        action = np.clip(action, -1, 1)
        next_ob, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        if agent.done:  # the oracle reached its target: give it a new one
            agent_ob, agent_info = env.unwrapped.set_new_target(p_stack=p_stack)
            agent = oracles[agent_info["privileged/target_task"]]
            agent.reset(agent_ob, agent_info)
        data["observations"].append(ob)
        data["actions"].append(action)
        data["terminals"].append(done)
        data["qpos"].append(info["prev_qpos"])
        data["qvel"].append(info["prev_qvel"])
        if has_buttons:
            data["button_states"].append(info["prev_button_states"])
        ob = next_ob
        if progress is not None:
            progress(1)
    return data


def _as_arrays(data: dict[str, list]) -> dict[str, np.ndarray]:
    """OGBench's dtypes: uint8 pixels (float32 states), bool terminals, int64 button states, float32 else."""
    out = {}
    for k, v in data.items():
        first = np.asarray(v[0])
        dtype = (np.uint8 if k == "observations" and first.dtype == np.uint8 else bool if k == "terminals"
                 else np.int64 if k == "button_states" else np.float32)
        out[k] = np.asarray(v, dtype=dtype)
    return out


# ----- the files ---------------------------------------------------------------------------------------------
@dataclass
class _Chunks:
    spec: DatasetSpec
    parts: Path
    size: int
    ranges: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self):
        total = self.spec.total_episodes
        self.ranges = [(s, min(self.size, total - s)) for s in range(0, total, self.size)]

    def path(self, i: int) -> Path:
        return self.parts / f"chunk_{i:05d}.npz"

    def missing(self) -> list[int]:
        return [i for i in range(len(self.ranges)) if not self.path(i).is_file()]


def _make_chunk(spec: DatasetSpec, first: int, count: int, path: str) -> int:
    """One chunk, in a worker process (each MuJoCo renderer in its own process)."""
    arrays = collect_chunk(spec, first, count)
    with atomic_output(path) as tmp:
        np.savez(tmp, **arrays)
    return int(arrays["episode_lengths"].sum())


def render_settings(spec: DatasetSpec) -> dict:
    if not spec.pixels:
        return {}
    if spec.render_quality == "lean":
        return {"shadowsize": 0, "offsamples": 0, "reflectance": 0}
    return {"shadowsize": "model default (4096)", "offsamples": "model default (4)", "reflectance": "model default"}


def generate(spec: DatasetSpec, out_dir: str | Path, chunk_episodes: int = 5, workers: int = 1,
             compress: bool = False, progress: bool = True) -> dict:
    """Make ``NAME.npz`` / ``NAME-val.npz`` / ``NAME.json`` under ``out_dir`` (reused when complete with the
    same spec); returns the metadata. ``compress``: ``np.savez_compressed`` as OGBench ships its files
    (smaller; vispre then needs a cache_dir to memory-map them), else stored members (memory-mapped as is)."""
    from ..utils.progress import progress as progress_bar

    import_ogbench()
    out_dir = Path(out_dir)
    train_path, val_path = out_dir / f"{spec.name}.npz", out_dir / f"{spec.name}-val.npz"
    meta_path = out_dir / f"{spec.name}.json"
    wanted = asdict(spec)
    if meta_path.is_file() and train_path.is_file() and val_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("spec") == wanted:
            return meta
    parts = out_dir / ".parts" / spec.name
    parts.mkdir(parents=True, exist_ok=True)
    spec_file = parts / "spec.json"
    if spec_file.is_file() and json.loads(spec_file.read_text()) != wanted:
        raise ValueError(f"{parts} holds chunks of another spec ({spec_file}); remove it or use another OUT")
    write_json(spec_file, wanted)
    chunks = _Chunks(spec, parts, max(1, chunk_episodes))
    todo = chunks.missing()
    started = time.perf_counter()
    total_steps = sum(chunks.ranges[i][1] for i in todo) * spec.episode_steps
    steps_done = 0
    with progress_bar(total=total_steps, desc=spec.name, unit="step", disable=not progress, smoothing=0.05) as bar:
        if workers <= 1:
            for i in todo:
                first, count = chunks.ranges[i]
                arrays = collect_chunk(spec, first, count, progress=bar.update)
                with atomic_output(chunks.path(i)) as tmp:
                    np.savez(tmp, **arrays)
                steps_done += int(arrays["episode_lengths"].sum())
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_make_chunk, spec, *chunks.ranges[i], str(chunks.path(i))) for i in todo]
                for f in futures:
                    n = f.result()
                    steps_done += n
                    bar.update(n)
    seconds = time.perf_counter() - started
    meta = _assemble(spec, chunks, train_path, val_path, compress)
    meta.update(spec=wanted, seconds=round(seconds, 1), steps_made=steps_done,
                steps_per_second=round(steps_done / seconds, 1) if steps_done and seconds > 0 else None,
                workers=workers)
    write_json(meta_path, meta)
    return meta


def _assemble(spec: DatasetSpec, chunks: _Chunks, train_path: Path, val_path: Path, compress: bool) -> dict:
    import mujoco

    ogbench = import_ogbench()
    loaded = [dict(np.load(chunks.path(i))) for i in range(len(chunks.ranges))]
    lengths = np.concatenate([c.pop("episode_lengths") for c in loaded])
    arrays = {k: np.concatenate([c[k] for c in loaded]) for k in loaded[0]}
    train_rows = int(lengths[: spec.episodes].sum())
    meta = {"format": "ogbench", "generator": "vispre.envs.ogbench_data", "dataset": spec.name,
            "env_name": spec.env_name, "dataset_type": spec.dataset_type, "observation": "pixels" if spec.pixels
            else "states", "render_quality": spec.render_quality if spec.pixels else None,
            "render": render_settings(spec), "train_episodes": spec.episodes, "val_episodes": spec.val_episodes,
            "train_rows": train_rows, "val_rows": int(lengths[spec.episodes:].sum()),
            "ogbench_version": _version("ogbench", ogbench), "mujoco_version": mujoco.__version__}
    save = np.savez_compressed if compress else np.savez
    for path, rows in ((train_path, slice(0, train_rows)), (val_path, slice(train_rows, None))):
        with atomic_output(path) as tmp:
            save(tmp, **{k: v[rows] for k, v in arrays.items()}, metadata=np.array(json.dumps(meta)))
    return meta


def _version(distribution: str, module) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return getattr(module, "__version__", "unknown")


def read_metadata(path: str | Path) -> dict:
    """The metadata a dataset made here carries ({} for OGBench's published files)."""
    with np.load(path, allow_pickle=False) as f:
        return json.loads(str(f["metadata"])) if "metadata" in f.files else {}
