"""One evaluation from a recipe: features per split (cached) -> linear grid, MAP and decoder probes,
kNN, few-shot -> files.

    results = evaluate(cfg, encoder, out_dir, encoder_info={"path": ..., "random_init": False})

writes ``OUT/results.json`` (scores + protocol + details) and the PNG plots, and returns the dict.
``baseline``: the results.json dict of the same recipe at random init, drawn on the plots.
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
from .token_probe import KINDS as TOKEN_PROBES
from .token_probe import token_probe
from .tokens import MIB, CachedTokens, StreamedTokens, token_bytes, token_shape
from .transform import EvalTransform

log = logging.getLogger("vispre.evaluation")


def hold_out_rows(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, val rows): a seeded random ``fraction`` of the samples becomes the validation split."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(fraction * n))
    return order[n_val:], order[:n_val]


def hold_out(features: Features, fraction: float, seed: int) -> tuple[Features, Features]:
    train_rows, val_rows = hold_out_rows(len(features), fraction, seed)
    return features.subset(train_rows), features.subset(val_rows)


def plan_tokens(cfg: ProbeRecipe, encoder, transform, sources: dict, device) -> dict:
    """Cache the token features (float16) when every split's fit ``features.token_budget_mib``, else stream."""
    shape = token_shape(encoder, transform, device)
    counts = {name: s.count() for name, s in sources.items()}
    plan = {"shape": list(shape), "dtype": "float16", "budget_mib": cfg.features.token_budget_mib,
            "tokens": "last block, normed, prefix tokens first"}
    if any(c is None for c in counts.values()):
        return {**plan, "mode": "streamed", "why": "sample count unknown (shards without sizes.json)",
                "training_order": StreamedTokens.order(False, cfg.features.stream_shuffle_rows)}
    mib = sum(token_bytes(c, shape) for c in counts.values()) / MIB
    plan["mib"] = round(mib, 1)
    if mib <= cfg.features.token_budget_mib:
        return {**plan, "mode": "cached", "why": f"{mib:.0f} MiB <= budget"}
    order = StreamedTokens.order(all(hasattr(s, "item") for s in sources.values()), cfg.features.stream_shuffle_rows)
    return {**plan, "mode": "streamed", "why": f"{mib:.0f} MiB > budget: the encoder runs on every pass",
            "training_order": order}


def token_sets(plan: dict, features: dict, sources: dict, rows: dict, encoder, transform, cfg, device):
    """(train, val, test) token sets for the MAP / decoder probes."""
    out = []
    for split in ("train", "val", "test"):
        source_name, index = rows[split]
        if plan["mode"] == "cached":
            data = features[source_name]
            out.append(CachedTokens(data.tokens, data.targets.cpu(), cfg.features.token_float32_mib, index))
        else:
            out.append(StreamedTokens(encoder, sources[source_name], transform, cfg.features, device,
                                      len(features[source_name]), plan["shape"][1], index))
    return out


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
             baseline: dict | None = None, progress: bool = False) -> dict:
    check_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.features.device)
    transform = EvalTransform.from_encoder(encoder, cfg.transform)
    encoder_id = encoder_identity(encoder)  # the weights hash, computed once for every split's cache key
    splits = {name: getattr(cfg, name) for name in ("train", "val", "test") if getattr(cfg, name) is not None}
    sources = {name: build_probe_set(source, cfg.task, cfg.num_classes, cfg.seed) for name, source in splits.items()}
    check_classes(sources)
    token_probes = [kind for kind in TOKEN_PROBES if getattr(cfg, kind).enabled]
    plan = plan_tokens(cfg, encoder, transform, sources, device) if token_probes else None
    features, cache = {}, {}
    for name, source in sources.items():
        features[name], cache[name] = cached_features(encoder, source, transform, cfg.features, encoder_id=encoder_id,
                                                      device=device, tokens=bool(plan and plan["mode"] == "cached"),
                                                      progress=progress)
        log.info("%s: %d images, features %s in %.1f s", name, len(features[name]), cache[name]["cache"],
                 cache[name]["seconds"])
    num_classes = infer_num_classes(cfg, sources, features)
    if "val" in features:
        train, val, val_from = features["train"], features["val"], "val split"
        rows = {"train": ("train", None), "val": ("val", None)}
    else:
        train_rows, val_rows = hold_out_rows(len(features["train"]), cfg.val_fraction, cfg.seed)
        pooled = features["train"].pooled()  # the token probes read rows of the full tensor (token_sets)
        train, val = pooled.subset(train_rows), pooled.subset(val_rows)
        val_from = f"{cfg.val_fraction:g} of train held out (seed {cfg.seed})"
        rows = {"train": ("train", train_rows), "val": ("train", val_rows)}
    rows["test"] = ("test", None)
    test = features["test"]

    results: dict = {}
    if cfg.linear.enabled:
        results["linear"] = linear_probe(train, val, test, cfg.linear, task=cfg.task, num_classes=num_classes,
                                         seed=cfg.seed, device=device)
    for kind in token_probes:
        sets = token_sets(plan, features, sources, rows, encoder, transform, cfg, device)
        results[kind] = token_probe(kind, *sets, getattr(cfg, kind), task=cfg.task, num_classes=num_classes,
                                    seed=cfg.seed, device=device)
        log.info("%s probe: %s", kind, results[kind]["best"]["test"])
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
                              num_classes=num_classes, tokens=plan)
    metric = headline(cfg.task)
    levels = {"chance": chance_level(test.targets, cfg.task, metric)}
    plots = []
    for kind in ("linear", *token_probes):
        if kind in results:
            reference = {**levels, **baseline_level(baseline, kind, metric)}
            plots.append(plot_probe(results[kind], metric, out / f"{kind}_probe.png", f"{cfg.name}: {kind} probe",
                                levels=reference))
    if "knn" in results:
        plots.append(plot_knn(results["knn"], metric, out / "knn.png", f"{cfg.name}: kNN (T={cfg.knn.temperature})",
                              levels={**levels, **baseline_level(baseline, "knn", metric)}))
    summary = {"name": cfg.name, "scores": summary_scores(results, cfg.task), **results, "chance": levels["chance"],
               "random_init_scores": (baseline or {}).get("scores"), "protocol": protocol,
               "plots": [p.name for p in plots if p is not None]}
    write_json(out / RESULTS_FILE, summary)
    summary["table"] = format_table(summary, cfg.task)
    return summary


def chance_level(targets: torch.Tensor, task: str, metric: str) -> dict:
    """What a constant guess scores on test: the most frequent class's share (top-1), or, for mAP, the mean
    prevalence of the classes present (the expected AP of random scores)."""
    targets = targets.cpu()
    if task == "single":
        counts = torch.bincount(targets)
        return {metric: round(100 * float(counts.max()) / len(targets), 2), "rule": "most frequent test class"}
    prevalence = targets.float().mean(0)
    return {metric: round(100 * float(prevalence[prevalence > 0].mean()), 2), "rule": "mean class prevalence"}


def baseline_level(baseline: dict | None, kind: str, metric: str) -> dict:
    """The random-init encoder's score of the same probe, when its results are known."""
    if not baseline:
        return {}
    score = baseline.get("scores", {}).get(f"{kind}/{metric}")
    if kind == "knn" and score is None and "knn" in baseline:
        score = baseline["knn"]["per_k"][str(baseline["knn"]["report_k"])].get(metric)
    return {} if score is None else {"random_init": score}
