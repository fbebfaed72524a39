"""Few-shot probes: n labelled training images per class, several random draws, mean and std.

For each draw, an L2-regularised logistic regression on the L2-normalised last-block feature x:

    min_{W, b}  mean_i CE(x_i W + b, y_i) + l2 ||W||^2        (BCE with logits for multi-label)

solved with L-BFGS from zero (convex, so no learning rate to tune, as in CLIP's few-shot
logistic-regression probes). Multi-label: n images *containing* each class, their union.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from .grid import head_loss
from .metrics import score


def sample_shots(targets: torch.Tensor, n: int, generator: torch.Generator, task: str) -> torch.Tensor:
    """Indices of n random examples per class (fewer when a class has fewer)."""
    classes = targets.unique() if task == "single" else torch.arange(targets.shape[1])
    chosen = []
    for c in classes.tolist():
        members = (targets == c).nonzero().flatten() if task == "single" else targets[:, c].nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:n]])
    return torch.cat(chosen).unique()


def fit_logistic(x: torch.Tensor, y: torch.Tensor, *, task: str, num_classes: int, l2: float,
                 max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = head_loss(x @ weight + bias, y, task) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def fewshot_eval(train, test, cfg, *, task: str, num_classes: int, seed: int = 0) -> dict:
    """``cfg``: a FewshotConfig. {shots: {metric: {"mean", "std"}, "tries": [...]}} (on the CPU: small fits)."""
    start = time.perf_counter()
    x_train = F.normalize(train.blocks[-1].float().cpu(), dim=1)
    x_test = F.normalize(test.blocks[-1].float().cpu(), dim=1)
    y_train, y_test = train.targets.cpu(), test.targets.cpu()
    results = {}
    for n in cfg.shots:
        tries = []
        for t in range(cfg.tries):
            index = sample_shots(y_train, n, torch.Generator().manual_seed(seed * 1000 + t), task)
            weight, bias = fit_logistic(x_train[index], y_train[index], task=task, num_classes=num_classes,
                                        l2=cfg.l2, max_iter=cfg.max_iter)
            tries.append({**score(x_test @ weight + bias, y_test, task), "train_samples": len(index)})
        metrics = [k for k in tries[0] if k != "train_samples"]
        results[str(n)] = {m: {"mean": statistics.fmean(r[m] for r in tries),
                               "std": statistics.stdev(r[m] for r in tries) if len(tries) > 1 else 0.0}
                           for m in metrics}
        results[str(n)]["tries"] = tries
    return {"per_shots": results, "feature": "pooled, last block, L2-normalised",
            "seconds": round(time.perf_counter() - start, 3)}
