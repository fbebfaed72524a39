"""Diagnostics logged during pretraining: value accuracy by crop IoU, srank, RankMe, Spearman.

srank (Kumar et al. 2021): with singular values s_1 >= s_2 >= ... of a feature matrix,
    srank_delta = min { k : sum_{i<=k} s_i / sum_i s_i >= 1 - delta },   delta = 0.01.
RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values,
    p_i = s_i / sum_j s_j + eps,   RankMe = exp(-sum_i p_i log p_i).
Spearman's rank correlation (ICVF values against temporal distances): Pearson's correlation of ranks.
"""

from __future__ import annotations

import torch


def srank(features: torch.Tensor, delta: float = 0.01) -> int:
    s = torch.linalg.svdvals(features.float())
    cumulative = torch.cumsum(s, 0) / s.sum().clamp_min(1e-12)
    return int((cumulative < 1 - delta).sum().item()) + 1


def rankme(features: torch.Tensor, eps: float = 1e-7) -> float:
    s = torch.linalg.svdvals(features.float())
    p = s / s.sum().clamp_min(1e-12) + eps
    return float(torch.exp(-(p * p.log()).sum()).item())


def bin_label(lo: float, hi: float) -> str:
    return "iou=0" if hi == 0 else f"iou{lo:.1f}-{hi:.1f}"


def accuracy_by_iou(correct: torch.Tensor, iou: torch.Tensor, mask: torch.Tensor, edges: list[float],
                    prefix: str) -> dict:
    """Accuracy of ``correct`` pairs in IoU bins: exactly 0 (non-overlapping crops), then
    (edges[i], edges[i+1]]. A bin with no pair is NaN (0 / 0): no host sync to test it here; the training
    log averages each metric over the steps where it is finite and leaves out one that never was."""
    out = {}
    bins = [(0.0, 0.0)] + list(zip(edges[:-1], edges[1:]))
    for lo, hi in bins:
        in_bin = mask & ((iou == 0) if hi == 0 else (iou > lo) & (iou <= hi))
        out[f"{prefix}/{bin_label(lo, hi)}"] = masked_mean(correct, in_bin)
    out[f"{prefix}/all"] = masked_mean(correct, mask)
    return out


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask``; NaN when the mask is empty. Boolean indexing would make the host
    wait for the device (the output's size depends on the data); this does not."""
    mask = mask.expand_as(values)
    return (values.float() * mask).sum() / mask.sum()


def accuracy_in_bins(correct: torch.Tensor, iou: torch.Tensor, mask: torch.Tensor, bins: list, prefix: str) -> dict:
    """Accuracy of ``correct`` pairs in the IoU ``bins`` [[lo, hi], ...]: [0, 0] is IoU exactly 0, any other
    bin lo < IoU <= hi (the AB paper's bins: 0, (0.01, 0.2], [0.2, 0.5], [0.5, 0.8]); ``all``: every pair.
    A bin with no pair is NaN (see ``accuracy_by_iou``)."""
    out = {}
    for lo, hi in bins:
        in_bin = mask & ((iou == 0) if hi == 0 else (iou > lo) & (iou <= hi))
        out[f"{prefix}/{'iou=0' if hi == 0 else f'iou{lo:g}-{hi:g}'}"] = masked_mean(correct, in_bin)
    out[f"{prefix}/all"] = masked_mean(correct, mask)
    return out


def majority_rate(labels: torch.Tensor) -> torch.Tensor:
    """The chance level of an annotation-argmax prediction: the share of the most frequent label
    (what always predicting it would score)."""
    labels = labels.flatten()
    return (labels == labels.mode().values).float().mean()


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of a 1-d tensor, ties sharing their average rank."""
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return ((ends - counts + ends - 1) / 2)[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation: Pearson's correlation of the (tie-averaged) ranks."""
    rx, ry = average_ranks(x.flatten()), average_ranks(y.flatten())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()).clamp_min(1e-12))
