"""One evaluation from a recipe: features per split (cached) -> linear grid, kNN, few-shot -> files.

    results = evaluate(cfg, encoder, out_dir, encoder_info={"path": ..., "random_init": False})

writes ``OUT/results.json`` (scores + protocol + details) and the PNG plots, and returns the dict.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .features import Features, cache_key, cached_features, encoder_identity, resolve_device
from .fewshot import fewshot_eval
from .knn import knn_eval
from .linear import linear_probe
from .metrics import headline
from .plots import plot_knn, plot_probe
from .probe_data import build_probe_set
from .probe_recipe import ProbeRecipe, check_config
from .report import RESULTS_FILE, build_protocol, format_table, summary_scores, write_json
from .transform import EvalTransform

log = logging.getLogger("vispre.evaluation")


def hold_out(features: Features, fraction: float, seed: int) -> tuple[Features, Features]:
    """(train, val): a seeded random ``fraction`` of the samples becomes the validation split."""
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(fraction * len(features)))
    return features.subset(order[n_val:]), features.subset(order[:n_val])


def compact(identity: dict) -> dict:
    """A data identity for the protocol: its scalar fields (path, split, samples, ...) and a digest of the
    whole (shard lists and file stamps can run to thousands of entries)."""
    out = {k: v for k, v in identity.items() if not isinstance(v, (dict, list))}
    return {**out, "identity_digest": cache_key(identity)}


def check_classes(sources: dict) -> None:
    """Splits that name their classes (folders, HF ClassLabel) must name the same ones, in the same order:
    a test folder missing one class would otherwise shift every later index."""
    named = {name: s.classes for name, s in sources.items() if getattr(s, "classes", None)}
    first = next(iter(named.items()), None)
    for name, classes in named.items():
        if classes != first[1]:
            missing = sorted(set(first[1]) ^ set(classes))[:5]
            raise ValueError(f"the {first[0]} and {name} splits have different classes ({len(first[1])} vs "
                             f"{len(classes)}; e.g. {missing}): labels would not match")


def infer_num_classes(cfg: ProbeRecipe, sources: dict, features: dict[str, Features]) -> int:
    if cfg.num_classes:
        return cfg.num_classes
    known = [s.num_classes for s in sources.values() if getattr(s, "num_classes", None)]
    found = max(int(f.targets.max()) + 1 for f in features.values())
    num_classes = max(known) if known else found
    if found > num_classes:
        raise ValueError(f"labels go up to {found - 1} but the data says {num_classes} classes")
    return num_classes


def evaluate(cfg: ProbeRecipe, encoder, out_dir: str | Path, *, encoder_info: dict | None = None,
             progress: bool = False) -> dict:
    check_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.features.device)
    transform = EvalTransform.from_encoder(encoder, cfg.transform)
    encoder_id = encoder_identity(encoder)  # the weights hash, computed once for every split's cache key
    splits = {name: getattr(cfg, name) for name in ("train", "val", "test") if getattr(cfg, name) is not None}
    sources = {name: build_probe_set(source, cfg.task, cfg.num_classes) for name, source in splits.items()}
    check_classes(sources)
    features, cache = {}, {}
    for name, source in sources.items():
        features[name], cache[name] = cached_features(encoder, source, transform, cfg.features, encoder_id=encoder_id,
                                                      device=device, progress=progress)
        log.info("%s: %d images, features %s in %.1f s", name, len(features[name]), cache[name]["cache"],
                 cache[name]["seconds"])
    num_classes = infer_num_classes(cfg, sources, features)
    if "val" in features:
        train, val, val_from = features["train"], features["val"], "val split"
    else:
        train, val = hold_out(features["train"], cfg.val_fraction, cfg.seed)
        val_from = f"{cfg.val_fraction:g} of train held out (seed {cfg.seed})"
    test = features["test"]

    results: dict = {}
    if cfg.linear.enabled:
        results["linear"] = linear_probe(train, val, test, cfg.linear, task=cfg.task, num_classes=num_classes,
                                         seed=cfg.seed, device=device)
    if cfg.knn.enabled:
        results["knn"] = knn_eval(features["train"], test, cfg.knn, task=cfg.task, num_classes=num_classes,
                                  device=device)
    if cfg.fewshot.enabled:
        results["fewshot"] = fewshot_eval(train, test, cfg.fewshot, task=cfg.task, num_classes=num_classes,
                                          seed=cfg.seed)

    data = {name: compact(source.identity()) for name, source in sources.items()}
    data["val_from"] = val_from
    data["sizes"] = {"train": len(train), "val": len(val), "test": len(test)}
    info = {**(encoder_info or {}), "architecture": encoder.name, "model_args": encoder_id["model_args"],
            "weights_hash": encoder_id["weights"]}
    protocol = build_protocol(cfg, encoder_info=info, transform=transform, data=data, cache=cache, device=device,
                              num_classes=num_classes)
    metric = headline(cfg.task)
    plots = []
    if "linear" in results:
        plots.append(plot_probe(results["linear"], metric, out / "linear_probe.png", f"{cfg.name}: linear probe"))
    if "knn" in results:
        plots.append(plot_knn(results["knn"], metric, out / "knn.png", f"{cfg.name}: kNN (T={cfg.knn.temperature})"))
    summary = {"name": cfg.name, "scores": summary_scores(results, cfg.task), **results, "protocol": protocol,
               "plots": [p.name for p in plots if p is not None]}
    write_json(out / RESULTS_FILE, summary)
    summary["table"] = format_table(summary, cfg.task)
    return summary
