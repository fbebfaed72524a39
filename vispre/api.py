"""vispre from Python, as timm / open_clip users expect: a few entry points over the CLI's own functions.

    from vispre.api import create_method, export, load_encoder, load_recipe, pretrain, run_eval

    cfg = load_recipe("demo/simclr", ["data.spec=SHARDS", "train.steps=50"])   # a name or a path
    method = create_method(cfg)        # the nn.Module the loop trains (encoder + heads + target)
    run = pretrain(cfg)                # train.output_dir, with checkpoints and metrics.jsonl
    folder = export(run, "OUT")        # a timm folder (+ open_clip files for a CLIP run)
    encoder = load_encoder(folder)     # vispre.export.read.load_encoder: encoder(x).pooled
    results = run_eval("demo_digits", folder, ["train.path=...", "test.path=..."])

load_recipe, create_method, load_encoder and run_eval are also ``vispre.NAME`` (imported on first use);
vispre.pretrain and vispre.export are sub-packages. This module sits above pretrain, export and evaluation,
beside the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def load_recipe(recipe: str, overrides: Sequence[str] = ()):
    """A pretraining recipe (a path, or a shipped recipe's name: ``vispre recipes``) with ``key=value``
    overrides, type- and value-checked: a PretrainConfig."""
    from .pretrain.recipe import load_recipe as load
    from .utils.recipe_files import resolve_recipe

    return load(resolve_recipe(recipe, "pretrain"), list(overrides))


def create_method(cfg):
    """The method a recipe trains (an ``nn.Module``; ``method.online`` / ``method.target`` networks), built
    as the training loop builds it: the encoder from ``model`` (``model.init`` weights when given)."""
    from .methods import build_method
    from .models import build_encoder
    from .models.init_weights import init_encoder

    encoder = build_encoder(cfg.model.name, **cfg.model.kwargs)
    if cfg.model.init:
        init_encoder(encoder, cfg.model.init, cfg.model.init_prefix)
    return build_method(cfg.method, encoder)


def pretrain(cfg, *, resume: str | None = None, overwrite: bool = False) -> Path:
    """Train ``cfg`` (``vispre pretrain``); returns ``train.output_dir``."""
    from .pretrain.loop import pretrain as train

    return train(cfg, resume=resume, overwrite=overwrite)


def export(run_or_checkpoint: str | Path, out_dir: str | Path, **options) -> Path:
    """``vispre export``: the run's newest checkpoint (or the given one) as a timm folder; ``options`` as
    vispre.export.write.export (which, onnx, license, datasets, ...)."""
    from .export.write import export as write

    return write(run_or_checkpoint, out_dir, **options)


def load_encoder(export_dir: str | Path, random_init: bool = False):
    """An export as a vispre Encoder in eval mode (``encoder(images).pooled``, ``.tokens``)."""
    from .export.read import load_encoder as load

    return load(export_dir, random_init=random_init)


def run_eval(recipe: str, encoder_dir: str | Path, overrides: Sequence[str] = (), output: str | Path | None = None,
             random_init: bool = False) -> dict:
    """Run an evaluation recipe (a path or a shipped name) on an export, as ``vispre eval`` does; returns the
    results.json content (``results["scores"]``, ``results["table"]``). Probe recipes, and zero_shot /
    retrieval for CLIP exports; suites and offline RL run from the command line."""
    import torch

    from .utils.errors import UserError
    from .utils.recipe_files import resolve_recipe
    from .utils.typed_config import load_config

    path = resolve_recipe(recipe, "eval")
    kind = recipe_kind(path)
    encoder_dir = Path(encoder_dir)
    if kind in ("zero_shot", "retrieval"):
        if kind == "zero_shot":
            from .evaluation.zero_shot import ZeroShotRecipe as schema
            from .evaluation.zero_shot import zero_shot as evaluate_clip
        else:
            from .evaluation.retrieval import RetrievalRecipe as schema
            from .evaluation.retrieval import retrieval as evaluate_clip
        cfg = load_config(schema, path, list(overrides))
        return evaluate_clip(cfg, encoder_dir, Path(output or cfg.output_dir or encoder_dir / "eval" / cfg.name))
    if kind != "probe":
        raise UserError(f"{path}: a kind: {kind} recipe; run it with 'vispre eval {recipe} ...'")
    from .evaluation import ProbeRecipe, evaluate
    from .evaluation.probe_recipe import check_config

    cfg = load_config(ProbeRecipe, path, list(overrides))
    check_config(cfg)
    torch.manual_seed(cfg.seed)  # the random-init draw, as the CLI seeds it
    encoder = load_encoder(encoder_dir, random_init=random_init)
    suffix = "-random-init" if random_init else ""
    out = Path(output or cfg.output_dir or encoder_dir / "eval" / f"{cfg.name}{suffix}")
    info = {"path": str(encoder_dir.resolve()), "random_init": random_init,
            "random_init_seed": cfg.seed if random_init else None}
    return evaluate(cfg, encoder, out, encoder_info=info)


def recipe_kind(path: str | Path) -> str:
    from .commands.eval import recipe_kind as kind

    return kind(str(path))
