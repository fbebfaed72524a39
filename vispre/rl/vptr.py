"""V-PTR stages 2-3 (Bhateja et al. 2023): multi-task CQL on prior tasks from the video-trained (ICVF)
encoder, then target-task fine-tuning from the stage-2 checkpoint with 90% prior / 10% target batches.

One training run is :func:`train_stages`: steps 1..stage2_steps draw only the prior sources (by their
weights), steps after ``stage2_steps`` draw ``target_ratio`` prior / the rest target (V-PTR's
``offline_finetuning_start`` and ``target_mixing_ratio``). It checkpoints every ``checkpoint_every``
steps and at the end of stage 2 (``vispre.rl.checkpoint``) and resumes from the newest checkpoint, so
stage 3 continues exactly from stage 2 whether it runs in the same process or later.

The comparison (:func:`run_vptr`, ``python -m vispre.rl.vptr RECIPE [key=value ...]``): arms x seeds,
success on the target task's held-out layouts. Arms: ``finetune`` (the ICVF export as both encoders'
initialisation: V-PTR), ``scratch`` (the same pipeline, a new encoder), ``multitask: false`` (target data
only, no stage 2).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils.io import write_atomic, write_json
from ..utils.typed_config import ConfigError, load_config, to_yaml
from . import cql  # noqa: F401  (registers the agent)
from .agent import to_torch
from .arms import build_arm
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, trim_metrics
from .eval_envs import MiniGridLayouts, eval_env_factory
from .evaluate import rollouts
from .networks import ActionSpace
from .rl_recipe import ArmConfig, EnvConfig, RolloutConfig, agent_config
from .task_data import DatasetMix, RewardConvention, TaskSource, sparse_task_rewards, stage_weights
from .transitions import Transitions

log = logging.getLogger(__name__)


@dataclass
class SourceConfig:
    name: str = ""
    path: str = ""  # OGBench-layout .npz ('' = generate with the MiniGrid generator from `generate`)
    task: int = 0  # task index (one-hot position / row of agent.task_embeddings)
    weight: float = 1.0  # mixing weight among the prior sources
    target: bool = False  # the target task's data (stage 3)
    instruction: str = ""  # the task's instruction (language conditioning: cql.instruction_embeddings)
    generate: dict[str, Any] = field(default_factory=dict)  # run.generate_minigrid arguments (task: ..., episodes: ...)


@dataclass
class VPTRArm:
    name: str = ""
    kind: str = "finetune"  # finetune (the export initialises both encoders) | scratch
    encoder: str = ""  # export folder ('' = the recipe's encoder)
    architecture: str = "nature"  # scratch: nature | export
    encoder_lr: float = 0.0
    input_size: int = 0
    features: str = "pooled"  # pooled | phi
    batch_norm: str = "frozen"  # an export's BatchNorm statistics: frozen | train (ArmConfig.batch_norm)
    multitask: bool = True  # False: target data only, all steps (no stage 2)


@dataclass
class VPTRConfig:
    kind: str = "vptr"
    name: str = "vptr"
    env: EnvConfig = field(default_factory=EnvConfig)  # the target task's evaluation environment
    sources: list[SourceConfig] = field(default_factory=list)
    agent: Any = field(default_factory=lambda: {"name": "cql"})
    reward: RewardConvention = field(default_factory=RewardConvention)
    encoder: str = ""  # the ICVF export (stage 1)
    # condition on the sources' instructions embedded by open_clip's text tower ("MODEL:PRETRAINED", e.g.
    # "ViT-B-32:openai"; needs open_clip_torch and its weights) instead of one-hot task ids ('' = one-hot)
    language: str = ""
    stage2_steps: int = 2000
    stage3_steps: int = 1000
    target_ratio: float = 0.9  # stage 3: prior share of a batch
    checkpoint_every: int = 500
    frame_stack: int = 1
    arms: list[VPTRArm] = field(default_factory=lambda: [
        VPTRArm(name="vptr"), VPTRArm(name="scratch", kind="scratch"),
        VPTRArm(name="target_only", kind="finetune", multitask=False)])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eval: RolloutConfig = field(default_factory=RolloutConfig)
    output_dir: str = "runs/vptr"
    device: str = "cpu"
    threads: int = 0


def check(cfg: VPTRConfig, source: str = "recipe") -> VPTRConfig:
    if cfg.kind != "vptr":
        raise ConfigError(f"{source}: kind: expected 'vptr', got {cfg.kind!r}")
    cfg.agent = agent_config(cfg.agent, source)
    if not any(s.target for s in cfg.sources) or all(s.target for s in cfg.sources):
        raise ConfigError(f"{source}: sources: need prior sources and at least one target source (target: true)")
    tasks = {s.task for s in cfg.sources}
    one_hot = cfg.agent.name == "cql" and not (cfg.agent.task_embeddings or cfg.language)
    if one_hot and max(tasks) >= cfg.agent.num_tasks:
        raise ConfigError(f"{source}: agent.num_tasks: {cfg.agent.num_tasks} one-hot slots for task ids "
                          f"{sorted(tasks)}")
    for i, arm in enumerate(cfg.arms):
        if arm.kind not in ("finetune", "scratch"):
            raise ConfigError(f"{source}: arms.{i}.kind: {arm.kind!r} is not finetune or scratch")
        arm.name = arm.name or arm.kind
    return cfg


def load_vptr_config(path=None, overrides=()) -> VPTRConfig:
    return check(load_config(VPTRConfig, path, overrides), str(path or "VPTRConfig"))


# -- data ----------------------------------------------------------------------------------------------------
def load_sources(cfg: VPTRConfig, out: Path, discount: float) -> tuple[list[TaskSource], list[TaskSource]]:
    """(prior sources, target sources) with V-PTR's rewards and Monte-Carlo returns."""
    from .run import _layout_seeds, generate_minigrid

    holdout = None
    if cfg.env.kind == "minigrid" and cfg.env.holdout_layouts > 0:
        holdout = MiniGridLayouts(cfg.env.name, cfg.env.eval_seed, cfg.eval.episodes, cfg.env.holdout_layouts)
    prior, target = [], []
    for i, s in enumerate(cfg.sources):
        name = s.name or f"source{i}"
        task = dict(s.generate).get("task", cfg.env.name)
        if s.path:
            path = Path(s.path).expanduser()
        else:
            gen = dict(s.generate)
            gen.pop("task", None)
            path = generate_minigrid(task, out / "data" / name, **gen)
        keep = None  # the evaluation task's data: trajectories on the held-out evaluation layouts dropped
        seeds = _layout_seeds(path) if holdout is not None and task == cfg.env.name else None
        if seeds is not None:
            keep = holdout.keep_rows(seeds)
        data, mc = sparse_task_rewards(Transitions.from_file(path, keep_rows=keep), cfg.reward, discount)
        (target if s.target else prior).append(TaskSource(name, data, mc, s.task))
    return prior, target


def task_embeddings(cfg: VPTRConfig, out: Path) -> Path:
    """Row t: the open_clip text embedding of task t's instruction (cfg.language = "MODEL:PRETRAINED")."""
    from .cql import instruction_embeddings

    by_task = {}
    for s in cfg.sources:
        if not s.instruction:
            raise ConfigError(f"language: source {s.name!r} has no instruction")
        by_task.setdefault(s.task, s.instruction)
    if sorted(by_task) != list(range(len(by_task))):
        raise ConfigError(f"language: task ids must be 0..{len(by_task) - 1}, got {sorted(by_task)}")
    model, _, pretrained = cfg.language.partition(":")
    path = out / "task_embeddings.npy"
    instruction_embeddings([by_task[t] for t in range(len(by_task))], model, pretrained or "openai", path)
    return path


def action_space(sources: list[TaskSource]) -> ActionSpace:
    data = sources[0].data
    if data.discrete:
        return ActionSpace(True, int(max(np.max(s.data.actions) for s in sources)) + 1)
    return ActionSpace(False, int(data.actions.shape[1]))


def make_mix(prior: list[TaskSource], target: list[TaskSource], multitask: bool) -> DatasetMix:
    """Prior then target sources (multitask), or the target sources alone; weights are set per step."""
    sources = prior + target if multitask else target
    return DatasetMix(sources, [1.0] * len(sources))


def mix_weights(step: int, prior_weights: list[float], num_target: int, stage2_steps: int, target_ratio: float,
                multitask: bool) -> list[float]:
    """The weights the batch of ``step`` (1-based) is drawn with."""
    if not multitask:
        return [1.0] * num_target
    return stage_weights(step - 1, prior_weights, num_target, stage2_steps, target_ratio)


# -- one run -------------------------------------------------------------------------------------------------
def train_stages(agent, mix: DatasetMix, rng: np.random.Generator, out_dir: Path, steps: int, weights_at,
                 batch_size: int, frame_stack: int = 1, checkpoint_every: int = 0, stage2_steps: int = 0,
                 stop_at: int | None = None, device="cpu", log_every: int = 100) -> dict:
    """Train ``agent`` (configured) to ``steps``, resuming from ``out_dir``'s newest checkpoint.

    ``weights_at(step)``: the mix of that step's batch. Checkpoints every ``checkpoint_every`` steps, at
    ``stage2_steps`` (the stage-2 checkpoint) and at the end; ``stop_at``: return after that step (an
    interruption, for tests). Returns {"step", "rng", "metrics"}."""
    step = 0
    out_dir.mkdir(parents=True, exist_ok=True)
    found = latest_checkpoint(out_dir)
    if found is not None:
        restored = load_checkpoint(found, agent)
        step, rng = restored["step"], restored["rng"]
        trim_metrics(out_dir / "metrics.jsonl", step)
        log.info("resumed from %s (step %d)", found, step)
    metrics_file = out_dir / "metrics.jsonl"
    sums, count, last = {}, 0, {}
    with open(metrics_file, "a", buffering=1) as logf:
        while step < steps:
            step += 1
            mix.set_weights(weights_at(step))
            batch = mix.sample(batch_size, rng, frame_stack)
            for k, v in agent.update(to_torch(batch, device)).items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if step % log_every == 0 or step == steps:
                last = {k: v / count for k, v in sums.items()}
                logf.write(json.dumps({"step": step, "weights": mix.weights, **last}) + "\n")
                sums, count = {}, 0
            if step == steps or step == stage2_steps or (checkpoint_every and step % checkpoint_every == 0):
                save_checkpoint(out_dir, step, agent, rng, {"weights": mix.weights}, keep=2,
                                pin=step == stage2_steps)
            if stop_at is not None and step >= stop_at:
                break
    return {"step": step, "rng": rng, "metrics": last}


def build_agent(cfg: VPTRConfig, arm: VPTRArm, seed: int, sample: Transitions, space: ActionSpace, device):
    from .registry import AGENTS

    arm_cfg = ArmConfig(name=arm.name, kind=arm.kind, encoder=arm.encoder or cfg.encoder,
                        architecture=arm.architecture, encoder_lr=arm.encoder_lr, input_size=arm.input_size,
                        features=arm.features, batch_norm=arm.batch_norm)
    data = build_arm(arm_cfg, arm_cfg.encoder, seed, sample, sample, cfg.frame_stack)
    agent = AGENTS[cfg.agent.name](data.encoder, space, cfg.agent, cfg.frame_stack).to(device)
    return agent.configure(arm.encoder_lr, True, seed)


def run_vptr(cfg: VPTRConfig | str | Path, overrides=()) -> dict:
    """Every arm x seed: train (resuming), evaluate on the target task, write results.json / results.md."""
    if not isinstance(cfg, VPTRConfig):
        cfg = load_vptr_config(cfg, overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", to_yaml(cfg))
    prior, target = load_sources(cfg, out, cfg.agent.discount)
    if cfg.language and not cfg.agent.task_embeddings:
        cfg.agent.task_embeddings = str(task_embeddings(cfg, out))
    space = action_space(prior + target)
    prior_w = [s.weight for s in cfg.sources if not s.target]
    target_task = target[0].task
    steps = cfg.stage2_steps + cfg.stage3_steps
    make_env = None
    if cfg.eval.episodes > 0 and cfg.env.kind == "minigrid":
        layouts = MiniGridLayouts(cfg.env.name, cfg.env.eval_seed, cfg.eval.episodes, cfg.env.holdout_layouts)
        make_env = eval_env_factory(cfg.env, cfg.eval.max_steps, False, layouts.seeds)
    elif cfg.eval.episodes > 0:
        make_env = eval_env_factory(cfg.env, cfg.eval.max_steps, False)
    runs = []
    for arm in cfg.arms:
        for seed in cfg.seeds:
            run_dir = out / "runs" / arm.name / f"seed{seed}"
            record_file = run_dir / "record.json"
            if record_file.is_file():
                runs.append(json.loads(record_file.read_text()))
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(seed)
            agent = build_agent(cfg, arm, seed, (prior + target)[0].data, space, cfg.device)
            mix = make_mix(prior, target, arm.multitask)
            t0 = time.perf_counter()
            result = train_stages(
                agent, mix, np.random.default_rng(seed), run_dir, steps,
                lambda step, multitask=arm.multitask: mix_weights(step, prior_w, len(target), cfg.stage2_steps,
                                                                  cfg.target_ratio, multitask),
                cfg.agent.batch_size, cfg.frame_stack, cfg.checkpoint_every,
                cfg.stage2_steps if arm.multitask else 0, device=cfg.device)
            agent.eval_task = target_task
            record = {"arm": arm.name, "seed": seed, "success": float("nan"), "length": float("nan"),
                      "episodes": 0, "train_seconds": time.perf_counter() - t0, "final_metrics": result["metrics"]}
            if make_env is not None:  # no environment (Bridge-style data): offline metrics only
                ev = rollouts(agent, make_env, cfg.eval.episodes, cfg.device, cfg.eval.policy, cfg.eval.epsilon,
                              cfg.eval.num_envs, seed=seed)
                record.update(success=float(np.mean(ev["success"])), length=float(np.mean(ev["length"])),
                              episodes=cfg.eval.episodes)
            write_json(record_file, record)
            log.info("%s seed %d: target success %.3f", arm.name, seed, record["success"])
            runs.append(record)
    return write_results(out, cfg, runs)


def write_results(out: Path, cfg: VPTRConfig, runs: list[dict]) -> dict:
    table = {}
    for r in runs:
        table.setdefault(r["arm"], []).append(r["success"])
    rows = ["| arm | target success (mean ± std) | per seed |", "|---|---|---|"]
    for arm, vals in table.items():
        rows.append(f"| {arm} | {np.mean(vals):.3f} ± {np.std(vals):.3f} | {', '.join(f'{v:.2f}' for v in vals)} |")
    results = {"name": cfg.name, "runs": runs, "summary": {a: {"mean": float(np.mean(v)), "std": float(np.std(v)),
                                                               "n": len(v)} for a, v in table.items()}}
    write_json(out / "results.json", results)
    write_atomic(out / "results.md", "\n".join(rows) + "\n")
    return results


if __name__ == "__main__":  # python -m vispre.rl.vptr RECIPE [key=value ...]
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run_vptr(sys.argv[1], sys.argv[2:])["summary"], indent=1))
