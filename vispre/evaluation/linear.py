"""DINOv2's linear probe: a grid of linear heads trained together on frozen features.

Grid: learning rates x input variants, a variant being the pooled features of the last n blocks
concatenated, with or without the last block's mean patch token (``Features.linear_input``). Per
variant the L heads are one tensor W [L, D, C], so a mini-batch costs one batched matmul:

    logits_l = x W_l + b_l                                 (einsum "bd,ldc->lbc")
    loss     = sum_l mean_b CE(logits_l, y)                 (BCE with logits for multi-label)

Each head's gradient is that of its own mean loss, so training them together is the same maths as
training each alone. SGD with momentum mu and no weight decay, cosine schedule over all steps
(torch.optim.SGD + CosineAnnealingLR(eta_min=0), DINOv2's choice), a learning rate per head:

    v_l <- mu v_l + g_l ;   W_l <- W_l - lr_l (1 + cos(pi t / T)) / 2 * v_l

The head with the best validation score is reported on test. ``train_single_head`` is the naive
way (one nn.Linear + torch.optim.SGD per head): the tests check the grid against it and
bench/probe.py times both.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .features import Features
from .metrics import headline, metrics_from_top, multilabel_metrics, top_classes


@dataclass(frozen=True)
class Variant:
    n_blocks: int
    avgpool: bool

    @property
    def name(self) -> str:
        return f"blocks{self.n_blocks}" + ("+avgpool" if self.avgpool else "")

    def inputs(self, features: Features) -> torch.Tensor:
        return features.linear_input(self.n_blocks, self.avgpool)

    def in_dim(self, features: Features) -> int:
        return sum(b.shape[1] for b in features.blocks[-self.n_blocks:]) + (
            features.patch_mean.shape[1] if self.avgpool else 0)


def cosine_factor(step: int, total: int) -> float:
    """CosineAnnealingLR(T_max=total, eta_min=0) in closed form: (1 + cos(pi t / T)) / 2."""
    return 0.5 * (1.0 + math.cos(math.pi * step / total))


def initial_weights(in_dim: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOv2's init: W ~ N(0, 0.01^2) [D, C], b = 0; the same draw for every head of a variant."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(in_dim, num_classes, generator=generator) * 0.01, torch.zeros(num_classes)


def head_loss(logits: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """Sum over heads of each head's mean loss; logits [L, B, C] (or [B, C] for one head)."""
    one = logits.ndim == 2
    logits = logits.unsqueeze(0) if one else logits
    heads, batch, classes = logits.shape
    if task == "single":
        losses = F.cross_entropy(logits.reshape(-1, classes), targets.repeat(heads), reduction="none")
        return losses.view(heads, batch).mean(1).sum()
    losses = F.binary_cross_entropy_with_logits(logits, targets.expand_as(logits), reduction="none")
    return losses.mean((1, 2)).sum()


class LinearHeads(nn.Module):
    """L linear heads on one input, each with its own learning rate."""

    def __init__(self, in_dim: int, num_classes: int, lrs: list[float], seed: int = 0):
        super().__init__()
        weight, bias = initial_weights(in_dim, num_classes, seed)
        self.weight = nn.Parameter(weight.expand(len(lrs), -1, -1).clone())  # [L, D, C]
        self.bias = nn.Parameter(bias.expand(len(lrs), -1).clone())  # [L, C]
        self.register_buffer("lrs", torch.tensor(lrs, dtype=torch.float32))
        self.momentum_buffers: list[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bd,ldc->lbc", x, self.weight) + self.bias.unsqueeze(1)

    @torch.no_grad()
    def sgd_step(self, factor: float, momentum: float) -> None:
        params = [self.weight, self.bias]
        if self.momentum_buffers is None:  # torch.optim.SGD: the first buffer is the gradient itself
            self.momentum_buffers = [p.grad.clone() for p in params]
        else:
            for buf, p in zip(self.momentum_buffers, params):
                buf.mul_(momentum).add_(p.grad)
        for buf, p in zip(self.momentum_buffers, params):
            lr = (self.lrs * factor).view(-1, *([1] * (p.ndim - 1)))
            p.sub_(lr * buf)
            p.grad = None


def batch_order(n: int, batch_size: int, epochs: int, seed: int):
    """The mini-batches (index tensors) of every epoch: a fresh permutation per epoch, last batch partial."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        yield from order.split(batch_size)


def train_grid(train: Features, variants: list[Variant], lrs: list[float], *, task: str, num_classes: int,
               epochs: int, batch_size: int, momentum: float = 0.9, seed: int = 0,
               device: torch.device | str = "cpu") -> dict[Variant, LinearHeads]:
    """Every head of the grid in one pass over ``train`` (features and heads on ``device``)."""
    train = train.to(device)
    heads = {v: LinearHeads(v.in_dim(train), num_classes, lrs, seed).to(device) for v in variants}
    total = epochs * math.ceil(len(train) / batch_size)
    for step, index in enumerate(batch_order(len(train), batch_size, epochs, seed)):
        batch = train.subset(index.to(device))
        loss = sum(head_loss(heads[v](v.inputs(batch)), batch.targets, task) for v in variants)
        loss.backward()
        factor = cosine_factor(step, total)
        for h in heads.values():
            h.sgd_step(factor, momentum)
    return heads


def train_single_head(train: Features, variant: Variant, lr: float, *, task: str, num_classes: int, epochs: int,
                      batch_size: int, momentum: float = 0.9, seed: int = 0,
                      device: torch.device | str = "cpu") -> nn.Linear:
    """The naive way: one nn.Linear, torch.optim.SGD and CosineAnnealingLR, same init and batches."""
    train = train.to(device)
    x_all = variant.inputs(train)
    weight, bias = initial_weights(x_all.shape[1], num_classes, seed)
    head = nn.Linear(x_all.shape[1], num_classes).to(device)
    with torch.no_grad():
        head.weight.copy_(weight.T)
        head.bias.copy_(bias)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=0.0)
    total = epochs * math.ceil(len(train) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total, eta_min=0)
    for index in batch_order(len(train), batch_size, epochs, seed):
        index = index.to(device)
        loss = head_loss(head(x_all[index]), train.targets[index], task)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return head


@torch.no_grad()
def head_metrics(heads: LinearHeads, variant: Variant, data: Features, task: str, num_classes: int,
                 chunk: int = 4096) -> list[dict[str, float]]:
    """Metrics of every head of a variant on ``data`` (single-label keeps only each head's top 5)."""
    kept = []
    for start in range(0, len(data), chunk):
        part = data.subset(torch.arange(start, min(start + chunk, len(data)), device=data.targets.device))
        logits = heads(variant.inputs(part)).float()  # [L, b, C]
        kept.append(top_classes(logits) if task == "single" else logits.cpu())
    kept = torch.cat(kept, dim=1)
    targets = data.targets.cpu()
    if task == "single":
        return [metrics_from_top(top, targets, num_classes) for top in kept]
    return [multilabel_metrics(scores, targets, threshold=0.0) for scores in kept]


def linear_probe(train: Features, val: Features, test: Features, cfg, *, task: str, num_classes: int, seed: int = 0,
                 device: torch.device | str = "cpu") -> dict:
    """Train the grid of ``cfg`` (a LinearConfig), pick the best head on val, report it on test."""
    start = time.perf_counter()
    variants = [Variant(n, a) for n in cfg.n_last_blocks for a in cfg.avgpool]
    scale = cfg.batch_size / 256 if cfg.scale_lr else 1.0
    lrs = [lr * scale for lr in cfg.learning_rates]
    heads = train_grid(train, variants, lrs, task=task, num_classes=num_classes, epochs=cfg.epochs,
                       batch_size=cfg.batch_size, momentum=cfg.momentum, seed=seed, device=device)
    fit_seconds = time.perf_counter() - start
    val, test = val.to(device), test.to(device)
    rows = []
    for v in variants:
        on_val = head_metrics(heads[v], v, val, task, num_classes)
        on_test = head_metrics(heads[v], v, test, task, num_classes)
        for lr, lr_scaled, m_val, m_test in zip(cfg.learning_rates, lrs, on_val, on_test):
            rows.append({"variant": v.name, "n_blocks": v.n_blocks, "avgpool": v.avgpool, "lr": lr,
                         "lr_scaled": lr_scaled, "val": m_val, "test": m_test})
    key = headline(task)
    best = max(rows, key=lambda r: r["val"][key])  # first of equals: grid order
    return {"best": best, "heads": rows, "selected_by": f"val {key}", "fit_seconds": round(fit_seconds, 3),
            "seconds": round(time.perf_counter() - start, 3)}
