"""Scoring frozen encoders: cached features, DINOv2's linear-probe grid, DINO's kNN, few-shot, plots.

Entry point: ``vispre eval eval/RECIPE.yaml --encoder EXPORT_DIR`` (vispre.commands.eval), or
``evaluate(load_config(ProbeRecipe, recipe), encoder, out_dir)`` from Python.
"""

from .features import Features, cached_features, extract
from .knn import knn_eval, knn_votes
from .linear import LinearHeads, Variant, linear_probe, train_grid, train_single_head
from .probe_recipe import (
           FeatureConfig,
           FewshotConfig,
           KnnConfig,
           LinearConfig,
           ProbeRecipe,
           ProbeSetConfig,
           TransformConfig,
)
from .run import evaluate
from .transform import EvalTransform

__all__ = ["ProbeRecipe", "FeatureConfig", "FewshotConfig", "KnnConfig", "LinearConfig", "ProbeSetConfig",
           "TransformConfig", "Features", "cached_features", "extract", "knn_eval", "knn_votes", "LinearHeads",
           "Variant", "linear_probe", "train_grid", "train_single_head", "evaluate", "EvalTransform"]
