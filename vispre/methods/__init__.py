"""Pretraining objectives, one file each, one interface (``vispre.methods.base.Method``).

A method registers itself with its config dataclass (``@register("dino", config=DINOConfig)``); the
recipe's ``method:`` section is built from the registry (``method_config_schema``), and
``build_method(method_cfg, encoder)`` makes any registered method; ``ab`` wraps a base method.
"""

from __future__ import annotations

from .ab import AB, ABConfig
from .base import Method, SSLMethod, Step
from .classifier import Classifier, ClassifierConfig
from .clip import CLIP, CLIPConfig
from .dino import DINO, DINOConfig
from .icvf import ICVF, ICVFConfig
from .registry import CONFIGS, METHODS, config_of, method_config_schema, register
from .simclr import SimCLR, SimCLRConfig

MethodConfig = method_config_schema()  # the built-in methods; recipes rebuild it when they load


def build_method(cfg, encoder) -> Method:
    """The registered method ``cfg.name``, built from its section of the recipe's ``method:``."""
    if cfg.name not in METHODS:
        raise ValueError(f"method.name must be one of {sorted(METHODS)}, got {cfg.name!r}")
    return METHODS[cfg.name].from_config(cfg, encoder)


__all__ = ["AB", "ABConfig", "CLIP", "CLIPConfig", "CONFIGS", "Classifier", "ClassifierConfig", "DINO", "DINOConfig",
           "ICVF", "ICVFConfig", "METHODS", "Method", "MethodConfig", "SSLMethod", "SimCLR", "SimCLRConfig", "Step",
           "build_method", "config_of", "method_config_schema", "register"]
