"""The offline-RL evaluation recipe (typed): environment, data, agent, encoder arms, seeds, evaluation.

Recipes live in ``eval/offline_rl_*.yaml`` and are run by ``vispre eval RECIPE --encoder DIR``
(``kind: offline_rl`` selects this schema) or :func:`vispre.rl.run_offline_rl`. Defaults marked
"ours" are vispre's choices where the papers give none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..utils.typed_config import ConfigError, load_config, load_section
from . import bc, cql, gcbc, gciql, gcivl, hiql, hiql_ogbench, iql, online  # noqa: F401  (register the built-in agents)
from .agent import AgentConfig
from .registry import AGENTS

ARM_KINDS = ("scratch", "frozen", "finetune", "random_frozen")
ARCHITECTURES = ("nature", "impala_small", "export")


@dataclass
class EnvConfig:
    kind: str = "minigrid"  # minigrid (vispre.envs.minigrid, CPU) | ogbench (needs `pip install ogbench`)
    name: str = "simple_crossing"  # MiniGrid task, or the OGBench dataset name (visual-cube-single-play-v0)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra env constructor arguments
    # first layout / reset seed of the evaluation episodes: MiniGrid's "test" layouts (vispre.envs.datasets.
    # layout_seed("test", 0) = 2_000_000), disjoint from the train (0...) and val (1_000_000...) layouts
    eval_seed: int = 2_000_000
    # MiniGrid: evaluate on this many distinct layouts and drop every data trajectory on them (0: evaluation
    # seeds as they come, which may repeat training layouts: SimpleCrossingS9N1 has only 42)
    holdout_layouts: int = 0
    task_ids: list[int] = field(default_factory=list)  # OGBench goal tasks to evaluate (goal-conditioned)
    # OGBench pixels: default (OGBench's) | lean (no shadows / reflections / multisampling); '' = the dataset's
    # (its metadata; OGBench's own files: default). Evaluation must render as the data were rendered.
    render_quality: str = ""


@dataclass
class OfflineDataConfig:
    path: str = ""  # training .npz (OGBench layout); '' = generate it under output_dir with the MiniGrid generator
    val_path: str = ""  # '' = path with -val.npz
    compact: bool = True  # OGBench's compact reading (frames stay memory-mapped); False: regular (a copy)
    mmap: bool = True  # memory-map uncompressed members (np.savez); see cache_dir for compressed ones
    cache_dir: str = ""  # decompress compressed members here once, then memory-map them ('' = read into RAM)
    frame_stack: int = 1
    reward_scale: float = 1.0  # r <- scale * r + shift (shift -1: 0/1 success -> OGBench's -1/0)
    reward_shift: float = 0.0
    generate: dict[str, Any] = field(default_factory=dict)  # generator arguments when path is ''


@dataclass
class ArmConfig:
    name: str = ""  # label in tables and plots ('' = kind)
    kind: str = "scratch"  # scratch | frozen | finetune | random_frozen
    # export folder ('' = the --encoder argument), or timm:NAME for any timm model (e.g. timm:resnet18); unused by
    # scratch arms with a named architecture
    encoder: str = ""
    # scratch only: nature (small CNN, vispre's CPU choice) | impala_small (OGBench's encoder: each network its own,
    # reading [s; g]) | export (the encoder's architecture, random init). State observations need no encoder.
    architecture: str = "nature"
    pretrained: bool = True  # timm:NAME encoders: timm's pretrained weights (a download); false: random init
    encoder_lr: float = 0.0  # 0 = agent.lr (finetune often wants less)
    input_size: int = 0  # resize frames for the encoder (0 = as they are, unless it needs a fixed size)
    # pooled (timm's pooled feature) | grid (the whole last feature map / patch-token grid, flattened: where things
    # are, which pooling drops) | phi (an ICVF export's phi(s) on top of the backbone)
    features: str = "pooled"
    # an export's BatchNorm layers when fine-tuned: frozen (keep the pretrained running statistics, in training
    # too: see PixelEncoder.train) | train (update them from the RL batches)
    batch_norm: str = "frozen"


@dataclass
class RolloutConfig:
    episodes: int = 50  # final evaluation, per seed
    curve_points: int = 2  # intermediate evaluations (learning curve) besides the final one
    curve_episodes: int = 20
    policy: str = "sample"  # sample | epsilon | greedy (greedy loops in MiniGrid: evaluate sampled)
    epsilon: float = 0.05
    max_steps: int = 0  # 0 = the environment's own limit
    num_envs: int = 16  # episodes stepped together (batched encoder forward)
    workers: bool = False  # each of the num_envs environments in its own process (OGBench: MuJoCo steps in parallel)
    progress: bool = True  # a progress bar over the episodes
    val_batch: int = 1024
    random_reference: bool = True  # also score uniformly random actions on the same episodes (the table's context)


@dataclass
class OfflineRLConfig:
    kind: str = "offline_rl"
    name: str = "offline_rl"
    env: EnvConfig = field(default_factory=EnvConfig)
    data: OfflineDataConfig = field(default_factory=OfflineDataConfig)
    # typed by the registered config of agent.name (vispre.rl.registry; e.g. IQLConfig in rl/iql.py)
    agent: Any = field(default_factory=lambda: {"name": "iql"})
    arms: list[ArmConfig] = field(default_factory=lambda: [ArmConfig(kind="scratch"), ArmConfig(kind="frozen")])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eval: RolloutConfig = field(default_factory=RolloutConfig)
    output_dir: str = "runs/offline_rl"
    device: str = "auto"  # auto (cuda if available) | cpu | cuda
    threads: int = 0  # torch threads (0: torch's default)


def check(cfg: OfflineRLConfig, source: str = "recipe") -> OfflineRLConfig:
    if cfg.kind != "offline_rl":
        raise ConfigError(f"{source}: kind: expected 'offline_rl', got {cfg.kind!r}")
    cfg.agent = agent_config(cfg.agent, source)
    if not cfg.arms:
        raise ConfigError(f"{source}: arms: at least one arm is needed")
    names = set()
    for i, arm in enumerate(cfg.arms):
        if arm.kind not in ARM_KINDS:
            raise ConfigError(f"{source}: arms.{i}.kind: {arm.kind!r} is not one of {', '.join(ARM_KINDS)}")
        arm.name = arm.name or arm.kind
        if arm.features not in ("pooled", "grid", "phi"):
            raise ConfigError(f"{source}: arms.{i}.features: {arm.features!r} is not pooled, grid or phi")
        if arm.features == "grid" and arm.kind == "scratch" and arm.architecture != "export":
            raise ConfigError(f"{source}: arms.{i}.features: grid reads an export's (or a timm model's) feature map")
        if arm.batch_norm not in ("frozen", "train"):
            raise ConfigError(f"{source}: arms.{i}.batch_norm: {arm.batch_norm!r} is not frozen or train")
        if arm.kind == "scratch" and arm.architecture not in ARCHITECTURES:
            raise ConfigError(f"{source}: arms.{i}.architecture: {arm.architecture!r} is not one of "
                              f"{', '.join(ARCHITECTURES)}")
        if arm.features == "phi" and (arm.kind == "scratch" and arm.architecture != "export"
                                      or arm.encoder.startswith("timm:")):
            raise ConfigError(f"{source}: arms.{i}.features: phi needs an ICVF export")
        if arm.name in names:
            raise ConfigError(f"{source}: arms.{i}.name: {arm.name!r} used twice")
        names.add(arm.name)
    if cfg.eval.policy not in ("sample", "epsilon", "greedy"):
        raise ConfigError(f"{source}: eval.policy: {cfg.eval.policy!r} is not sample, epsilon or greedy")
    if cfg.env.kind not in ("minigrid", "ogbench"):
        raise ConfigError(f"{source}: env.kind: {cfg.env.kind!r} is not minigrid or ogbench")
    if cfg.data.frame_stack < 1:
        raise ConfigError(f"{source}: data.frame_stack: must be >= 1")
    return cfg


def load_offline_rl_config(path=None, overrides=()) -> OfflineRLConfig:
    return check(load_config(OfflineRLConfig, path, overrides), str(path or "OfflineRLConfig"))


def agent_config(values, source: str = "recipe") -> AgentConfig:
    """The ``agent:`` section typed by its agent's registered config (an unknown field names the agent)."""
    if isinstance(values, AgentConfig):
        return values
    name = dict(values).get("name", "iql")
    if name not in AGENTS:
        raise ConfigError(f"{source}: agent.name: {name!r} is not one of {', '.join(sorted(AGENTS))}")
    return load_section(AGENTS[name].config, values, f"{source}: agent")
