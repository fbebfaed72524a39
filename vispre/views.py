"""The augmentation MDP's geometry: crop boxes in source-image coordinates.

A box is ``(x0, y0, x1, y1)`` in normalised image coordinates (0..1), so boxes of different
images and resolutions compare directly; the loader crops with them and every view keeps its box.
Pure functions on tensors.
"""

from __future__ import annotations

import math

import torch


def sample_boxes(n: int, width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 generator: torch.Generator | None = None, tries: int = 10) -> torch.Tensor:
    """``n`` RandomResizedCrop boxes: area fraction ~ U(scale), log aspect ratio ~ U(log ratio).

    Like torchvision's RandomResizedCrop, each box takes the first of ``tries`` draws that fits
    in the image and falls back to the largest centred box of a clamped ratio. Returns [n, 4].
    """
    area = width * height
    frac = torch.empty(n, tries).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_r)
    w = torch.sqrt(frac * area * aspect).round()
    h = torch.sqrt(frac * area / aspect).round()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
    u = torch.rand(n, 2, generator=generator)
    boxes = torch.empty(n, 4)
    for i in range(n):
        if first[i] >= 0:
            bw, bh = w[i, first[i]].item(), h[i, first[i]].item()
        else:  # fallback: whole image, ratio clamped into range
            r = min(max(width / height, ratio[0]), ratio[1])
            bw, bh = (width, round(width / r)) if width / height <= r else (round(height * r), height)
            bw, bh = min(bw, width), min(bh, height)
            u[i] = 0.5  # centred, as torchvision's fallback
        x0 = min(math.floor(u[i, 0].item() * (width - bw + 1)), width - bw)
        y0 = min(math.floor(u[i, 1].item() * (height - bh + 1)), height - bh)
        boxes[i] = torch.tensor([x0 / width, y0 / height, (x0 + bw) / width, (y0 + bh) / height])
    return boxes


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes ``a[..., 4]`` and ``b[..., 4]`` (broadcast)."""
    ix = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    iy = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = ix * iy
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter).clamp(min=1e-12)
