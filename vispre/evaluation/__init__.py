"""Scoring frozen encoders: cached features, probe grids (DINOv2's linear grid, big_vision's MAP head,
the decoder probe of Beyer et al. 2023) trained in one pass, DINO's kNN, few-shot, plots, comparisons.

Entry point: ``vispre eval eval/RECIPE.yaml --encoder EXPORT_DIR`` (vispre.commands.eval), or
``evaluate(load_config(ProbeRecipe, recipe), encoder, out_dir)`` from Python.
"""

from .features import Features, cached_features, extract
from .knn import knn_eval, knn_votes
from .linear import LinearHeads, Variant, linear_probe, train_grid, train_single_head
from .probe_recipe import (
    DecoderConfig,
    FeatureConfig,
    FewshotConfig,
    KnnConfig,
    LinearConfig,
    MapConfig,
    ProbeRecipe,
    ProbeSetConfig,
    TransformConfig,
)
from .run import evaluate
from .token_probe import token_probe
from .transform import EvalTransform

__all__ = ["ProbeRecipe", "ProbeSetConfig", "TransformConfig", "FeatureConfig", "LinearConfig", "MapConfig",
           "DecoderConfig", "KnnConfig", "FewshotConfig", "Features", "cached_features", "extract", "knn_eval",
           "knn_votes", "LinearHeads", "Variant", "linear_probe", "train_grid", "train_single_head", "token_probe",
           "evaluate", "EvalTransform"]
