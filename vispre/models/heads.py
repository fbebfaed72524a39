"""Projection heads: DINO's prototype head, SimCLR's projection MLP, a learned logit scale, AB's annotation head."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
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


def _scalar_as_one_element(state_dict: dict, key: str) -> None:
    """A 0-dim tensor saved before these parameters became 1-element ones (FSDP2's ``fully_shard`` refuses
    0-dim parameters): the same value, reshaped so that old checkpoints still load."""
    value = state_dict.get(key)
    if torch.is_tensor(value) and value.dim() == 0:
        state_dict[key] = value.reshape(1)


class LogitScale(nn.Module):
    """A learned temperature t = exp(s), clamped at ``max_scale`` (CLIP's logit scale).

    s is a 1-element parameter (not 0-dim, which FSDP2 cannot shard); t is returned 0-dim as before."""

    def __init__(self, init: float):
        super().__init__()
        self.value = nn.Parameter(torch.tensor([float(init)]))

    def forward(self, max_scale: float) -> torch.Tensor:
        return self.value.exp().clamp(max=max_scale).reshape(())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _scalar_as_one_element(state_dict, prefix + "value")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class AnnotationHead(nn.Module):
    """AB's own annotation representation psi_AB(l) and temperature t_AB (the AB preprint's Eq. 4):

        logits(l) = t_AB <phi / |phi|, psi_AB(l) / |psi_AB(l)|> + b,     t_AB = exp(s) <= max_scale

    psi_AB is a table [L, dim] for a fixed annotation set (``num_annotations``: DINO's prototypes, a
    classifier's classes) or an MLP on per-step annotation inputs [L, in_dim] (SimCLR: the annotation
    images' pooled features; CLIP: the text tower's caption embeddings). Unit vectors are ours (as CLIP's);
    b is learned only with ``bias_init`` set (AB's ``bce``, where sigmoid outputs must reach small targets).
    """

    def __init__(self, dim: int, num_annotations: int | None = None, in_dim: int | None = None,
                 hidden_dim: int = 1024, init_scale: float = math.log(1 / 0.07), max_scale: float = 100.0,
                 bias_init: float | None = None):
        super().__init__()
        if (num_annotations is None) == (in_dim is None):
            raise ValueError("AnnotationHead needs exactly one of num_annotations (a table) and in_dim (an MLP)")
        self.max_scale = max_scale
        if num_annotations is not None:
            self.table = nn.Parameter(torch.empty(num_annotations, dim))
            trunc_normal_(self.table, std=0.02)
        else:
            self.mlp = Mlp(in_dim, hidden_dim, dim)
            self.mlp.apply(init_linear)
        self.scale = LogitScale(init_scale)
        # 1 element, not 0-dim (FSDP2); it broadcasts over the logits [..., L] alike
        self.bias = nn.Parameter(torch.tensor([float(bias_init)])) if bias_init is not None else None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _scalar_as_one_element(state_dict, prefix + "bias")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def embed(self, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """psi_AB(l) as unit vectors [L, dim]: the table, or the MLP on ``inputs`` [L, in_dim]."""
        psi = self.table if inputs is None else self.mlp(inputs)
        return F.normalize(psi.float(), dim=-1)

    def forward(self, phi: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """Logits [..., L] for image-action features phi [..., dim] against psi [L, dim] (from ``embed``)."""
        logits = self.scale(self.max_scale) * F.normalize(phi.float(), dim=-1) @ psi.T
        return logits if self.bias is None else logits + self.bias
