"""Annotation Bootstrapping (Ghosh & Levine 2025): value learning on the augmentation MDP.

States are views x (crops), actions are relative boxes a = bb_{1->2}, rewards are the base
method's annotation likelihoods p(l | x). For each annotation l, Q(l | x1, a) is trained by TD
against an EMA target network (stop-gradient):

    y(l) = (1 - gamma) * p_target(l | x2) + gamma * max_{a' in A'} Q_target(l | x2, a')
    L_AB = D( Q(. | x1, a_{1->2}), y )        D: cross-entropy after renormalising y (``ce``)
                                              or per-annotation binary cross-entropy (``bce``)

A' holds the boxes of the other views plus K random boxes of the same image (the max over a
continuum of boxes, approximated per l over a finite set). The base loss keeps training
p(l | x) alongside: L = w_base L_base + w_td L_AB. With gamma = 0 and no action conditioning,
Q(l | x1) is the base's own prediction and L_AB is DINO's crop-prediction loss exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..models import ActionQHead
from ..utils.diagnostics import accuracy_by_iou, majority_rate
from ..views.boxes import box_iou, candidate_boxes, relative_action
from .base import Method, SSLMethod, Step, masked, pair_mask, step_generator
from .registry import METHODS, register


@dataclass
class ABConfig:
    gamma: float = 0.8  # ours: the paper's value is not public (algorithms.md 1.7)
    divergence: str = "ce"  # ce | bce
    action_conditioned: bool = True
    num_candidates: int = 8  # random boxes in A' per target view (plus the other views' boxes)
    candidate_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    td_weight: float = 1.0
    base_weight: float = 1.0
    qhead_depth: int = 2
    qhead_heads: int = 4
    qhead_tokens: int = 4
    iou_bins: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 1.0])


@register("ab", config=ABConfig)
class AB(Method):
    """Wraps a base method (``method.base``), built from its own section of the recipe (``from_config``)."""

    @classmethod
    def from_config(cls, method_cfg, encoder) -> AB:
        base_cls = METHODS.get(method_cfg.base)
        if base_cls is None or not issubclass(base_cls, SSLMethod):
            bases = sorted(n for n, c in METHODS.items() if issubclass(c, SSLMethod))
            raise ValueError(f"method.base must be one of {bases}, got {method_cfg.base!r}")
        return cls(base_cls.from_config(method_cfg, encoder), method_cfg.ab)

    def __init__(self, base: SSLMethod, ab: ABConfig):
        super().__init__()
        if ab.divergence not in ("ce", "bce"):
            raise ValueError(f"method.ab.divergence must be 'ce' or 'bce', got {ab.divergence!r}")
        encoder = base.online["encoder"]
        if ab.action_conditioned:
            base.attach({"qhead": ActionQHead(encoder.num_features, depth=ab.qhead_depth, num_heads=ab.qhead_heads,
                                              num_action_tokens=ab.qhead_tokens)})
        self.base = base
        self.base.needs_target = True
        self.cfg = ab

    # the loop's hooks go to the base method, which owns the networks
    def set_step(self, step, total_steps, seed=0, rank=0):
        super().set_step(step, total_steps, seed, rank)
        self.base.set_step(step, total_steps, seed, rank)

    def update_target(self, momentum: float) -> None:
        self.base.update_target(momentum)

    def before_optimizer_step(self) -> None:
        self.base.before_optimizer_step()

    def export_encoder(self, which: str = "target"):
        return self.base.export_encoder(which)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        step = self.base.begin(batch, tokens=self.cfg.action_conditioned)
        base, base_metrics = self.base.base_loss(step)
        td, metrics = self.td_loss(step)
        self.base.finish_step(step)  # after both losses: DINO moves its centre here
        loss = self.cfg.base_weight * base + self.cfg.td_weight * td
        return masked(loss, step.views.valid), {**base_metrics, **metrics, "td_loss": td.detach()}

    # -- Q(l | x, a) --------------------------------------------------------------------------------
    def q_logits(self, which: str, tokens: list[torch.Tensor], actions: torch.Tensor, step: Step) -> torch.Tensor:
        """Annotation logits of Q for each view and action: tokens per group [B, n_g, T, D],
        actions [B, V, K, 5] -> [B, V, K, L]."""
        net, out, start = self.base.net(which), [], 0
        for group in tokens:
            b, n, t, d = group.shape
            a = actions[:, start:start + n]
            features = net["qhead"](group.reshape(b * n, t, d), a.reshape(b * n, a.shape[2], 5))
            out.append(features.view(b, n, a.shape[2], d))
            start += n
        return self.base.annotation_logits(which, torch.cat(out, dim=1), step)

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        """Q values in [0, 1] per annotation, in the units of the divergence."""
        return torch.sigmoid(logits) if self.cfg.divergence == "bce" else self.base.value_log_probs(logits).exp()

    # -- the TD loss --------------------------------------------------------------------------------
    def td_loss(self, step: Step) -> tuple[torch.Tensor, dict]:
        views, online, target = step.views, step.online, step.target
        boxes, flips = views.boxes, views.flips
        n_views, n_target = boxes.shape[1], target.all_pooled().shape[1]
        to_target = relative_action(boxes[:, :, None], boxes[:, None, :n_target],
                                    flips[:, :, None], flips[:, None, :n_target])  # [B, V, G, 5]
        with torch.no_grad():
            target = self.td_target(step, n_target)  # [B, G, L]
        if self.cfg.action_conditioned:
            logits = self.q_logits("online", online.tokens, to_target, step)  # [B, V, G, L]
        else:
            logits = self.base.annotation_logits("online", online.all_pooled(), step)[:, :, None].expand(
                -1, -1, n_target, -1)
        mask = pair_mask(n_views, n_target, logits.device)  # x1 != x2
        if self.cfg.divergence == "ce":
            y = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
            per_pair = -(y[:, None] * self.base.value_log_probs(logits)).sum(-1)  # [B, V, G]
        else:
            per_pair = F.binary_cross_entropy_with_logits(
                logits, target[:, None].expand_as(logits), reduction="none").sum(-1)
        loss = per_pair.mean(0)[mask].mean()
        return loss, self.value_accuracy(logits, target, boxes, mask, n_target)

    def td_target(self, step: Step, n_target: int) -> torch.Tensor:
        """y = (1 - gamma) p_target(l | x2) + gamma max_{a'} Q_target(l | x2, a')."""
        views, target = step.views, step.target
        p = step.target_probs  # [B, G, L]
        gamma = self.cfg.gamma
        if gamma == 0 or not self.cfg.action_conditioned:
            return p if gamma == 0 else (1 - gamma) * p + gamma * self.value(
                self.base.annotation_logits("target", target.all_pooled(), step))
        b, device = views.batch_size, p.device
        generator = step_generator(device, self.seed, self.step, self.rank, "candidates")
        random_boxes, random_flips = candidate_boxes(b, self.cfg.num_candidates, self.cfg.candidate_scale,
                                                     generator=generator, device=device)
        boxes = torch.cat([views.boxes, random_boxes], dim=1)  # [B, V + K, 4]: other views + random
        flips = torch.cat([views.flips, random_flips], dim=1)
        actions = relative_action(views.boxes[:, :n_target, None], boxes[:, None],
                                  views.flips[:, :n_target, None], flips[:, None])  # [B, G, V + K, 5]
        q_future = self.value(self.q_logits("target", target.tokens, actions, step))  # [B, G, V + K, L]
        not_self = torch.ones(n_target, boxes.shape[1], dtype=torch.bool, device=device)
        not_self[:, :n_target] = pair_mask(n_target, n_target, device)  # a' = "stay" is excluded
        best = q_future.masked_fill(~not_self[None, :, :, None], 0).amax(dim=2)  # per-l max over A'
        return (1 - gamma) * p + gamma * best

    @torch.no_grad()
    def value_accuracy(self, logits, target, boxes, mask, n_target) -> dict:
        """Value accuracy: argmax_l Q(l | x1, a) == argmax_l p_target(l | x2), by IoU(x1, x2)."""
        correct = logits.argmax(-1) == target.argmax(-1)[:, None]  # [B, V, G]
        iou = box_iou(boxes[:, :, None], boxes[:, None, :n_target])
        metrics = accuracy_by_iou(correct, iou, mask[None].expand_as(correct), self.cfg.iou_bins, "value_acc")
        metrics["value_acc/chance"] = majority_rate(target.argmax(-1))
        return metrics
