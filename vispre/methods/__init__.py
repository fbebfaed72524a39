"""Pretraining objectives, one file each, one interface: ``method(batch) -> (loss, metrics)``.

``build_method(MethodConfig, encoder)`` makes any of them; ``ab`` wraps a base method.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ab import AB, ABConfig
from .base import Method, SSLMethod
from .classifier import Classifier, ClassifierConfig
from .clip import CLIP, CLIPConfig
from .dino import DINO, DINOConfig
from .icvf import ICVF, ICVFConfig
from .registry import METHODS
from .simclr import SimCLR, SimCLRConfig


@dataclass
class MethodConfig:
    name: str = "dino"  # dino | simclr | clip | classifier | ab | icvf
    base: str = "dino"  # ab only: the base method that supplies p(l | x)
    augment: str = "dino"  # photometric preset applied on the device: dino | simclr | none
    dino: DINOConfig = field(default_factory=DINOConfig)
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    ab: ABConfig = field(default_factory=ABConfig)
    icvf: ICVFConfig = field(default_factory=ICVFConfig)


def build_method(cfg: MethodConfig, encoder) -> Method:
    if cfg.name == "ab":
        if cfg.base not in METHODS or cfg.base in ("ab", "icvf"):
            raise ValueError(f"method.base must be one of {sorted(set(METHODS) - {'ab', 'icvf'})}, got {cfg.base!r}")
        base_kwargs = {cfg.base: getattr(cfg, cfg.base), "augment": cfg.augment}
        return AB(METHODS[cfg.base], encoder, base_kwargs, cfg.ab)
    if cfg.name not in METHODS:
        raise ValueError(f"method.name must be one of {sorted(METHODS)}, got {cfg.name!r}")
    return METHODS[cfg.name](encoder, getattr(cfg, cfg.name), augment=cfg.augment)


__all__ = ["AB", "ABConfig", "CLIP", "CLIPConfig", "Classifier", "ClassifierConfig", "DINO", "DINOConfig", "ICVF",
           "ICVFConfig", "METHODS", "Method", "MethodConfig", "SSLMethod", "SimCLR", "SimCLRConfig", "build_method"]
