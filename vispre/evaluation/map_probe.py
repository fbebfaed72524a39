"""The MAP probe: multihead attention pooling over the frozen tokens, then a linear classifier.

As big_vision's MAPHead (and timm's AttentionPoolLatent, which it is built from): a learned query
attends to the last block's tokens, then a LayerNorm + MLP residual block, then a classifier:

    z = MHA(probe, tokens) ;  z = z + MLP(LN(z)) ;  logits = z W + b     (W, b zero-initialised)

trained with AdamW, warm-up and cosine, on cached (or streamed) tokens. Cross-entropy for
single-label sets, a sigmoid per class (binary cross-entropy) for multi-label ones. ``MapHead`` is
one head, the ordinary way; ``MapGrid`` is L copies of it, one per learning rate, trained in one
pass (the attention folded, vispre.evaluation.stacked).
"""

from __future__ import annotations

import torch
from timm.layers import AttentionPoolLatent
from torch import nn

from .stacked import FoldedCrossAttention, StackedLayerNorm, StackedLinear, StackedMlp, lr_shapes


class MapHead(nn.Module):
    """One MAP probe: tokens [B, T, D] -> logits [B, C]."""

    def __init__(self, dim: int, num_classes: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.pool = AttentionPoolLatent(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, norm_layer=nn.LayerNorm)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(tokens.float()))


class MapGrid(nn.Module):
    """L MAP heads that start as copies of ``head``; tokens [B, T, D] -> logits [B, L, C]."""

    def __init__(self, head: MapHead, lrs: list[float]):
        super().__init__()
        pool, grid, dim = head.pool, len(lrs), head.fc.in_features
        self.latent = nn.Parameter(pool.latent.detach()[0].unsqueeze(0).expand(grid, -1, -1).clone())  # [L, Q, D]
        self.q = StackedLinear(pool.q, grid)
        self.attention = FoldedCrossAttention(pool.kv.weight[:dim], pool.kv, slice(dim, 2 * dim), pool.proj,
                                              pool.num_heads, grid)
        self.norm, self.mlp = StackedLayerNorm(pool.norm, grid), StackedMlp(pool.mlp, grid)
        self.fc = StackedLinear(head.fc, grid)
        self.register_buffer("lrs", torch.tensor(lrs, dtype=torch.float32))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.float()
        queries = self.q(self.latent).unsqueeze(1)  # [L, 1, Q, D]: the same for every image
        z = self.attention(queries, tokens)  # [L, B, Q, D]
        z = z + self.mlp(self.norm(z))
        return self.fc(z[:, :, 0]).transpose(0, 1)  # the first query token (timm's pool_type="token")

    def param_lrs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return lr_shapes(self, self.lrs)

    def head_state(self, i: int) -> dict[str, torch.Tensor]:
        """Head i's parameters under MapHead's names (the key bias is left out: it cancels)."""
        dim = self.latent.shape[-1]
        kv_bias = torch.cat([torch.zeros(dim), self.attention.value.bias[i].detach().cpu()])
        kv_weight = torch.cat([self.attention.key_weight[i].T, self.attention.value.weight[i].T]).detach().cpu()
        out = {"pool.latent": self.latent[i:i + 1], "pool.q.weight": self.q.weight[i].T, "pool.q.bias": self.q.bias[i],
               "pool.kv.weight": kv_weight, "pool.kv.bias": kv_bias,
               "pool.proj.weight": self.attention.out.weight[i].T, "pool.proj.bias": self.attention.out.bias[i],
               "pool.norm.weight": self.norm.weight[i], "pool.norm.bias": self.norm.bias[i],
               "pool.mlp.fc1.weight": self.mlp.fc1.weight[i].T, "pool.mlp.fc1.bias": self.mlp.fc1.bias[i],
               "pool.mlp.fc2.weight": self.mlp.fc2.weight[i].T, "pool.mlp.fc2.bias": self.mlp.fc2.bias[i],
               "fc.weight": self.fc.weight[i].T, "fc.bias": self.fc.bias[i]}
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}
