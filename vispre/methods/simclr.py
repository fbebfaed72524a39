"""SimCLR (Chen et al. 2020): instance discrimination between two views of each image.

    z = normalise(proj(f(x)));  NT-Xent over the 2N views of a batch (all ranks):
    L = mean_i -log( exp(z_i . z_j(i) / tau) / sum_{k != i} exp(z_i . z_k / tau) )

Annotation space for AB_SimCLR: the instances of the annotation batch (all ranks). The keys are the
target network's projections k_l of each annotation image's first view, and
    p_target(l | x) = softmax_l(z_target(x) . k_l / tau_a).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models import Encoder, ProjectionHead
from ..utils.distributed import gather_no_grad, gather_with_grad, rank
from .base import SSLMethod, Step
from .registry import register


@dataclass
class SimCLRConfig:
    temperature: float = 0.2  # ours; SimCLR used 0.1-0.5 depending on batch size
    annotation_temperature: float = 0.1  # ours: sharpness of p_target(l | x) over instances
    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    proj_layers: int = 2


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """z: [N, 2, P] normalised views of N images (this rank); negatives from every rank."""
    n = z.shape[0]
    local = torch.cat([z[:, 0], z[:, 1]])  # [2N, P]
    everyone = gather_with_grad(local.contiguous())  # [2N * world, P] in rank order
    logits = local @ everyone.T / temperature
    offset = rank() * 2 * n
    own = torch.arange(2 * n, device=z.device) + offset
    logits[torch.arange(2 * n), own] = float("-inf")  # a view is not its own negative
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device) + offset
    return F.cross_entropy(logits, positives)


@register("simclr", config=SimCLRConfig)
class SimCLR(SSLMethod):
    num_annotations = None  # a per-step annotation set: the annotation batch's images

    def __init__(self, encoder: Encoder, simclr: SimCLRConfig, augment: str = "simclr"):
        proj = ProjectionHead(encoder.num_features, simclr.proj_hidden_dim, simclr.proj_dim, simclr.proj_layers)
        super().__init__(encoder, {"proj": proj}, augment)
        self.cfg = simclr
        self.annotation_dim = encoder.num_features  # what AB's own annotation head embeds: the pooled feature

    def project(self, which: str, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(which)["proj"](features).float(), dim=-1)

    def annotations(self, step: Step) -> None:
        if step.target is not None:  # AB: the instances' keys, from the target network
            with torch.no_grad():
                step.keys = gather_no_grad(self.project("target", step.target.pooled[0][:, 0]))

    def annotation_inputs(self, which: str, step: Step) -> torch.Tensor:
        """[L, D]: the annotation images' pooled features (first view) of the ``which`` network, all ranks."""
        if which == "online":
            return gather_with_grad(step.online.pooled[0][:, 0].contiguous())
        return gather_no_grad(step.target.pooled[0][:, 0])

    def annotation_logits(self, which: str, features: torch.Tensor, step: Step) -> torch.Tensor:
        return self.project(which, features) @ step.keys.T  # cosine to each instance

    def annotation_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits / self.cfg.annotation_temperature, dim=-1)

    def value_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits / self.cfg.temperature, dim=-1)

    def base_loss(self, step: Step):
        z = self.project("online", step.online.pooled[0][:, :2])  # the two global views
        loss = nt_xent(z, self.cfg.temperature)
        return loss, {"simclr_loss": loss.detach()}
