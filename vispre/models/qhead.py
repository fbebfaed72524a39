"""The action-conditioned value head Q(l | x, a) of Annotation Bootstrapping.

Given a crop's encoder tokens and K relative box actions a = (dx, dy, dlogw, dlogh, flip), it
returns one feature per action, shaped like the encoder's pooled feature, so the base method's
annotation head (e.g. DINOHead) maps it to the predicted annotation of the crop reached by a.

Layout: each action is T = 5 query tokens (4 box numbers + 1 readout). Per block:
  * self-attention among one action's T tokens: K is folded into the batch, [B*K, T, W];
  * cross-attention to the image: queries of all K actions are one sequence [B, K*T, W] against
    the image's keys/values [B, N, W]. Queries never interact in cross-attention, so this is
    exactly K separate evaluations, with no mask, while the K/V projection of the N image tokens
    runs once per image instead of K times (N >> T, so that projection dominates otherwise);
  * MLP, token-wise.
All pre-norm; the image tokens get one LayerNorm shared by the blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Attention, Mlp, trunc_normal_
from torch import nn

from .heads import init_linear


class FourierEmbed(nn.Module):
    """Scalar -> [x, sin(f x), cos(f x)] at log-spaced f -> Linear(width).

    Angular frequencies 2π * 2^[-3..3]: periods from 8 units (about the whole action range:
    |dx| <~ 1 crop width, |dlogw| <~ 2) down to 1/8, enough to resolve box offsets finely.
    """

    def __init__(self, width: int, num_freqs: int = 16):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * 2.0 ** torch.linspace(-3, 3, num_freqs), persistent=False)
        self.proj = nn.Linear(2 * num_freqs + 1, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [...] -> [..., width]
        fx = x.unsqueeze(-1) * self.freqs.to(x.dtype)
        return self.proj(torch.cat([x.unsqueeze(-1), fx.sin(), fx.cos()], -1))


class CrossAttention(nn.Module):
    """Queries [B, L, W] attend to precomputed keys/values [B, H, N, d] (see ``kv``)."""

    def __init__(self, width: int, context_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(width, width)
        self.kv_proj = nn.Linear(context_dim, 2 * width)
        self.proj = nn.Linear(width, width)

    def kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, _ = context.shape
        k, v = self.kv_proj(context).view(B, N, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return k, v  # each [B, H, N, d]

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, L, W = x.shape
        q = self.q(x).view(B, L, self.num_heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, L, d]
        return self.proj(out.transpose(1, 2).reshape(B, L, W))


class ActionBlock(nn.Module):
    def __init__(self, width: int, context_dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.self_attn = Attention(width, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(width)
        self.cross_attn = CrossAttention(width, context_dim, num_heads)
        self.norm3 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, K, T, W = x.shape
        x = x + self.self_attn(self.norm1(x.view(B * K, T, W))).view(B, K, T, W)
        k, v = self.cross_attn.kv(context)  # once per image, shared by its K actions
        x = x + self.cross_attn(self.norm2(x.view(B, K * T, W)), k, v).view(B, K, T, W)
        return x + self.mlp(self.norm3(x))


class ActionQHead(nn.Module):
    """``forward(tokens [B, N, dim], actions [B, K, 5], pooled=None) -> [B, K, dim]``.

    ``pooled`` [B, dim] (CLS / pooled feature), if given, joins the keys/values as one more
    token. ``width`` (default ``dim``) is the internal width, e.g. narrower than a ViT-B; heads
    default to width // 64. ``actions`` may also be [B, 5], giving [B, dim].
    """

    def __init__(self, dim: int, action_dim: int = 5, num_action_tokens: int = 4, depth: int = 2,
                 num_heads: int | None = None, mlp_ratio: float = 4.0, fourier_features: int = 16,
                 width: int | None = None):
        super().__init__()
        width = width or dim
        num_heads = num_heads or max(1, width // 64)
        assert width % num_heads == 0, f"width {width} not divisible by {num_heads} heads"
        assert action_dim == num_action_tokens + 1, "actions are the box numbers plus one flip bit"
        self.dim, self.width, self.num_action_tokens = dim, width, num_action_tokens
        self.fourier = FourierEmbed(width, fourier_features)
        self.token_embed = nn.Parameter(torch.zeros(num_action_tokens, width))  # which box number
        self.flip_embed = nn.Parameter(torch.zeros(width))  # added to all tokens, scaled by flip
        self.readout = nn.Parameter(torch.zeros(width))
        self.context_norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(ActionBlock(width, dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        self.apply(init_linear)
        for p in (self.token_embed, self.flip_embed, self.readout):
            trunc_normal_(p, std=0.02)

    def embed_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """[B, K, 5] -> [B, K, T, width] with T = num_action_tokens + 1 (readout last)."""
        box, flip = actions[..., : self.num_action_tokens], actions[..., self.num_action_tokens:]
        x = self.fourier(box) + self.token_embed  # [B, K, 4, W]
        x = torch.cat([x, self.readout.expand(*x.shape[:2], 1, -1)], 2)
        return x + flip.unsqueeze(-1) * self.flip_embed

    def forward(self, tokens: torch.Tensor, actions: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        single = actions.ndim == 2
        if single:
            actions = actions.unsqueeze(1)
        if pooled is not None:
            tokens = torch.cat([pooled.unsqueeze(1), tokens], 1)
        context = self.context_norm(tokens)
        x = self.embed_actions(actions.to(tokens.dtype))
        for block in self.blocks:
            x = block(x, context)
        out = self.out(self.norm(x[:, :, -1]))  # readout token: [B, K, dim]
        return out.squeeze(1) if single else out
