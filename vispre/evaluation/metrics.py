"""Scores from predictions, in percent.

Single label (scores [N, C], targets [N]): top-1, top-5 (when C > 5) and mean per-class accuracy
(the mean over classes of each class's recall, so small classes count as much as large ones).
Multi-label (scores [N, C], multi-hot targets [N, C]): mean average precision over the classes that
have a positive, exact-match accuracy (every label right) and per-label accuracy, thresholding the
scores at ``threshold`` (0 for logits, 0.5 for kNN vote fractions).
"""

from __future__ import annotations

import torch


def mean_per_class(correct: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    """mean_c (correct among class c / size of class c), over classes present in ``targets``."""
    totals = torch.bincount(targets, minlength=num_classes).float()
    hits = torch.bincount(targets, weights=correct.float(), minlength=num_classes)
    present = totals > 0
    return float((hits[present] / totals[present]).mean())


def top_classes(scores: torch.Tensor, k: int = 5) -> torch.Tensor:
    """[..., N, min(k, C)] class indices by decreasing score: all that single-label metrics need."""
    return scores.topk(min(k, scores.shape[-1]), dim=-1).indices


def metrics_from_top(top: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Single-label metrics from the top-5 classes [N, 5] (lets callers keep 5 numbers per image
    instead of C scores, e.g. 13 heads x 1000 ImageNet classes)."""
    top, targets = top.cpu(), targets.cpu()
    top1 = top[:, 0] == targets
    out = {"top1": 100 * float(top1.float().mean())}
    if num_classes > 5:
        out["top5"] = 100 * float((top[:, :5] == targets.unsqueeze(1)).any(1).float().mean())
    out["mean_per_class"] = 100 * mean_per_class(top1, targets, num_classes)
    return out


def classification_metrics(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    return metrics_from_top(top_classes(scores.float()), targets, scores.shape[-1])


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """AP per class [C] (NaN for a class without positives), as sklearn's average_precision_score:

        AP = sum_n (R_n - R_{n-1}) P_n   over the distinct score thresholds, highest first,

    so tied scores count as one threshold (no dependence on the order of ties).
    """
    scores, targets = scores.float().cpu(), targets.float().cpu()
    out = torch.full((scores.shape[1],), float("nan"))
    for c in range(scores.shape[1]):
        positives = targets[:, c].sum()
        if positives == 0:
            continue
        s, order = scores[:, c].sort(descending=True)
        t = targets[order, c]
        tp, seen = t.cumsum(0), torch.arange(1, len(t) + 1, dtype=torch.float32)
        last = torch.ones(len(s), dtype=torch.bool)  # the last position of every run of equal scores
        last[:-1] = s[1:] != s[:-1]
        precision, recall = tp[last] / seen[last], tp[last] / positives
        out[c] = (torch.diff(recall, prepend=torch.zeros(1)) * precision).sum()
    return out


def multilabel_metrics(scores: torch.Tensor, targets: torch.Tensor, threshold: float = 0.0) -> dict[str, float]:
    scores, targets = scores.float().cpu(), targets.float().cpu()
    predicted = scores > threshold
    truth = targets > 0.5
    return {"mAP": 100 * float(average_precision(scores, targets).nanmean()),
            "exact_match": 100 * float((predicted == truth).all(1).float().mean()),
            "label_accuracy": 100 * float((predicted == truth).float().mean())}


def grid_metrics(chunks, task: str, num_classes: int) -> list[dict[str, float]]:
    """Metrics of every head of a grid from ``chunks`` of (logits [b, L, C], targets): single-label keeps
    only each head's top 5 classes per image (13 heads x 1000 ImageNet classes would not fit)."""
    kept, targets = [], []
    for logits, target in chunks:
        logits = logits.float().transpose(0, 1)  # [L, b, C]
        kept.append(top_classes(logits).cpu() if task == "single" else logits.cpu())
        targets.append(target.cpu())
    kept, targets = torch.cat(kept, dim=1), torch.cat(targets)
    if task == "single":
        return [metrics_from_top(top, targets, num_classes) for top in kept]
    return [multilabel_metrics(scores, targets, threshold=0.0) for scores in kept]


def headline(task: str) -> str:
    """The metric that picks the best head and leads the summary."""
    return "top1" if task == "single" else "mAP"


def score(scores: torch.Tensor, targets: torch.Tensor, task: str, threshold: float = 0.0) -> dict[str, float]:
    if task == "single":
        return classification_metrics(scores, targets)
    return multilabel_metrics(scores, targets, threshold)
