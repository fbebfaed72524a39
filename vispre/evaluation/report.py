"""What an evaluation writes: the scores, the protocol that produced them, a printed table.

``results.json`` (written atomically) holds ``scores`` (flat ``{"linear/top1": 97.1, ...}``, in
percent: what goes on the model card), ``protocol`` (encoder path and weights hash, layers,
resolution, transform, grid, epochs, seeds, data and split sizes, versions) and the details (every
head's val/test scores, every k, every few-shot draw).
"""

from __future__ import annotations

import dataclasses
import time

import torch

from .. import __version__
from ..utils.io import write_json  # noqa: F401  (re-exported for run.py)
from .metrics import headline

RESULTS_FILE = "results.json"


def summary_scores(results: dict, task: str) -> dict[str, float]:
    """The flat scores: the chosen probe head on test, kNN at report_k, few-shot means and stds."""
    scores = {}
    for probe in ("linear", "map", "decoder"):
        if probe in results:
            scores.update({f"{probe}/{m}": round(v, 2) for m, v in results[probe]["best"]["test"].items()})
    if "knn" in results:
        knn = results["knn"]
        k = str(knn["report_k"])
        scores.update({f"knn/k{k}/{m}": round(v, 2) for m, v in knn["per_k"][k].items()})
    if "fewshot" in results:
        key = headline(task)
        for n, entry in results["fewshot"]["per_shots"].items():
            scores[f"fewshot/{n}shot/{key}"] = round(entry[key]["mean"], 2)
            scores[f"fewshot/{n}shot/{key}_std"] = round(entry[key]["std"], 2)
    return scores


def build_protocol(cfg, *, encoder_info: dict, transform, data: dict, cache: dict, device: torch.device,
                   num_classes: int, tokens: dict | None = None) -> dict:
    import timm

    linear, knn, fewshot = cfg.linear, cfg.knn, cfg.fewshot
    protocol = {
        "vispre_version": __version__, "torch": torch.__version__, "timm": timm.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": str(device),  # no host name: published with the export
        "eval": cfg.name, "task": cfg.task, "num_classes": num_classes, "seed": cfg.seed,
        "encoder": encoder_info,
        "resolution": transform.size, "transform": transform.describe(),
        "data": data,
        "features": {"layers": f"pooled feature (CLS after the final norm; patch mean without CLS) of the last "
                               f"{cfg.features.n_last_blocks} blocks + mean patch token of the last block",
                     "precision": cfg.features.precision, "store_dtype": cfg.features.store_dtype,
                     "augmentation": "none: one centre crop per image, cached", "cache": cache},
    }
    if tokens is not None:
        protocol["features"]["tokens"] = tokens
    if linear.enabled:
        protocol["linear"] = {
            "learning_rates": list(linear.learning_rates), "scale_lr": f"x batch_size/256 = "
            f"{linear.batch_size / 256:g}" if linear.scale_lr else "none",
            "inputs": [f"last {n} block(s)" + (" + mean patch token" if a else "")
                       for n in linear.n_last_blocks for a in linear.avgpool],
            "epochs": linear.epochs, "batch_size": linear.batch_size, "optimizer": f"SGD momentum {linear.momentum}, "
            "weight decay 0", "schedule": "cosine to 0 over all steps (per step)", "init": "N(0, 0.01^2), bias 0",
            "loss": "cross-entropy" if cfg.task == "single" else "binary cross-entropy",
            "selection": f"best val {headline(cfg.task)}, reported on test"}
    for name in ("map", "decoder"):
        probe = getattr(cfg, name)
        if probe.enabled:
            protocol[name] = token_probe_protocol(name, probe, cfg.task)
    if knn.enabled:
        protocol["knn"] = {"ks": list(knn.ks), "temperature": knn.temperature, "similarity": "cosine",
                           "weighting": "exp(similarity / T)", "feature": "pooled feature of the last block",
                           "train_set": "all of train (no validation needed)", "reported_k": knn.report_k}
    if fewshot.enabled:
        protocol["fewshot"] = {"shots": list(fewshot.shots), "tries": fewshot.tries,
                               "seeds": [cfg.seed * 1000 + t for t in range(fewshot.tries)],
                               "classifier": f"logistic regression, L-BFGS ({fewshot.max_iter} iterations), "
                                             f"l2 {fewshot.l2}", "feature": "pooled, last block, L2-normalised"}
    protocol["config"] = dataclasses.asdict(cfg)
    return protocol


def token_probe_protocol(name: str, probe, task: str) -> dict:
    head = ("MAP: a learned query, multihead attention over the last block's tokens, LN + MLP residual "
            "(timm AttentionPoolLatent = big_vision MAPHead), linear classifier" if name == "map" else
            f"decoder (Beyer et al. 2023): {probe.layers} pre-LN layers (self-attention among {probe.queries} "
            "learned query token(s), cross-attention to the last block's tokens, MLP), LN, linear classifier "
            "on the queries' mean; one decoding step, not autoregressive text")
    return {"head": head, "learning_rates": list(probe.learning_rates), "epochs": probe.epochs,
            "batch_size": probe.batch_size, "attention_heads": probe.num_heads or "token dim / 64",
            "mlp_ratio": probe.mlp_ratio,
            "optimizer": f"AdamW (0.9, 0.999), weight decay {probe.weight_decay}, one lr per head",
            "schedule": f"linear warm-up over {probe.warmup_epochs:g} epoch(s), then cosine to 0 (per step)",
            "init": "one draw (seed) copied to every head; classifier zero-initialised",
            "loss": "cross-entropy" if task == "single" else "binary cross-entropy (a sigmoid per class)",
            "training": "every head in one pass over the tokens (vispre.evaluation.grid)",
            "selection": f"best val {headline(task)}, reported on test"}


def format_table(results: dict, task: str) -> str:
    """A short human summary of a results.json dict."""
    key = headline(task)
    enc = results["protocol"]["encoder"]
    lines = [f"{results['name']}: {enc.get('path') or enc.get('architecture')}"
             + (" (random init)" if enc.get("random_init") else "")
             + f", {results['protocol']['resolution']} px"]
    sizes = results["protocol"]["data"]["sizes"]
    lines.append("  images: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    for probe in ("linear", "map", "decoder"):
        if probe in results:
            best = results[probe]["best"]
            metrics = "  ".join(f"{m} {v:6.2f}" for m, v in best["test"].items())
            lines.append(f"  {probe:<8} {metrics}   [{best['variant']}, lr {best['lr']:g}, val {key} "
                         f"{best['val'][key]:.2f}]")
    if "chance" in results:
        lines.append(f"  chance   {key} {results['chance'][key]:6.2f} ({results['chance']['rule']})")
    if "knn" in results:
        for k, metrics in results["knn"]["per_k"].items():
            mark = " *" if int(k) == results["knn"]["report_k"] else ""
            lines.append(f"  knn k={k:<4}" + "  ".join(f"{m} {v:6.2f}" for m, v in metrics.items()) + mark)
    if "fewshot" in results:
        for n, entry in results["fewshot"]["per_shots"].items():
            lines.append(f"  {n:>3}-shot  {key} {entry[key]['mean']:6.2f} +- {entry[key]['std']:.2f} "
                         f"({len(entry['tries'])} draws)")
    return "\n".join(lines)


def suite_summary(name: str, members: dict[str, dict]) -> dict:
    """A suite's results (the paper's "Avg Cls"): every member's scores and, for each score all members
    have, their mean."""
    scores = {m: r["scores"] for m, r in members.items()}
    shared = set.intersection(*(set(s) for s in scores.values())) if scores else set()
    mean = {k: round(sum(s[k] for s in scores.values()) / len(scores), 2) for k in sorted(shared)}
    return {"name": name, "kind": "suite", "members": scores, "mean": mean,
            "protocols": {m: r["protocol"] for m, r in members.items()}}
