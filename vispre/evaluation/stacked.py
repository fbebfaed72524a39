"""Building blocks with L heads stacked on the first axis, for the MAP and decoder probe grids.

Each block is built from one ordinary head (timm / torch modules, so every head of the grid starts
from that head's init) and holds its parameters as [L, ...]; ``lr_shapes`` gives the per-head
learning rates of each parameter in a shape that broadcasts against it (vispre.evaluation.grid).

The cross-attention to the frozen tokens is computed in a folded form that gives the same numbers
as the standard one. For a query q (one attention head, key weights W_k, value weights W_v, the
tokens x_t):

    softmax_t(q . (x_t W_k + b_k)) = softmax_t(x_t . (W_k q))   (q . b_k is the same for every t)
    sum_t a_t (x_t W_v + b_v)      = (sum_t a_t x_t) W_v + b_v   (the weights a_t sum to 1)

so no token is ever projected: the grid's cost per image is T x D per query and attention head,
plus D x D per query, where projecting keys and values costs T x D x 2D per head of the grid
(at ViT-S/16, 224 px: 197 x 384 x 6 = 0.45 MFLOP per query against 58 MFLOP). The tokens are read
once per batch for all L heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _stack(t: torch.Tensor, heads: int) -> nn.Parameter:
    # contiguous, whatever t's strides: a clone of an expanded transposed weight keeps the transposed layout,
    # and then every step copied each weight's gradient into it (AccumulateGrad) and the optimizer ran on
    # strided memory: 10-15% of a MAP grid step on a CPU
    return nn.Parameter(t.detach().unsqueeze(0).expand(heads, *t.shape).clone(memory_format=torch.contiguous_format))


class StackedLinear(nn.Module):
    """L copies of an nn.Linear: weight [L, in, out], bias [L, out]; x [L, N, in] -> [L, N, out]."""

    def __init__(self, linear: nn.Linear, heads: int, rows: slice | None = None):
        super().__init__()
        weight, bias = linear.weight, linear.bias
        if rows is not None:  # a slice of the output features (e.g. the value half of a kv Linear)
            weight, bias = weight[rows], (None if bias is None else bias[rows])
        self.weight = _stack(weight.T, heads)
        self.bias = None if bias is None else _stack(bias, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)

    def apply_to(self, x: torch.Tensor) -> torch.Tensor:
        """x [L, ..., in] of any middle shape."""
        heads, *middle, dim = x.shape
        return self(x.reshape(heads, -1, dim)).view(heads, *middle, -1)


class StackedLayerNorm(nn.Module):
    def __init__(self, norm: nn.LayerNorm, heads: int):
        super().__init__()
        self.weight, self.bias, self.eps = _stack(norm.weight, heads), _stack(norm.bias, heads), norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [L, ..., D]."""
        shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight.view(shape) + self.bias.view(shape)


class StackedMlp(nn.Module):
    """timm's Mlp (fc1, GELU, fc2), L copies."""

    def __init__(self, mlp: nn.Module, heads: int):
        super().__init__()
        if not isinstance(mlp.act, nn.GELU) or mlp.act.approximate != "none":
            raise ValueError(f"StackedMlp supports an exact GELU, got {mlp.act}")
        self.fc1, self.fc2 = StackedLinear(mlp.fc1, heads), StackedLinear(mlp.fc2, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2.apply_to(F.gelu(self.fc1.apply_to(x)))


class FoldedCrossAttention(nn.Module):
    """Multi-head attention from queries to the frozen tokens, without projecting the tokens.

    Built from the key and value projections of one head (each an nn.Linear-like (weight [D, D],
    bias) pair in torch's [out, in] layout) and its output projection."""

    def __init__(self, key_weight: torch.Tensor, value: nn.Linear, value_rows: slice | None, out: nn.Linear,
                 num_heads: int, heads: int):
        super().__init__()
        self.key_weight = _stack(key_weight.T, heads)  # [L, D, E]; the key bias cancels in the softmax
        self.value = StackedLinear(value, heads, value_rows)
        self.out = StackedLinear(out, heads)
        self.num_heads = num_heads

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """queries [L, Bq, Q, E] (already projected, Bq = 1 when every image shares them, else B), tokens
        [B, T, D] -> [L, B, Q, E]."""
        grid, bq, nq, embed = queries.shape
        batch, _, dim = tokens.shape
        h, dh = self.num_heads, embed // self.num_heads
        q = queries.view(grid, bq, nq, h, dh) * dh ** -0.5
        folded = torch.einsum("ldhe,lbqhe->bdlqh", self.key_weight.view(grid, dim, h, dh), q)
        folded = folded.reshape(bq, dim, grid * nq * h)  # [Bq, D, L Q H]
        if bq == 1:  # [L Q H, B T]: the token axis last, so the softmax runs over contiguous memory
            scores = (folded[0].T @ tokens.reshape(-1, dim).T).view(-1, batch, tokens.shape[1]).transpose(0, 1)
        else:
            scores = torch.bmm(folded.transpose(1, 2), tokens.transpose(1, 2))  # [B, L Q H, T]
        weights = scores.softmax(dim=-1)
        pooled = torch.bmm(weights, tokens)  # [B, L Q H, D]: the attention-weighted tokens
        pooled = pooled.view(batch, grid, nq, h, dim)
        values = torch.einsum("blqhd,ldhe->lbqhe", pooled, self.value.weight.view(grid, dim, h, dh))
        values = values.reshape(grid, batch, nq, embed)
        if self.value.bias is not None:
            values = values + self.value.bias.view(grid, 1, 1, embed)
        return self.out.apply_to(values)


def lr_shapes(module: nn.Module, lrs: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, lrs shaped [L, 1, ...]) for every parameter of a stacked module."""
    return [(p, lrs.view(-1, *([1] * (p.ndim - 1)))) for p in module.parameters()]
