"""The ViVa comparison (``python -m vispre.rl.viva_run RECIPE [key=value ...]``): one sparse-reward MiniGrid
goal-reaching task learnt online (DQN, RLPD-style 50/50 offline / online batches), with the reward shaped
by the fine-tuned video value, unshaped, or shaped by a randomly initialised value of the same
architecture; seeds x arms; success and return curves against environment steps (results.json,
results.md, curves.png).

Stage 1 (ICVF on video, monolithic head) is ``vispre train`` + ``vispre export``; this runner fine-tunes
that export's whole value function on ``value_sources`` (video and environment trajectories) once, then
freezes it (``vispre.rl.viva``).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils.io import atomic_output, write_atomic, write_json
from ..utils.typed_config import ConfigError, load_config, to_yaml
from . import online  # noqa: F401  (registers dqn / sac)
from .checkpoint import list_checkpoints
from .encoders import NatureCNN, PixelEncoder
from .networks import ActionSpace
from .online import OnlineConfig, run_online
from .registry import AGENTS
from .rl_recipe import agent_config
from .transitions import Transitions
from .viva import FrozenValue, MiniGridGoalTask, ValueFinetuneConfig, ValueShaper, finetune_value, summarise
from .vptr import SourceConfig

log = logging.getLogger(__name__)


@dataclass
class GoalTaskConfig:
    task: str = "simple_crossing"  # vispre.envs.minigrid task
    layout_seed: int = 0  # the one layout the online task uses
    max_steps: int = 100
    random_start: bool = False


@dataclass
class ShapingConfig:
    coefficient: float = 0.01  # c
    form: str = "value"  # value: r + c V(s', g, g) | potential: r + c (gamma V(s', g, g) - V(s, g, g))


@dataclass
class ViVaArm:
    name: str = ""
    value: str = "export"  # export (the fine-tuned video value) | none (unshaped) | random (random weights)


@dataclass
class ViVaConfig:
    kind: str = "viva"
    name: str = "viva"
    env: GoalTaskConfig = field(default_factory=GoalTaskConfig)
    encoder: str = ""  # the ICVF export with the whole value function (value.json; ViVa: monolithic head)
    value_finetune: ValueFinetuneConfig = field(default_factory=ValueFinetuneConfig)
    value_sources: list[SourceConfig] = field(default_factory=list)  # video / env data for the fine-tuning
    offline: SourceConfig = field(default_factory=SourceConfig)  # RLPD's prior data ('' path + {} generate: none)
    agent: Any = field(default_factory=lambda: {"name": "dqn"})
    online: OnlineConfig = field(default_factory=OnlineConfig)
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    arms: list[ViVaArm] = field(default_factory=lambda: [ViVaArm("shaped", "export"), ViVaArm("unshaped", "none"),
                                                         ViVaArm("random_value", "random")])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    output_dir: str = "runs/viva"
    device: str = "cpu"
    threads: int = 0


def check(cfg: ViVaConfig, source: str = "recipe") -> ViVaConfig:
    if cfg.kind != "viva":
        raise ConfigError(f"{source}: kind: expected 'viva', got {cfg.kind!r}")
    cfg.agent = agent_config(cfg.agent, source)
    if cfg.shaping.form not in ValueShaper.FORMS:
        raise ConfigError(f"{source}: shaping.form: {cfg.shaping.form!r} is not one of {ValueShaper.FORMS}")
    for i, arm in enumerate(cfg.arms):
        if arm.value not in ("export", "none", "random"):
            raise ConfigError(f"{source}: arms.{i}.value: {arm.value!r} is not export, none or random")
        if arm.value != "none" and not cfg.encoder:
            raise ConfigError(f"{source}: encoder: arm {arm.name or arm.value!r} needs the ICVF export")
        arm.name = arm.name or arm.value
    return cfg


def load_viva_config(path=None, overrides=()) -> ViVaConfig:
    return check(load_config(ViVaConfig, path, overrides), str(path or "ViVaConfig"))


def source_path(s: SourceConfig, out: Path, default_task: str) -> Path | None:
    from .run import generate_minigrid

    if s.path:
        return Path(s.path).expanduser()
    if not s.generate:
        return None
    gen = dict(s.generate)
    return generate_minigrid(gen.pop("task", default_task), out / "data" / (s.name or "offline"), **gen)


def value_export(cfg: ViVaConfig, out: Path) -> Path:
    """The value the shaped arm uses: the export fine-tuned on ``value_sources`` (done once, reused), or the
    export itself when ``value_finetune.steps`` is 0."""
    if cfg.value_finetune.steps <= 0:
        return Path(cfg.encoder)
    tuned = out / "value_finetuned"
    if (tuned / "viva_finetune.json").is_file():
        return tuned
    paths = [str(source_path(s, out, cfg.env.task)) for s in cfg.value_sources]
    ft = ValueFinetuneConfig(**{**vars(cfg.value_finetune), "sources": paths or cfg.value_finetune.sources,
                                "weights": [s.weight for s in cfg.value_sources] or cfg.value_finetune.weights})
    t0 = time.perf_counter()
    finetune_value(cfg.encoder, tuned, ft, device=cfg.device)
    log.info("value fine-tuned in %.0f s -> %s", time.perf_counter() - t0, tuned)
    return tuned


def make_agent(cfg: ViVaConfig, seed: int, frame_shape: tuple, space: ActionSpace):
    torch.manual_seed(seed)
    encoder = PixelEncoder(NatureCNN(frame_shape[-1], image_size=frame_shape[0]))
    return AGENTS[cfg.agent.name](encoder, space, cfg.agent).to(cfg.device).configure(seed=seed)


def run_viva(cfg: ViVaConfig | str | Path, overrides=()) -> dict:
    if not isinstance(cfg, ViVaConfig):
        cfg = load_viva_config(cfg, overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", to_yaml(cfg))
    e = cfg.env

    def make_env():
        return MiniGridGoalTask(e.task, e.layout_seed, e.max_steps, e.random_start)

    env = make_env()
    goal, frame = env.goal_frame(), env.reset(0)
    write_json(out / "task.json", {"layout_goal": list(env.layout.goal), "task": e.task, "layout_seed": e.layout_seed})
    space = ActionSpace(True, max(env.task.actions) + 1)
    offline_path = source_path(cfg.offline, out, e.task)
    offline = Transitions.from_file(offline_path) if offline_path else None
    tuned = value_export(cfg, out) if any(a.value == "export" for a in cfg.arms) else None
    curves, records = {}, []
    for arm in cfg.arms:
        for seed in cfg.seeds:
            run_dir = out / "runs" / arm.name / f"seed{seed}"
            record_file = run_dir / "record.json"
            if record_file.is_file():
                record = json.loads(record_file.read_text())
            else:
                shaper = None
                if arm.value != "none":
                    torch.manual_seed(10_000 + seed)  # the random value's draw
                    value = FrozenValue(tuned if arm.value == "export" else cfg.encoder,
                                        random_init=arm.value == "random")
                    shaper = ValueShaper(value, goal, cfg.shaping.coefficient, cfg.shaping.form,
                                         cfg.agent.discount, cfg.device)
                agent = make_agent(cfg, seed, frame.shape, space)
                t0 = time.perf_counter()
                result = run_online(agent, make_env, cfg.online, run_dir, seed, offline, shaper, cfg.device)
                firsts = [ep["env_step"] for ep in result["episodes"] if ep["success"]]
                record = {"arm": arm.name, "seed": seed, "curve": result["curve"],
                          "first_success_env_step": firsts[0] if firsts else None,
                          "train_episodes": len(result["episodes"]),
                          "train_success_rate": float(np.mean([ep["success"] for ep in result["episodes"]]))
                          if result["episodes"] else 0.0, "seconds": time.perf_counter() - t0}
                write_json(record_file, record)
                for done in list_checkpoints(run_dir):  # a finished run needs no resume point (replay frames: GBs)
                    shutil.rmtree(done)
            log.info("%s seed %d: final success %.2f", arm.name, seed, record["curve"][-1]["success"])
            curves.setdefault(arm.name, []).append(record["curve"])
            records.append(record)
    summary = summarise(curves)
    results = {"name": cfg.name, "runs": records, "summary": summary, "shaping": vars(cfg.shaping),
               "value": str(tuned) if tuned else "", "offline": str(offline_path) if offline_path else ""}
    write_json(out / "results.json", results)
    rows = ["| arm | final greedy success | final greedy return | training episodes' success | "
            "first success (env step, per seed) |", "|---|---|---|---|---|"]
    for arm, s in summary.items():
        mine = [r for r in records if r["arm"] == arm]
        rate = [r["train_success_rate"] for r in mine]
        rows.append(f"| {arm} | {s['success_mean'][-1]:.2f} ± {s['success_std'][-1]:.2f} | "
                    f"{s['return_mean'][-1]:.2f} ± {s['return_std'][-1]:.2f} | "
                    f"{np.mean(rate):.3f} ± {np.std(rate):.3f} | {[r['first_success_env_step'] for r in mine]} |")
    write_atomic(out / "results.md", "\n".join(rows) + "\n")
    plot_curves(summary, out / "curves.png", cfg.name)
    return results


def plot_curves(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("success", "greedy success"), ("return", "greedy return"),
              ("train_success", "training episodes' success (last 20)")]
    panels = [p for p in panels if all(f"{p[0]}_mean" in s for s in summary.values())]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for arm, s in summary.items():
        x = np.array(s["env_step"])
        for ax, (key, label) in zip(axes, panels):
            m, sd = np.array(s[f"{key}_mean"]), np.array(s[f"{key}_std"])
            ax.plot(x, m, label=arm)
            ax.fill_between(x, m - sd, m + sd, alpha=0.2)
            ax.set_xlabel("environment steps")
            ax.set_ylabel(label)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run_viva(sys.argv[1], sys.argv[2:])["summary"], indent=1))
