"""Projection heads: DINO's prototype head and SimCLR's projection MLP."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn


def init_linear(m: nn.Module) -> None:
    """ViT-style init for every Linear of a head: trunc-normal(0.02) weights, zero bias."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight = g * v / ||v|| per output row (prototype).

    Hand-written rather than torch.nn.utils.parametrizations.weight_norm: plain parameters keep
    state_dict keys simple (``last_layer.v``, ``last_layer.g``) and deepcopy (the EMA teacher),
    DDP and torch.compile need no special cases. With ``fixed_norm`` there is no ``g`` at all:
    DINO's norm_last_layer=True fixes g = 1, so every prototype is a unit vector.
    """

    def __init__(self, in_features: int, out_features: int, fixed_norm: bool = True):
        super().__init__()
        # v starts like nn.Linear's default init, as in DINO (its trunc_normal init runs first)
        self.v = nn.Parameter(nn.Linear(in_features, out_features, bias=False).weight.detach().clone())
        self.g = None if fixed_norm else nn.Parameter(torch.ones(out_features, 1))

    @property
    def weight(self) -> torch.Tensor:
        w = F.normalize(self.v, dim=1)
        return w if self.g is None else self.g * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.v.shape[1]}, out_features={self.v.shape[0]}, fixed_norm={self.g is None}"


def _mlp(in_dim: int, hidden_dim: int, out_dim: int, nlayers: int, norm=None, act=nn.GELU,
         bias: bool = True) -> nn.Sequential:
    """nlayers linears; norm + act after every one but the last."""
    dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [out_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        last = i == nlayers - 1
        layers.append(nn.Linear(a, b, bias=bias or last))
        if not last:
            if norm is not None:
                layers.append(norm(b))
            layers.append(act())
    return nn.Sequential(*layers)


def _flat_apply(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply to [..., D]: Q head outputs are [B, K, D] and BatchNorm1d wants [B*K, D]."""
    return mlp(x.reshape(-1, x.shape[-1])).unflatten(0, x.shape[:-1])


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised prototypes (Caron et al. 2021).

    ``last_layer`` is exposed so the trainer can zero its gradients for the first steps.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, norm_last_layer: bool = True, use_bn: bool = False):
        super().__init__()
        nlayers = max(nlayers, 1)
        self.mlp = _mlp(in_dim, hidden_dim, bottleneck_dim, nlayers, norm=nn.BatchNorm1d if use_bn else None)
        self.mlp.apply(init_linear)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fixed_norm=norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(_flat_apply(self.mlp, x), dim=-1, eps=eps)
        return self.last_layer(x)


class ProjectionHead(nn.Module):
    """SimCLR's projection g(h): [Linear -> BN -> ReLU] * (nlayers - 1) -> Linear.

    Hidden linears carry no bias when followed by BN (it would be cancelled anyway).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, nlayers: int = 2,
                 batch_norm: bool = True):
        super().__init__()
        self.mlp = _mlp(in_dim, hidden_dim, out_dim, max(nlayers, 1), norm=nn.BatchNorm1d if batch_norm else None,
                        act=nn.ReLU, bias=not batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _flat_apply(self.mlp, x)
