"""A pretraining recipe: model, method, data, optimisation and run settings (typed).

Recipes are YAML files under ``recipes/``; every field below is a key, and ``key=value``
arguments override them (``vispre pretrain recipes/x.yaml optim.lr=1e-3 data.batch_size=32``).
Defaults marked "ours" are vispre's choices where the papers give no value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..data import DataConfig
from ..methods import MethodConfig
from ..utils.typed_config import load_config


@dataclass
class ModelConfig:
    name: str = "vit_base_patch16_224"  # any timm model name (created without downloaded weights)
    kwargs: dict[str, Any] = field(default_factory=dict)  # timm.create_model kwargs: img_size, patch_size, ...
    init: Optional[str] = None  # initial encoder weights: a timm / open_clip / DINO / vispre checkpoint file
    # the encoder's key prefix in model.init (None: detected; see vispre.models.init_weights)
    init_prefix: Optional[str] = None


@dataclass
class OptimConfig:
    lr: float = 5e-4  # per 256 images; scaled by the global batch / 256 (DINO's rule)
    min_lr: float = 1e-6
    warmup_fraction: float = 0.1  # linear warm-up over this fraction of the steps, then cosine
    weight_decay: float = 0.04  # cosine to weight_decay_end (DINO)
    weight_decay_end: float = 0.4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    clip_grad: float = 3.0  # 0: off
    ema_momentum: float = 0.996  # target network; cosine to ema_momentum_end (DINO)
    ema_momentum_end: float = 1.0


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
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class PretrainConfig:
    name: str = "pretrain"
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    curated: Optional[DataConfig] = None  # labelled curated data (method classifier / curated-reward AB)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_recipe(path: str | None, overrides=()) -> PretrainConfig:
    return load_config(PretrainConfig, path, overrides)
