"""DINO's weighted k-nearest-neighbour classifier on frozen features (cosine similarity).

For a test feature x and the k training features z_j most similar to it (both L2-normalised):

    s_j = <x, z_j> ;  w_j = exp(s_j / T) ;  votes_c = sum_{j <= k} w_j [y_j = c]

(T = 0.07, k in 10, 20, 100, 200). The classes ranked by votes give top-1 / top-5. Multi-label
targets vote with their multi-hot vectors, normalised by sum_j w_j, so a class score is the
weighted fraction of neighbours that have it (thresholded at 0.5). Test images are processed in
chunks so the similarity block [chunk, N_train] stays small.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .metrics import metrics_from_top, multilabel_metrics, top_classes


@torch.no_grad()
def knn_votes(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, ks: list[int], *, num_classes: int,
              temperature: float = 0.07, task: str = "single", chunk: int = 512) -> dict[int, torch.Tensor]:
    """{k: votes [N_test, C]} on the device of the inputs."""
    train = F.normalize(train_x.float(), dim=1)
    max_k = min(max(ks), len(train))
    targets = train_y if task == "single" else train_y.float()
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, len(test_x), chunk):
        query = F.normalize(test_x[start:start + chunk].float(), dim=1)
        similarity, index = (query @ train.T).topk(max_k, dim=1)  # [b, max_k], by decreasing similarity
        weights = (similarity / temperature).exp()
        for k in ks:
            w, idx = weights[:, :k], index[:, :k]
            if task == "single":
                votes = torch.zeros(len(query), num_classes, device=query.device)
                votes.scatter_add_(1, targets[idx], w)
            else:
                votes = (w.unsqueeze(-1) * targets[idx]).sum(1) / w.sum(1, keepdim=True)
            out[k].append(votes)
    return {k: torch.cat(v) for k, v in out.items()}


def knn_eval(train, test, cfg, *, task: str, num_classes: int, device: torch.device | str = "cpu") -> dict:
    """kNN of ``cfg`` (a KnnConfig) with the last block's pooled feature; metrics for every k."""
    start = time.perf_counter()
    train_x, test_x = train.blocks[-1].to(device), test.blocks[-1].to(device)
    votes = knn_votes(train_x, train.targets.to(device), test_x, list(cfg.ks), temperature=cfg.temperature,
                      num_classes=num_classes, task=task, chunk=cfg.chunk)
    targets = test.targets.cpu()
    per_k = {}
    for k, v in votes.items():
        if task == "single":
            per_k[str(k)] = metrics_from_top(top_classes(v).cpu(), targets, num_classes)
        else:
            per_k[str(k)] = multilabel_metrics(v.cpu(), targets, threshold=0.5)
    return {"per_k": per_k, "report_k": cfg.report_k, "feature": "pooled, last block",
            "train_samples": len(train), "seconds": round(time.perf_counter() - start, 3)}
