"""The offline-RL comparison: every arm x every seed trained on the same data, scored on the same
held-out episodes, then a table, JSON with the protocol, and learning curves.

Entry point: :func:`run_offline_rl` (``vispre eval eval/offline_rl_minigrid.yaml --encoder DIR``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..data.ogbench_npz import read_npz
from ..utils.device import resolve_device
from ..utils.io import write_atomic
from ..utils.progress import progress
from ..utils.typed_config import ConfigError, to_yaml
from .agent import to_torch
from .arms import FrozenFeatures, build_arm
from .eval_envs import MiniGridLayouts, eval_env_factory, ogbench_task_labels
from .evaluate import UniformPolicy, rollouts, value_error
from .networks import ActionSpace
from .registry import AGENTS
from .report import write_report
from .rl_recipe import OfflineRLConfig, load_offline_rl_config
from .transitions import Transitions

log = logging.getLogger(__name__)


def dataset_paths(cfg: OfflineRLConfig, out: Path) -> tuple[Path, Path]:
    """The train / val files; with no ``data.path``, the MiniGrid generator or, for OGBench, OGBench's own
    environments and oracles (``vispre.envs.ogbench_data``, arguments in ``data.generate``) write them under ``out``."""
    if cfg.data.path:
        train = Path(cfg.data.path).expanduser()
    elif cfg.env.kind == "minigrid":
        train = generate_minigrid(cfg.env.name, out / "data", **cfg.data.generate)
    elif cfg.data.generate:
        train = generate_ogbench(cfg.env.name, out / "data", dict(cfg.data.generate))
    else:
        raise ValueError("data.path: an OGBench recipe needs the dataset file (e.g. ~/.ogbench/data/NAME.npz) or "
                         "data.generate (e.g. {episodes: 100, render_quality: lean}) to make one here")
    val = Path(cfg.data.val_path).expanduser() if cfg.data.val_path else train.with_name(train.stem + "-val.npz")
    return train, val


def generate_minigrid(task: str, out_dir: Path, episodes: int = 1000, val_episodes: int = 100, kind: str = "noisy",
                      epsilons: tuple[float, ...] = (0.1, 0.3, 0.5, 1.0), max_steps: int = 100,
                      random_start: bool = True, seed: int = 0) -> Path:
    """Reward-labelled MiniGrid data from ``vispre.envs`` (reused when already built with these settings)."""
    from ..envs.recordings import build_minigrid_video
    from ..envs.rollouts import Behaviour

    behaviour = Behaviour(kind, tuple(epsilons), max_steps, random_start)
    info = build_minigrid_video(out_dir, task=task, episodes=episodes, val_episodes=val_episodes,
                                behaviour=behaviour, seed=seed, formats=("npz",))
    return Path(out_dir) / info["splits"]["train"]["npz"]


def generate_ogbench(dataset: str, out_dir: Path, generate: dict) -> Path:
    """An OGBench-layout dataset made with OGBench's environments and oracles (reused when complete)."""
    from ..envs.ogbench_data import generate as make
    from ..envs.ogbench_data import spec_from_name

    run = {k: generate.pop(k) for k in ("chunk_episodes", "workers", "compress") if k in generate}
    spec = spec_from_name(dataset, **generate)
    make(spec, out_dir, **run)
    return Path(out_dir) / f"{spec.name}.npz"


def resolve_render_quality(cfg: OfflineRLConfig, train_path: Path) -> str:
    """OGBench pixels: evaluation renders as the dataset was rendered (its metadata; OGBench's files: default)."""
    if cfg.env.kind != "ogbench":
        return cfg.env.render_quality
    from ..envs.ogbench_data import read_metadata

    made = read_metadata(train_path).get("render_quality") or "default"
    if cfg.env.render_quality and cfg.env.render_quality != made:
        raise ConfigError(f"env.render_quality: {cfg.env.render_quality!r}, but {train_path} was rendered at "
                          f"{made!r}: evaluation frames would differ from the training frames")
    return made


def per_task(cfg: OfflineRLConfig, success: list) -> dict[str, float]:
    """OGBench: the success rate of each evaluation task (episode i is task task_ids[i % len(task_ids)])."""
    if cfg.env.kind != "ogbench" or "singletask" in cfg.env.name.split("-"):
        return {}
    tasks = list(cfg.env.task_ids) or [1, 2, 3, 4, 5]
    by_task = {t: [s for i, s in enumerate(success) if tasks[i % len(tasks)] == t] for t in tasks}
    return {f"task{t}": float(np.mean(v)) for t, v in by_task.items() if v}


def action_space(data: Transitions) -> ActionSpace:
    if data.discrete:
        return ActionSpace(True, int(np.max(data.actions)) + 1)
    return ActionSpace(False, int(data.actions.shape[1]))


def load_data(cfg: OfflineRLConfig, train_path: Path, val_path: Path, keep_train=None,
              keep_val=None) -> tuple[Transitions, Transitions]:
    d = cfg.data
    cache_dir = Path(d.cache_dir).expanduser() if d.cache_dir else None
    kw = {"compact": d.compact, "mmap": d.mmap, "cache_dir": cache_dir}
    single_task = cfg.env.kind == "ogbench" and "singletask" in cfg.env.name.split("-")
    labels = (lambda p: ogbench_task_labels(cfg.env.name, p)) if single_task else (lambda p: None)
    train = Transitions.from_file(train_path, keep_rows=keep_train, labels=labels(train_path), **kw)
    val = Transitions.from_file(val_path, keep_rows=keep_val, labels=labels(val_path), **kw)
    if AGENTS[cfg.agent.name].uses_dataset_rewards:
        train, val = (x.with_rewards(d.reward_scale, d.reward_shift) for x in (train, val))
    return train, val


def _curve_steps(steps: int, points: int) -> list[int]:
    return sorted({round(steps * (i + 1) / (points + 1)) for i in range(points + 1)})


def train_one(cfg: OfflineRLConfig, arm, seed: int, data, space: ActionSpace, device, run_dir: Path,
              eval_seeds: list[int] | None = None) -> dict:
    """Train one agent; evaluate it at the curve steps (value error + rollouts); return its record."""
    a, e = cfg.agent, cfg.eval
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    agent = AGENTS[a.name](data.encoder, space, a, cfg.data.frame_stack).to(device)
    agent.configure(arm.encoder_lr, data.train_encoder, seed)
    make_env = eval_env_factory(cfg.env, e.max_steps, agent.goal_conditioned, eval_seeds)
    run_dir.mkdir(parents=True, exist_ok=True)
    curve, train_seconds, eval_seconds, sums, count = [], 0.0, 0.0, {}, 0
    checkpoints = _curve_steps(a.steps, e.curve_points)
    with open(run_dir / "metrics.jsonl", "w", buffering=1) as logf:
        t0 = time.perf_counter()
        for step in progress(range(1, a.steps + 1), desc=f"{arm.name} seed {seed}", unit="update"):
            rows = data.train.sample(a.batch_size, rng)
            metrics = agent.update(to_torch(agent.make_batch(data.train, rows, rng), device))
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if step % 100 == 0 or step in checkpoints:
                seconds = round(train_seconds + time.perf_counter() - t0, 2)
                logf.write(json.dumps({"step": step, "train_seconds": seconds,
                                       **{k: v / count for k, v in sums.items()}}) + "\n")
                sums, count = {}, 0
            if step not in checkpoints:
                continue
            train_seconds += time.perf_counter() - t0
            t1 = time.perf_counter()
            point = {"step": step, **value_error(agent, data.val, a.discount, device, batch_size=e.val_batch)}
            episodes = e.episodes if step == a.steps else e.curve_episodes
            if episodes > 0:
                result = rollouts(agent, make_env, episodes, device, e.policy, e.epsilon, e.num_envs,
                                  data.observe, seed=seed, workers=e.workers, progress=e.progress,
                                  desc=f"{arm.name} seed {seed} step {step}")
                point.update(success=float(np.mean(result["success"])), length=float(np.mean(result["length"])),
                             episodes=episodes, per_episode=result)
                if per_task(cfg, result["success"]):
                    point["success_per_task"] = per_task(cfg, result["success"])
            eval_seconds += time.perf_counter() - t1
            curve.append(point)
            logf.write(json.dumps({"step": step, "eval": {k: v for k, v in point.items() if k != "per_episode"}})
                       + "\n")
            log.info("%s seed %d step %d: %s", arm.name, seed, step,
                     {k: round(v, 3) for k, v in point.items() if isinstance(v, float)})
            t0 = time.perf_counter()
    return {"arm": arm.name, "seed": seed, "curve": curve, "final": curve[-1],
            "train_seconds": train_seconds, "eval_seconds": eval_seconds}


def run_offline_rl(cfg: OfflineRLConfig | str | Path, encoder_path: str | None = None, overrides=()) -> dict:
    """Run every arm x seed of an offline-RL recipe; write results.json, results.md and curves/*.png
    under ``cfg.output_dir``; return the results dict. ``encoder_path`` is the export used by arms that
    name none."""
    if not isinstance(cfg, OfflineRLConfig):
        cfg = load_offline_rl_config(cfg, overrides)
    check_exports(cfg, encoder_path)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", to_yaml(cfg))
    device = resolve_device(cfg.device)
    started = time.perf_counter()
    train_path, val_path = dataset_paths(cfg, out)
    cfg.env.render_quality = resolve_render_quality(cfg, train_path)
    eval_seeds, keep_train, keep_val, layouts = plan_layouts(cfg, train_path, val_path)
    train, val = load_data(cfg, train_path, val_path, keep_train, keep_val)
    space = action_space(train)
    runs = []
    for arm in cfg.arms:
        path = arm.encoder or encoder_path or ""
        key = run_key(cfg, arm, path, train_path)
        done = {seed: finished_record(out / "runs" / arm.name / f"seed{seed}", key) for seed in cfg.seeds}
        t0 = time.perf_counter()
        frozen = (FrozenFeatures(arm, path, train, val, device, cfg.data.frame_stack)
                  if arm.kind in ("frozen", "random_frozen") and not all(done.values()) else None)
        feature_seconds = time.perf_counter() - t0
        for seed in cfg.seeds:
            run_dir = out / "runs" / arm.name / f"seed{seed}"
            record = done[seed]
            if record is None:
                data = build_arm(arm, path, seed, train, val, cfg.data.frame_stack, frozen)
                record = train_one(cfg, arm, seed, data, space, device, run_dir, eval_seeds)
                record.update(encoder=path if uses_export(arm, path) else "",
                              feature_seconds=feature_seconds, key=key)
                write_atomic(run_dir / RECORD, json.dumps(record))
            else:
                log.info("%s seed %d: reusing the finished run in %s", arm.name, seed, run_dir)
            runs.append(record)
        del frozen
    reference = {}
    if cfg.eval.episodes > 0 and cfg.eval.random_reference:
        random_runs = rollouts(UniformPolicy(space), eval_env_factory(cfg.env, cfg.eval.max_steps, False, eval_seeds),
                               cfg.eval.episodes, "cpu", num_envs=cfg.eval.num_envs, seed=0,
                               workers=cfg.eval.workers, progress=cfg.eval.progress, desc="uniform random policy")
        reference = {"uniform_random_policy": {"success": float(np.mean(random_runs["success"])),
                                               "length": float(np.mean(random_runs["length"]))}}
    protocol = {"env": {"kind": cfg.env.kind, "name": cfg.env.name, "eval_seed": cfg.env.eval_seed, **layouts,
                        **({"render_quality": cfg.env.render_quality} if cfg.env.kind == "ogbench" else {})},
                "reference": reference,
                "dataset": {"train": str(train_path), "val": str(val_path), "transitions": len(train),
                            "observations": "states" if train.observations.ndim == 2 else "pixels",
                            "val_transitions": len(val), "frame_stack": cfg.data.frame_stack,
                            "reward_scale": cfg.data.reward_scale, "reward_shift": cfg.data.reward_shift},
                "agent": vars(cfg.agent), "arms": [vars(a) | {"encoder": a.encoder or encoder_path or ""}
                                                   for a in cfg.arms],
                "seeds": list(cfg.seeds), "eval": vars(cfg.eval), "action_space": vars(space),
                "device": str(device), "torch_threads": torch.get_num_threads(),
                "wall_seconds": time.perf_counter() - started}
    return write_report(out, cfg.name, protocol, runs)


RECORD = "record.json"


def check_exports(cfg: OfflineRLConfig, encoder_path: str | None) -> None:
    """Before any data is made or any arm trains: every arm that reads an export has one, and it is there."""
    for i, arm in enumerate(cfg.arms):
        path = arm.encoder or encoder_path or ""
        if arm.kind == "scratch" and arm.architecture in ("nature", "impala_small"):
            continue
        if path.startswith("timm:"):
            continue
        if not path:
            raise ConfigError(f"arms.{i}.encoder: arm {arm.name!r} ({arm.kind}) needs an exported encoder: "
                              "pass --encoder DIR or set the arm's encoder field")
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"arms.{i}.encoder: arm {arm.name!r}: {path} is not a vispre export "
                                    "(no config.json): make one with 'vispre export RUN DIR'")


def run_key(cfg: OfflineRLConfig, arm, encoder: str, train_path: Path) -> str:
    """What a finished (arm, seed) run depends on: a rerun reuses its record.json only if this is unchanged
    (an interrupted comparison resumes at the first unfinished run)."""
    def stamp(p: Path) -> list:
        return [str(p), p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else [str(p)]

    weights = stamp(Path(encoder) / "model.safetensors") if uses_export(arm, encoder) else ""
    arm_fields = dict(vars(arm))
    if arm.kind != "finetune":  # only a trained export's BatchNorm reads it: other arms' records stay valid
        arm_fields.pop("batch_norm", None)
    # how a run is shown or put in context (a progress bar, the random-policy reference) does not change it
    eval_fields = {k: v for k, v in vars(cfg.eval).items() if k not in ("progress", "random_reference")}
    parts = {"agent": vars(cfg.agent), "data": vars(cfg.data), "env": vars(cfg.env), "eval": eval_fields,
             "arm": arm_fields, "encoder": weights, "train": stamp(train_path)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def uses_export(arm, encoder: str) -> bool:
    return bool(encoder) and not (arm.kind == "scratch" and arm.architecture in ("nature", "impala_small"))


def finished_record(run_dir: Path, key: str) -> dict | None:
    try:
        record = json.loads((run_dir / RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return record if record.get("key") == key else None


def _layout_seeds(path: Path) -> np.ndarray | None:
    try:
        return np.asarray(read_npz(path, keys=["layout_seeds"])["layout_seeds"])
    except KeyError:
        return None


def plan_layouts(cfg: OfflineRLConfig, train_path: Path, val_path: Path):
    """MiniGrid: the evaluation layout seeds, the train / val rows to keep (None: all) and what the protocol
    records about them. Evaluation seeds that the data used are refused; evaluation *layouts* equal to a
    training layout are counted (or removed from the data with env.holdout_layouts)."""
    if cfg.env.kind != "minigrid":
        return None, None, None, {}
    episodes = max(cfg.eval.episodes, cfg.eval.curve_episodes)
    layouts = MiniGridLayouts(cfg.env.name, cfg.env.eval_seed, episodes, cfg.env.holdout_layouts)
    train_seeds, val_seeds = _layout_seeds(train_path), _layout_seeds(val_path)
    if train_seeds is None:
        log.warning("%s has no layout_seeds: cannot check that evaluation layouts are held out", train_path)
        return layouts.seeds, None, None, {"eval_layout_seeds": layouts.seeds}
    overlap = np.intersect1d(train_seeds, layouts.seeds)
    if len(overlap):
        raise ValueError(f"env.eval_seed: evaluation layouts {overlap[:5].tolist()}... are in the training data "
                         f"{train_path}; choose an eval_seed beyond its layout seeds")
    keep_train = keep_val = None
    if cfg.env.holdout_layouts > 0:
        keep_train = layouts.keep_rows(train_seeds)
        keep_val = layouts.keep_rows(val_seeds) if val_seeds is not None else None
        train_seeds = train_seeds[keep_train]
    info = {"eval_layout_seeds": layouts.seeds, "holdout_layouts": cfg.env.holdout_layouts,
            "distinct_eval_layouts": len({layouts.layout(s) for s in layouts.seeds}),
            "eval_episodes_on_a_training_layout": layouts.seen_in(train_seeds),
            "train_rows_dropped": 0 if keep_train is None else int((~keep_train).sum())}
    log.info("evaluation layouts: %s", {k: v for k, v in info.items() if k != "eval_layout_seeds"})
    return layouts.seeds, keep_train, keep_val, info
