"""ICVF value heads on encoder features (Ghosh, Bhateja & Levine 2023; released ``icvf_networks.py``).

Multilinear (the paper's parameterisation, as the release writes it):

    phi = phi_net(s),  psi = psi_net(s+),  T(z) = T_net(psi_net(z))      MLPs, final activation on
    V(s, s+, z) = < A (T(z) * phi) + a,  B (T(z) * psi) + b >             A, B: d x d dense layers

i.e. V = [phi, 1]^T M(z) [psi, 1] with the (d+1) x (d+1) matrix of ``intent_matrix``:
M(z) = [[D A^T B D, D A^T b], [a^T B D, a^T b]], D = diag(T(z)). Values for every intent and
reward are linear in phi(s), the representation exported for downstream use.

Monolithic (ViVa's choice, the paper's ablation): V = MLP([s, s+, z]).

Both come as an ensemble of ``k`` independent heads over one shared encoder (the release's two).
Their input is the encoder's pooled feature, or (``GridFeatures``) its last feature map pooled to a
small grid and flattened, as the release's IMPALA encoder flattens its map: small frames whose
content is *where* things are (MiniGrid) need the layout a global average discards.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .exportable import exportable


class GridFeatures(nn.Module):
    """Tokens [B, N, C] of a square map (CNN cells, ViT patches) -> average-pooled to grid x grid cells,
    flattened to [B, C * grid^2] (channel-major, as ``map.flatten(1)``). No parameters."""

    def __init__(self, grid: int):
        super().__init__()
        self.grid = grid

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, c = tokens.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"grid features need a square token map, got {n} tokens")
        cells = tokens.transpose(1, 2).reshape(b, c, side, side)
        return F.adaptive_avg_pool2d(cells, self.grid).flatten(1)

    def extra_repr(self) -> str:
        return f"grid={self.grid}"


def mlp(in_dim: int, dims: list[int], activate_final: bool = True, layer_norm: bool = False) -> nn.Sequential:
    """jaxrl_m's MLP (ReLU) or LayerNormMLP (GELU then LayerNorm), xavier-uniform weights, zero biases."""
    layers: list[nn.Module] = []
    for i, d in enumerate(dims):
        linear = nn.Linear(in_dim if i == 0 else dims[i - 1], d)
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i + 1 < len(dims) or activate_final:
            layers += [nn.GELU(), nn.LayerNorm(d)] if layer_norm else [nn.ReLU()]
    return nn.Sequential(*layers)


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """Values are sums of products of ~100: float32 at least under bf16/fp16 autocast."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def dense(d: int) -> nn.Linear:
    linear = nn.Linear(d, d)
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class MultilinearValue(nn.Module):
    def __init__(self, in_dim: int, hidden_dims: list[int], layer_norm: bool = False):
        super().__init__()
        d = hidden_dims[-1]
        self.phi = mlp(in_dim, hidden_dims, layer_norm=layer_norm)
        self.psi = mlp(in_dim, hidden_dims, layer_norm=layer_norm)
        self.T = mlp(d, hidden_dims, layer_norm=layer_norm)
        self.A, self.B = dense(d), dense(d)

    def forward(self, s: torch.Tensor, g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        tz = self.T(self.psi(z))
        phi_z = full_precision(self.A(tz * self.phi(s)))
        psi_z = full_precision(self.B(tz * self.psi(g)))
        return (phi_z * psi_z).sum(-1)

    def intent_matrix(self, z: torch.Tensor) -> torch.Tensor:
        """M(z) [B, d+1, d+1] with V(s, s+, z) = [phi(s), 1] M(z) [psi(s+), 1]^T."""
        tz = self.T(self.psi(z))  # [B, d]
        wa, ba, wb, bb = self.A.weight, self.A.bias, self.B.weight, self.B.bias
        core = tz[:, :, None] * (wa.T @ wb)[None] * tz[:, None, :]  # D A^T B D
        right = tz * (wa.T @ bb)[None]  # D A^T b
        bottom = (ba @ wb)[None] * tz  # a^T B D
        corner = (ba @ bb).expand(len(tz))
        top = torch.cat([core, right[:, :, None]], 2)
        last = torch.cat([bottom, corner[:, None]], 1)[:, None, :]
        return torch.cat([top, last], 1)


class MonolithicValue(nn.Module):
    phi = None  # no separate state representation

    def __init__(self, in_dim: int, hidden_dims: list[int], layer_norm: bool = False):
        super().__init__()
        self.net = mlp(3 * in_dim, [*hidden_dims, 1], activate_final=False, layer_norm=layer_norm)

    def forward(self, s: torch.Tensor, g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return full_precision(self.net(torch.cat([s, g, z], -1)).squeeze(-1))


HEADS = {"multilinear": MultilinearValue, "monolithic": MonolithicValue}


class ValueEnsemble(nn.Module):
    """``k`` heads of one kind; ``forward`` returns [k, B]."""

    def __init__(self, kind: str, in_dim: int, hidden_dims: list[int], k: int = 2, layer_norm: bool = False):
        super().__init__()
        if kind not in HEADS:
            raise ValueError(f"method.icvf.head must be one of {sorted(HEADS)}, got {kind!r}")
        self.heads = nn.ModuleList(HEADS[kind](in_dim, list(hidden_dims), layer_norm) for _ in range(k))

    def forward(self, s: torch.Tensor, g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(s, g, z) for head in self.heads])

    def phi(self, s: torch.Tensor) -> torch.Tensor:
        """phi(s) of the first head (the exported representation)."""
        if self.heads[0].phi is None:
            raise ValueError("the monolithic ICVF head has no phi; use head: multilinear")
        return self.heads[0].phi(s)


class ValueFunction(nn.Module):
    """V(s, s+, z) on encoder outputs: the feature map ICVF reads (pooled, or ``GridFeatures`` of the tokens)
    then the ensemble; [k, B]. What an export of the whole value function holds (ViVa uses it as a reward)."""

    def __init__(self, ensemble: ValueEnsemble, grid: GridFeatures | None = None):
        super().__init__()
        self.features = grid if grid is not None else nn.Identity()
        self.ensemble = ensemble

    def forward(self, s: torch.Tensor, g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.ensemble(self.features(s), self.features(g), self.features(z))


def _in_dim(width: int, grid: int | None) -> int:
    return width * (grid ** 2 if grid else 1)


@exportable("icvf_phi")
def icvf_phi(width: int, hidden_dims: list[int], layer_norm: bool = False, grid: int | None = None) -> nn.Module:
    """phi of a multilinear head on an encoder of ``width`` features (``grid``: on its tokens, grid-pooled)."""
    phi = mlp(_in_dim(width, grid), list(hidden_dims), layer_norm=layer_norm)
    return nn.Sequential(GridFeatures(grid), phi) if grid else phi


@exportable("icvf_value")
def icvf_value(width: int, head: str, hidden_dims: list[int], ensemble: int = 2, layer_norm: bool = False,
               grid: int | None = None) -> ValueFunction:
    return ValueFunction(ValueEnsemble(head, _in_dim(width, grid), hidden_dims, ensemble, layer_norm),
                         GridFeatures(grid) if grid else None)
