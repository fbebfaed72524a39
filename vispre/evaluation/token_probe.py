"""Train a MAP or decoder probe grid (one head per learning rate, one pass over the tokens), pick the
best head on val, report it on test: the token probes' counterpart of ``linear_probe``.

    result = token_probe("map", train, val, test, cfg.map, task="single", num_classes=10)

``train`` / ``val`` / ``test`` are token sets (vispre.evaluation.tokens: cached or streamed). Every
head starts from the same init (one head drawn with ``seed``), sees the same batches, and steps with
AdamW at its own learning rate after a linear warm-up, cosine to 0.
"""

from __future__ import annotations

import time

import torch

from .decoder_probe import DecoderGrid, DecoderHead
from .grid import GridOptimConfig, GridOptimizer, fit
from .map_probe import MapGrid, MapHead
from .metrics import grid_metrics, headline

KINDS = ("map", "decoder")


def attention_heads(cfg, dim: int) -> int:
    heads = cfg.num_heads or max(1, dim // 64)
    if dim % heads:
        raise ValueError(f"num_heads={heads} does not divide the token dim {dim}")
    return heads


def make_head(kind: str, cfg, dim: int, num_classes: int, seed: int):
    """One head of the grid (the init every head starts from)."""
    torch.manual_seed(seed)
    heads = attention_heads(cfg, dim)
    if kind == "map":
        return MapHead(dim, num_classes, heads, cfg.mlp_ratio)
    if kind == "decoder":
        return DecoderHead(dim, num_classes, heads, cfg.layers, cfg.queries, cfg.mlp_ratio)
    raise ValueError(f"token probe kind must be one of {KINDS}, got {kind!r}")


def make_grid(kind: str, head, lrs: list[float]):
    return MapGrid(head, lrs) if kind == "map" else DecoderGrid(head, lrs)


def optim_config(cfg) -> GridOptimConfig:
    return GridOptimConfig(kind="adamw", weight_decay=cfg.weight_decay)


def warmup_steps(cfg, total: int) -> int:
    return min(total - 1, round(cfg.warmup_epochs * total / cfg.epochs)) if total > 1 else 0


def train_token_grid(kind: str, train, cfg, *, num_classes: int, task: str, seed: int = 0,
                     device: torch.device | str = "cpu"):
    """The grid of ``cfg`` (a MapConfig / DecoderConfig) trained on the token set ``train``."""
    head = make_head(kind, cfg, train.dim, num_classes, seed)
    grid = make_grid(kind, head, list(cfg.learning_rates)).to(device)
    total = train.steps(cfg.batch_size, cfg.epochs)
    fit(grid, GridOptimizer(grid.param_lrs(), optim_config(cfg)),
        train.batches(cfg.batch_size, cfg.epochs, seed, device), total, task=task, warmup=warmup_steps(cfg, total))
    return grid


@torch.no_grad()
def score_grid(grid, data, task: str, num_classes: int, device, chunk: int = 512) -> list[dict[str, float]]:
    grid.eval()
    return grid_metrics(((grid(tokens), targets) for tokens, targets in data.in_order(chunk, device)), task,
                        num_classes)


def token_probe(kind: str, train, val, test, cfg, *, task: str, num_classes: int, seed: int = 0,
                device: torch.device | str = "cpu") -> dict:
    start = time.perf_counter()
    grid = train_token_grid(kind, train, cfg, num_classes=num_classes, task=task, seed=seed, device=device)
    fit_seconds = time.perf_counter() - start
    on_val = score_grid(grid, val, task, num_classes, device)
    on_test = score_grid(grid, test, task, num_classes, device)
    rows = [{"variant": kind, "lr": lr, "lr_scaled": lr, "val": v, "test": t}
            for lr, v, t in zip(cfg.learning_rates, on_val, on_test)]
    key = headline(task)
    best = max(rows, key=lambda r: r["val"][key])
    return {"best": best, "heads": rows, "selected_by": f"val {key}", "tokens": train.mode,
            "attention_heads": attention_heads(cfg, train.dim), "fit_seconds": round(fit_seconds, 3),
            "seconds": round(time.perf_counter() - start, 3)}
