"""AB's image-action representation phi_AB(x, a): a transformer decoder over box tokens that cross-attends
to the encoder's tokens of view x (the AB preprint's "S"-size decoder, App. B).

An action a = (dx, dy, dlog w, dlog h, flip) (``vispre.views.boxes.relative_action``) is turned into the
target box's corners in the source view's frame, ``relative_box(a)`` = (x0, y0, x1, y1), where the source
view spans [0, 1]^2. Each action is T = 5 query tokens:

    encoding "tokens" (default, the paper's discretize(relative_bbox(bb1, bb2))): each corner coordinate is
        one of ``bins`` uniform bins over ``box_range`` -> a learned embedding, plus which-coordinate embedding;
    encoding "fourier" (ours, an option): [c, sin(f c), cos(f c)] -> Linear, plus which-coordinate embedding;
    mask_actions (the preprint's Table 5 ablation): every box token is one learned mask token, decoder kept;
    + flip * flip embedding on the 4 box tokens, and a learned readout token whose output is phi_AB;
    with ``photometric_dim`` (an option, off by default) the target view's photometric parameters
    (actions[..., 5:]) are one more token, through a Linear.

K actions of one view are packed into one sequence [K * T] (the preprint's token packing) with a
block-diagonal self-attention mask, so actions never see each other and the image's keys/values are
projected once per view; every layer is a pre-norm ``torch.nn.TransformerDecoderLayer``.
"""

from __future__ import annotations

import math

import torch
from timm.layers import trunc_normal_
from torch import nn

from ..views.boxes import relative_box
from .heads import init_linear

ENCODINGS = ("tokens", "fourier")


class FourierEmbed(nn.Module):
    """Scalar -> [x, sin(f x), cos(f x)] at log-spaced angular frequencies 2 pi 2^[-3..3] -> Linear(width)."""

    def __init__(self, width: int, num_freqs: int = 16):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * 2.0 ** torch.linspace(-3, 3, num_freqs), persistent=False)
        self.proj = nn.Linear(2 * num_freqs + 1, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [...] -> [..., width]
        fx = x.unsqueeze(-1) * self.freqs.to(x.dtype)
        return self.proj(torch.cat([x.unsqueeze(-1), fx.sin(), fx.cos()], -1))


class BoxTokens(nn.Module):
    """Actions [..., 5] -> box tokens [..., 4, width] (see the module docstring)."""

    def __init__(self, width: int, encoding: str = "tokens", bins: int = 100, box_range=(-4.5, 5.5),
                 mask_actions: bool = False):
        super().__init__()
        if encoding not in ENCODINGS:
            raise ValueError(f"action encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.encoding, self.bins, self.box_range, self.mask_actions = encoding, bins, tuple(box_range), mask_actions
        self.coordinate = nn.Parameter(torch.zeros(4, width))  # which corner coordinate
        self.flip = nn.Parameter(torch.zeros(width))
        if mask_actions:
            self.mask = nn.Parameter(torch.zeros(width))
        elif encoding == "tokens":
            self.embed = nn.Embedding(bins, width)
        else:
            self.embed = FourierEmbed(width)
        for p in (self.coordinate, self.flip, *([self.mask] if mask_actions else [])):
            trunc_normal_(p, std=0.02)
        if encoding == "tokens" and not mask_actions:
            trunc_normal_(self.embed.weight, std=0.02)

    def discretize(self, corners: torch.Tensor) -> torch.Tensor:
        """Corner coordinates -> bin indices 0..bins-1 (uniform bins over box_range, clamped)."""
        lo, hi = self.box_range
        return ((corners - lo) / (hi - lo) * self.bins).floor().clamp(0, self.bins - 1).long()

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        if self.mask_actions:
            return (self.mask + self.coordinate).expand(*actions.shape[:-1], 4, -1)
        corners = relative_box(actions.float())  # [..., 4]
        x = self.embed(self.discretize(corners)) if self.encoding == "tokens" else self.embed(corners)
        x = x.to(self.coordinate.dtype) + self.coordinate
        return x + actions[..., 4:5, None].to(x.dtype) * self.flip


class ActionDecoder(nn.Module):
    """``forward(tokens [B, N, dim], actions [B, K, 5]) -> phi [B, K, out_dim]`` (actions [B, 5] -> [B, out_dim])."""

    def __init__(self, dim: int, out_dim: int = 256, width: int = 384, depth: int = 2, num_heads: int = 6,
                 mlp_ratio: float = 4.0, encoding: str = "tokens", bins: int = 100, box_range=(-4.5, 5.5),
                 mask_actions: bool = False, photometric_dim: int = 0):
        super().__init__()
        assert width % num_heads == 0, f"width {width} not divisible by {num_heads} heads"
        self.tokens_per_action = 5 + (photometric_dim > 0)  # 4 box tokens (+ 1 photometric) + the readout
        self.box_tokens = BoxTokens(width, encoding, bins, box_range, mask_actions)
        # optional: the target view's photometric parameters (actions[..., 5:]) as one more token
        self.photometric = nn.Linear(photometric_dim, width) if photometric_dim else None
        self.readout = nn.Parameter(torch.zeros(width))
        self.context = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width))
        layer = nn.TransformerDecoderLayer(width, num_heads, int(width * mlp_ratio), dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, depth) if depth else None
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)
        self.apply(init_linear)
        trunc_normal_(self.readout, std=0.02)
        self._masks: dict = {}

    def self_attention_mask(self, k: int, device) -> torch.Tensor:
        """[K T, K T] True where attention is *not* allowed: between tokens of different actions."""
        key = (k, str(device))
        if key not in self._masks:
            action = torch.arange(k * self.tokens_per_action, device=device) // self.tokens_per_action
            self._masks[key] = action[:, None] != action[None, :]
        return self._masks[key]

    def forward(self, tokens: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        single = actions.ndim == 2
        if single:
            actions = actions.unsqueeze(1)
        b, k = actions.shape[:2]
        tokens_in = [self.box_tokens(actions[..., :5])]
        if self.photometric is not None:
            tokens_in.append(self.photometric(actions[..., 5:].to(self.readout.dtype)).unsqueeze(2))
        queries = torch.cat([*tokens_in, self.readout.expand(b, k, 1, -1)], 2)  # [B, K, T, W]
        x = queries.flatten(1, 2)  # packed: [B, K T, W]
        if self.layers is not None:
            # tgt_is_causal given: else torch compares the mask with a causal one on the host, every step
            x = self.layers(x, self.context(tokens), tgt_mask=self.self_attention_mask(k, x.device),
                            tgt_is_causal=False)
        x = x.view(b, k, self.tokens_per_action, -1)[:, :, -1]  # the readout token of each action
        out = self.out(self.norm(x))
        return out.squeeze(1) if single else out
