"""Random shift (DrQ, Kostrikov et al. 2021): pad by replicating the border, crop back at a random offset.
The one random crop of pixel RL and video ICVF (each image its own shift).

A batched integer crop by index arithmetic (one gather for the whole batch, any dtype) rather than
torchvision's per-image ``RandomCrop``; DrQ-v2's bilinear ``grid_sample`` variant is not needed for
integer shifts. ``pad=0`` is the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: [B, C, H, W]; each image shifted by (dy, dx) ~ U{-pad..pad}^2 independently, same shape out."""
    if pad <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    oy, ox = torch.randint(0, 2 * pad + 1, (2, b, 1), device=x.device, generator=generator)
    rows = oy + torch.arange(h, device=x.device)  # [B, H]
    cols = ox + torch.arange(w, device=x.device)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices split by the channel slice go first: [B, H, W, C]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def shift_frames(obs: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Frame stacks [B, S, H, W, C] (uint8) shifted like DrQ's channel-stacked images: one shift per stack."""
    b, s, h, w, c = obs.shape
    x = obs.permute(0, 1, 4, 2, 3).reshape(b, s * c, h, w)
    return random_shift(x, pad, generator).reshape(b, s, c, h, w).permute(0, 1, 3, 4, 2)
