"""Pretraining: the recipe schema (``recipe``), the one accelerate loop (``loop``) and its atomic
checkpoints (``checkpoint``)."""

from .loop import Trainer, pretrain
from .recipe import PretrainConfig, load_recipe

__all__ = ["PretrainConfig", "Trainer", "load_recipe", "pretrain"]
