"""DINO (Caron et al. 2021): the online network predicts its EMA target's prototype assignment of
another crop (DINO's "student" and "teacher"; their temperatures keep DINO's names).

    p_t(l | x2) = softmax((g_t(x2) - c) / tau_t)          target: centred, sharpened
    log p_s(l | x1) = log_softmax(g_s(x1) / tau_s)        online
    L = mean over pairs (x1 != x2) of  -sum_l p_t(l | x2) log p_s(l | x1)
    c <- m c + (1 - m) mean_batch g_t(x2)                  centring (all ranks), in finish_step: after
                                                           every loss of the step has used the same c

The prototypes l are DINO's annotation space for AB_DINO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models import DINOHead, Encoder
from ..utils.distributed import all_reduce_mean
from .base import SSLMethod, Step, pair_mask
from .registry import register


@dataclass
class DINOConfig:
    out_dim: int = 65536  # prototypes (DINO ViT-B default; the CPU recipes use 1024)
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_fraction: float = 0.1  # of the run, linear 0.04 -> 0.07
    center_momentum: float = 0.9
    freeze_last_layer_steps: int = 0


def pairwise_cross_entropy(log_q: torch.Tensor, p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean over (v, g) pairs with mask[v, g] of  mean_b -sum_l p[b, g, l] log_q[b, v, l].

    log_q: [B, V, L] predictions, p: [B, G, L] targets, mask: [V, G].
    """
    with torch.autocast(log_q.device.type, enabled=False):  # float32: autocast would round the sum over the
        ce = -torch.einsum("bgl,bvl->bvg", p.float(), log_q.float())  # prototypes to bf16 (einsum is a bmm)
    # not ce[mask]: boolean indexing makes the host wait for the GPU (the result's size depends on the data)
    return torch.where(mask, ce.mean(0), 0.0).sum() / mask.sum()


@register("dino", config=DINOConfig)
class DINO(SSLMethod):
    uses_target = True

    def __init__(self, encoder: Encoder, dino: DINOConfig, augment: str = "dino"):
        head = DINOHead(encoder.num_features, dino.out_dim, dino.hidden_dim, dino.bottleneck_dim, dino.nlayers,
                        dino.norm_last_layer)
        super().__init__(encoder, {"head": head}, augment)
        self.num_annotations = dino.out_dim  # a fixed annotation set: the prototypes
        self.cfg = dino
        self.register_buffer("center", torch.zeros(1, dino.out_dim))

    @property
    def teacher_temp(self) -> float:
        warmup = self.cfg.warmup_teacher_temp_fraction * self.total_steps
        if self.step >= warmup:
            return self.cfg.teacher_temp
        t = self.step / max(warmup, 1)
        return self.cfg.warmup_teacher_temp + t * (self.cfg.teacher_temp - self.cfg.warmup_teacher_temp)

    # -- annotation space: the prototypes ----------------------------------------------------------
    def annotation_logits(self, which: str, features: torch.Tensor, step: Step | None = None) -> torch.Tensor:
        return self.net(which)["head"](features).float()

    def annotation_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax((logits - self.center) / self.teacher_temp, dim=-1)

    def value_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits / self.cfg.student_temp, dim=-1)

    # -- loss -------------------------------------------------------------------------------------
    def base_loss(self, step: Step):
        targets = step.target_probs  # [B, G, K]
        online_logits = self.annotation_logits("online", step.online.all_pooled())  # [B, V, K]
        log_q = self.value_log_probs(online_logits)
        loss = pairwise_cross_entropy(log_q, targets, pair_mask(log_q.shape[1], targets.shape[1], log_q.device))
        entropy = -(targets * targets.clamp_min(1e-12).log()).sum(-1).mean()
        metrics = {"dino_loss": loss.detach(), "teacher_entropy": entropy, "teacher_temp": self.teacher_temp}
        return loss, {**metrics, **self.crop_accuracy(online_logits, step)}

    def finish_step(self, step: Step) -> None:
        self.update_center(step.target_logits)

    @torch.no_grad()
    def update_center(self, target_logits: torch.Tensor) -> None:
        batch_center = all_reduce_mean(target_logits.flatten(0, 1).mean(0, keepdim=True))
        self.center.mul_(self.cfg.center_momentum).add_(batch_center, alpha=1 - self.cfg.center_momentum)

    def before_optimizer_step(self) -> None:
        if self.step < self.cfg.freeze_last_layer_steps:
            for p in self.online["head"].last_layer.parameters():
                p.grad = None
