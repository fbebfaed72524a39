"""A pretraining recipe: model, method, data, optimisation and run settings (typed).

Recipes are YAML files under ``recipes/``; every field below is a key, and ``key=value``
arguments override them (``vispre pretrain recipes/x.yaml optim.lr=1e-3 data.batch_size=32``).
Defaults marked "ours" are vispre's choices where the papers give no value.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Optional

from omegaconf import OmegaConf

from ..data import DataConfig
from ..methods import MethodConfig, method_config_schema
from ..utils.checks import Checks
from ..utils.typed_config import load_config, load_yaml


@dataclass
class ModelConfig:
    name: str = "vit_base_patch16_224"  # any timm model name (created without downloaded weights)
    kwargs: dict[str, Any] = field(default_factory=dict)  # timm.create_model kwargs: img_size, patch_size, ...
    init: Optional[str] = None  # initial encoder weights: a timm / open_clip / DINO / vispre checkpoint file
    # the encoder's key prefix in model.init (None: detected; see vispre.models.init_weights)
    init_prefix: Optional[str] = None


@dataclass
class OptimConfig:
    lr: float = 5e-4  # per 256 images with lr_scaling linear (DINO's rule), else the absolute lr
    lr_scaling: str = "linear"  # linear: lr x global batch / 256 | none: lr as given (the AB paper's Table 7)
    min_lr: float = 1e-6
    warmup_fraction: float = 0.1  # linear warm-up over this fraction of the steps, then cosine
    weight_decay: float = 0.04  # cosine to weight_decay_end (DINO)
    weight_decay_end: float = 0.4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8  # Adam's epsilon (the ICVF release on pixels: 3.125e-4)
    clip_grad: float = 3.0  # 0: off
    ema_momentum: float = 0.996  # target network; cosine to ema_momentum_end (DINO)
    ema_momentum_end: float = 1.0


@dataclass
class DDPConfig:
    """torch DistributedDataParallel options (through accelerate's DistributedDataParallelKwargs)."""

    find_unused_parameters: bool = False  # every method uses all its trainable parameters in each step
    # true: DDP records the graph once and can reorder / skip work (only if every step uses the same parameters)
    static_graph: bool = False
    gradient_as_bucket_view: bool = True  # gradients live in DDP's buckets: one copy less, less memory


@dataclass
class TrainConfig:
    steps: int = 100_000  # optimizer steps
    grad_accum: int = 1
    precision: str = "auto"  # auto (bf16 on GPUs that have it, else fp32) | no | bf16 | fp16
    seed: int = 0
    output_dir: str = "runs/pretrain"
    log_every: int = 20
    checkpoint_every_steps: int = 5000
    checkpoint_every_minutes: float = 30.0
    keep_checkpoints: int = 2
    diagnostics_every: int = 1000  # srank / RankMe on a fixed probe batch (0: off)
    probe_images: int = 256
    threads: int = 0  # torch threads per process (0: torch's default)
    # how long a collective (all-reduce, the checkpoint's gather, a barrier) waits for the other ranks before the
    # process group fails the run: raise it when a rank may stall longer (a slow shard, a large FSDP checkpoint)
    dist_timeout_minutes: float = 10.0
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    # a NaN / inf loss or gradient: skip that step (no optimizer or target update) or stop (exit 3). Ours
    nonfinite: str = "skip"  # skip | stop
    max_nonfinite_skips: int = 10  # more skips than this in a row stop the run (a diverged model, bad data)
    # -- the GPU path (README "GPU path"; vispre.pretrain.speed). Step metrics stay on the device between logs:
    # non-finite steps are skipped on the device and the stop rules above are checked at each log and before
    # each checkpoint, so log_every is also how often the host waits for the GPU
    compile: bool = False  # torch.compile the online and target encoders and AB's decoders (a graph per crop size)
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager: no code generation, for tests)
    compile_mode: Optional[str] = None  # torch.compile mode: None (default) | reduce-overhead | max-autotune
    # auto: fused AdamW where torch has the kernels for the device (CUDA, CPU); it also skips a non-finite
    # step on the device. false: torch's default (foreach); the host then reads each step's finite flag
    fused_adamw: str = "auto"  # auto | true | false
    channels_last: str = "auto"  # auto: NHWC weights for CNN encoders on CUDA (not ViTs) | true | false
    ddp: DDPConfig = field(default_factory=DDPConfig)  # DDP options (several processes)


@dataclass
class PretrainConfig:
    name: str = "pretrain"
    plugins: list[str] = field(default_factory=list)  # modules imported first (e.g. ones that register methods)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)  # typed by the methods registered at load time
    data: DataConfig = field(default_factory=DataConfig)
    # a second stream, read by methods that take two (AB: its annotation batch, for the paper's decoupled AB
    # or supervised-reward AB); None: AB draws its annotation batch from ``data`` too
    annotation_data: Optional[DataConfig] = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def recipe_schema(plugins=()) -> type:
    """PretrainConfig with the ``method:`` section of the methods registered now (after importing ``plugins``)."""
    for module in plugins:
        importlib.import_module(module)
    method = method_config_schema()
    return make_dataclass("PretrainConfig", [("method", method, field(default_factory=method))],
                          bases=(PretrainConfig,))


def _plugins(path: str | None, overrides) -> list[str]:
    found = list(load_yaml(path).get("plugins") or []) if path else []
    for item in overrides:
        if item.startswith("plugins="):
            found = list(OmegaConf.from_dotlist([item]).plugins or [])
    return found


def check_recipe(cfg: PretrainConfig) -> Checks:
    """Values, not just types: each problem names its field (``train.steps: must be >= 1, got 0``)."""
    from ..data.pipeline import check_data_config

    c = Checks()
    t = Checks("train")
    for name in ("steps", "grad_accum", "log_every", "checkpoint_every_steps", "probe_images"):
        t.at_least(name, getattr(cfg.train, name), 1)
    for name in ("keep_checkpoints", "diagnostics_every", "threads", "max_nonfinite_skips"):
        t.at_least(name, getattr(cfg.train, name), 0)
    t.above("checkpoint_every_minutes", cfg.train.checkpoint_every_minutes, 0)
    t.above("dist_timeout_minutes", cfg.train.dist_timeout_minutes, 0)
    t.one_of("precision", cfg.train.precision, ("auto", "no", "bf16", "fp16"))
    t.one_of("nonfinite", cfg.train.nonfinite, ("skip", "stop"))
    for name in ("fused_adamw", "channels_last"):  # YAML reads true / false as booleans: compare as text
        t.one_of(name, str(getattr(cfg.train, name)).lower(), ("auto", "true", "false"))
    o = Checks("optim")
    o.at_least("lr", cfg.optim.lr, 0)
    o.at_least("min_lr", cfg.optim.min_lr, 0)
    o.between("warmup_fraction", cfg.optim.warmup_fraction, 0, 1)
    o.at_least("weight_decay", cfg.optim.weight_decay, 0)
    o.at_least("weight_decay_end", cfg.optim.weight_decay_end, 0)
    if len(cfg.optim.betas) != 2:
        o.fail("betas", f"must be two values, got {list(cfg.optim.betas)}")
    for i, beta in enumerate(cfg.optim.betas):
        o.between(f"betas.{i}", beta, 0, 1)
    o.above("eps", cfg.optim.eps, 0)
    o.at_least("clip_grad", cfg.optim.clip_grad, 0)
    o.between("ema_momentum", cfg.optim.ema_momentum, 0, 1)
    o.between("ema_momentum_end", cfg.optim.ema_momentum_end, 0, 1)
    o.one_of("lr_scaling", cfg.optim.lr_scaling, ("linear", "none"))
    for part in (t, o, check_data_config(cfg.data, "data")):
        c.extend(part)
    for name in dict.fromkeys((cfg.method.name, getattr(cfg.method, "base", None))):
        # a method's own ranges (a probability, a count): its config class may define check_values(checks)
        section = getattr(cfg.method, name, None) if name else None
        if hasattr(section, "check_values"):
            m = Checks(f"method.{name}")
            section.check_values(m)
            c.extend(m)
    if cfg.annotation_data is not None:
        c.extend(check_data_config(cfg.annotation_data, "annotation_data"))
    return c


def load_recipe(path: str | None, overrides=()) -> PretrainConfig:
    cfg = load_config(recipe_schema(_plugins(path, overrides)), path, overrides)
    check_recipe(cfg).raise_if_any(str(path) if path else None)
    return cfg


def recipe_from_values(values: dict) -> PretrainConfig:
    """A resolved recipe read back (a checkpoint's or an export's), its plugins imported first."""
    return load_config(recipe_schema(values.get("plugins") or ()), **values)
