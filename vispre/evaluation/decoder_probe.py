"""The decoder probe (Beyer et al. 2023, the AB paper's main probe): a small transformer decoder
whose query tokens cross-attend to the frozen tokens, then a linear classifier.

Each layer is pre-LN: self-attention among the decoder's query tokens, cross-attention from them
to the encoder's last-block tokens, an MLP, each with a residual. The paper decodes with 4 layers
(a recipe field: fewer on a CPU). Beyer et al. decode the label autoregressively as text tokens;
for classification with a fixed label set we decode it in one step from ``queries`` learned query
tokens (1 by default: a start token), and read the classes from their mean after a final
LayerNorm with a zero-initialised linear layer; a sigmoid per class for multi-label sets.
``DecoderHead`` is one head (torch's nn.MultiheadAttention, timm's Mlp); ``DecoderGrid`` is L
copies trained in one pass, with the cross-attention folded (vispre.evaluation.stacked).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_tf_
from torch import nn

from .stacked import FoldedCrossAttention, StackedLayerNorm, StackedLinear, StackedMlp, lr_shapes


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, y: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        h = self.norm1(y)
        y = y + self.self_attn(h, h, h, need_weights=False)[0]
        h = self.norm2(y)
        y = y + self.cross_attn(h, tokens, tokens, need_weights=False)[0]
        return y + self.mlp(self.norm3(y))


class DecoderHead(nn.Module):
    """One decoder probe: tokens [B, T, D] -> logits [B, C]."""

    def __init__(self, dim: int, num_classes: int, num_heads: int, layers: int = 4, queries: int = 1,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(1, queries, dim))
        trunc_normal_tf_(self.latent, std=dim ** -0.5)
        self.layers = nn.ModuleList(DecoderLayer(dim, num_heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        self.num_heads = num_heads

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.float()
        y = self.latent.expand(len(tokens), -1, -1)
        for layer in self.layers:
            y = layer(y, tokens)
        return self.fc(self.norm(y).mean(1))


def _rows(mha: nn.MultiheadAttention, part: int) -> SimpleNamespace:
    """The q (0), k (1) or v (2) rows of a MultiheadAttention's packed input projection, as a Linear."""
    rows = slice(part * mha.embed_dim, (part + 1) * mha.embed_dim)
    return SimpleNamespace(weight=mha.in_proj_weight[rows], bias=mha.in_proj_bias[rows])


class StackedDecoderLayer(nn.Module):
    def __init__(self, layer: DecoderLayer, grid: int):
        super().__init__()
        self.norm1, self.norm2 = StackedLayerNorm(layer.norm1, grid), StackedLayerNorm(layer.norm2, grid)
        self.norm3 = StackedLayerNorm(layer.norm3, grid)
        self.self_q, self.self_k, self.self_v = (StackedLinear(_rows(layer.self_attn, i), grid) for i in range(3))
        self.self_out = StackedLinear(layer.self_attn.out_proj, grid)
        self.cross_q = StackedLinear(_rows(layer.cross_attn, 0), grid)
        self.cross = FoldedCrossAttention(_rows(layer.cross_attn, 1).weight, _rows(layer.cross_attn, 2), None,
                                          layer.cross_attn.out_proj, layer.cross_attn.num_heads, grid)
        self.mlp = StackedMlp(layer.mlp, grid)
        self.num_heads = layer.self_attn.num_heads

    def self_attention(self, h: torch.Tensor) -> torch.Tensor:
        grid, batch, nq, dim = h.shape
        heads = self.num_heads

        def split(x):  # [L, B, Q, D] -> [L B, H, Q, dh]
            return x.reshape(grid * batch, nq, heads, dim // heads).transpose(1, 2)

        q, k, v = (split(proj.apply_to(h)) for proj in (self.self_q, self.self_k, self.self_v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(grid, batch, nq, dim)
        return self.self_out.apply_to(out)

    def forward(self, y: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        y = y + self.self_attention(self.norm1(y))
        y = y + self.cross(self.cross_q.apply_to(self.norm2(y)), tokens)
        return y + self.mlp(self.norm3(y))


class DecoderGrid(nn.Module):
    """L decoder heads that start as copies of ``head``; tokens [B, T, D] -> logits [B, L, C]."""

    def __init__(self, head: DecoderHead, lrs: list[float]):
        super().__init__()
        grid = len(lrs)
        self.latent = nn.Parameter(head.latent.detach().expand(grid, -1, -1).clone())  # [L, Q, D]
        self.layers = nn.ModuleList(StackedDecoderLayer(layer, grid) for layer in head.layers)
        self.norm, self.fc = StackedLayerNorm(head.norm, grid), StackedLinear(head.fc, grid)
        self.register_buffer("lrs", torch.tensor(lrs, dtype=torch.float32))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.float()
        y = self.latent.unsqueeze(1).expand(-1, len(tokens), -1, -1)  # [L, B, Q, D]
        for layer in self.layers:
            y = layer(y, tokens)
        return self.fc(self.norm(y).mean(2)).transpose(0, 1)

    def param_lrs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return lr_shapes(self, self.lrs)
