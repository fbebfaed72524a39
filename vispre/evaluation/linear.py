"""DINOv2's linear probe: a grid of linear heads trained together on frozen features.

Grid: learning rates x input variants, a variant being the pooled features of the last n blocks
concatenated, with or without the last block's mean patch token (``Features.linear_input``). The
features are one matrix [N, sum of block dims + patch dim] (blocks oldest first, then the patch
mean), so every variant's input is a column range of it: a mini-batch is one gather, and a
variant's L heads are one matmul with its weights laid out as [D, L x C]:

    logits[:, l] = x W_l + b_l          loss = sum_l mean_b CE(logits[:, l], y)   (BCE if multi-label)

SGD with momentum, no weight decay, cosine to 0 (DINOv2), a learning rate per head, through the
grid optimizer shared with the MAP and decoder probes (vispre.evaluation.grid). The head with the
best validation score is reported on test. ``train_single_head`` is the naive way (one nn.Linear +
torch.optim.SGD per head): the tests check the grid against it and bench/probe.py times both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from .features import Features
from .grid import GridOptimConfig, GridOptimizer, batch_order, fit, head_loss, steps_per_epoch
from .metrics import grid_metrics, headline


@dataclass(frozen=True)
class Variant:
    n_blocks: int
    avgpool: bool

    @property
    def name(self) -> str:
        return f"blocks{self.n_blocks}" + ("+avgpool" if self.avgpool else "")

    def inputs(self, features: Features) -> torch.Tensor:
        return features.linear_input(self.n_blocks, self.avgpool)

    def columns(self, features: Features) -> slice:
        """This variant's input as a column range of ``features.matrix()``."""
        dims = [b.shape[1] for b in features.blocks]
        start, end = sum(dims[:-self.n_blocks]), sum(dims)
        return slice(start, end + (features.patch_mean.shape[1] if self.avgpool else 0))

    def in_dim(self, features: Features) -> int:
        columns = self.columns(features)
        return columns.stop - columns.start


def initial_weights(in_dim: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOv2's init: W ~ N(0, 0.01^2) [D, C], b = 0; the same draw for every head of a variant."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(in_dim, num_classes, generator=generator) * 0.01, torch.zeros(num_classes)


class LinearHeads(nn.Module):
    """L linear heads on one input, each with its own learning rate: weight [D, L, C], bias [L, C]."""

    def __init__(self, in_dim: int, num_classes: int, lrs: list[float], seed: int = 0):
        super().__init__()
        weight, bias = initial_weights(in_dim, num_classes, seed)
        self.weight = nn.Parameter(weight.unsqueeze(1).expand(-1, len(lrs), -1).contiguous())
        self.bias = nn.Parameter(bias.expand(len(lrs), -1).clone())
        self.register_buffer("lrs", torch.tensor(lrs, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D] -> logits [B, L, C]."""
        dim, heads, classes = self.weight.shape
        return torch.addmm(self.bias.view(-1), x, self.weight.view(dim, heads * classes)).view(-1, heads, classes)

    def head(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Head i's (weight [D, C], bias [C])."""
        return self.weight[:, i], self.bias[i]

    def param_lrs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self.weight, self.lrs.view(1, -1, 1)), (self.bias, self.lrs.view(-1, 1))]


def train_grid(train: Features, variants: list[Variant], lrs: list[float], *, task: str, num_classes: int,
               epochs: int, batch_size: int, momentum: float = 0.9, seed: int = 0,
               device: torch.device | str = "cpu") -> dict[Variant, LinearHeads]:
    """Every head of the grid in one pass over ``train`` (features and heads on ``device``)."""
    matrix, targets = train.matrix().to(device), train.targets.to(device)
    heads = {v: LinearHeads(v.in_dim(train), num_classes, lrs, seed).to(device) for v in variants}
    columns = {v: v.columns(train) for v in variants}
    optimizer = GridOptimizer([pl for h in heads.values() for pl in h.param_lrs()],
                              GridOptimConfig(kind="sgd", momentum=momentum))

    def batches():
        for index in batch_order(len(train), batch_size, epochs, seed):
            index = index.to(device)
            yield matrix[index].float(), targets[index]

    def forward(x):  # [B, V x L, C]: every variant's heads side by side
        return torch.cat([heads[v](x[:, columns[v]]) for v in variants], dim=1)

    fit(forward, optimizer, batches(), epochs * steps_per_epoch(len(train), batch_size), task=task)
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
    total = epochs * steps_per_epoch(len(train), batch_size)
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
    """Metrics of every head of a variant on ``data``."""
    def chunks():
        for start in range(0, len(data), chunk):
            part = data.subset(torch.arange(start, min(start + chunk, len(data)), device=data.targets.device))
            yield heads(variant.inputs(part)), part.targets

    return grid_metrics(chunks(), task, num_classes)


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
