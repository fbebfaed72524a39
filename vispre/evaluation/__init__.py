"""Scoring frozen encoders: cached features, DINOv2's linear-probe grid, DINO's kNN, few-shot, plots.

Entry point: ``vispre eval eval/RECIPE.yaml --encoder EXPORT_DIR`` (vispre.commands.eval), or
``evaluate(load_config(EvalConfig, recipe), encoder, out_dir)`` from Python.
"""

from .config import EvalConfig, FeatureConfig, FewshotConfig, KnnConfig, LinearConfig, SourceConfig, TransformConfig
from .features import Features, cached_features, extract
from .knn import knn_eval, knn_votes
from .linear import LinearHeads, Variant, linear_probe, train_grid, train_single_head
from .run import evaluate
from .transform import EvalTransform

__all__ = ["EvalConfig", "FeatureConfig", "FewshotConfig", "KnnConfig", "LinearConfig", "SourceConfig",
           "TransformConfig", "Features", "cached_features", "extract", "knn_eval", "knn_votes", "LinearHeads",
           "Variant", "linear_probe", "train_grid", "train_single_head", "evaluate", "EvalTransform"]
