"""Random crop boxes, drawn in the loader before decoding (so a JPEG is decoded only as large as its
tightest box needs). A box is ``(x0, y0, x1, y1)`` in normalised image coordinates; the relative actions
between boxes are the views layer's (``vispre.views.boxes``)."""

from __future__ import annotations

import math

import torch


def equicorrelated_uniforms(n: int, k: int, rho: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """[n, k] uniforms, each exactly U(0, 1), with the same correlation rho between any two rows (a Gaussian
    copula): z = a e + b (sum_i e_i), a = sqrt(1 - rho), b = (sqrt(1 - rho + n rho) - a) / n gives
    var z = 1, corr(z_i, z_j) = rho for rho in [-1 / (n - 1), 1]; u = Phi(z)."""
    if not -1 / max(n - 1, 1) - 1e-9 <= rho <= 1:
        raise ValueError(f"overlap (a correlation) must be in [-1/(n-1), 1] = [{-1 / max(n - 1, 1):.3f}, 1] "
                         f"for {n} views, got {rho}")
    e = torch.randn(n, k, generator=generator, dtype=torch.float64)
    a = math.sqrt(1 - rho)
    b = (math.sqrt(max(1 - rho + n * rho, 0.0)) - a) / n
    z = a * e + b * e.sum(0, keepdim=True)
    return (0.5 * (1 + torch.erf(z / math.sqrt(2)))).clamp(0, 1 - 1e-12)


def sample_boxes(n: int, width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 generator: torch.Generator | None = None, tries: int = 10, overlap: float = 0.0) -> torch.Tensor:
    """``n`` RandomResizedCrop boxes: area fraction ~ U(scale), log aspect ratio ~ U(log ratio).

    Like torchvision's RandomResizedCrop, each box takes the first of ``tries`` draws that fits
    in the image and falls back to the largest centred box of a clamped ratio. Pixel-aligned;
    returns [n, 4] (float32).

    ``overlap`` (the AB paper's crop-overlap ablation): a correlation rho between the n boxes' first-try
    area, aspect and position draws (``equicorrelated_uniforms``). Each box's own distribution stays
    exactly RandomResizedCrop's (each draw is still uniform, and a box's tries are still independent of
    each other); rho > 0 moves the mean IoU between the boxes up, rho < 0 down, 0 is plain RRC.
    """
    area = width * height
    frac = torch.empty(n, tries).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    shared = equicorrelated_uniforms(n, 4, overlap, generator) if overlap else None
    if shared is not None:
        frac[:, 0] = (scale[0] + (scale[1] - scale[0]) * shared[:, 0]).float()
        log_r[:, 0] = (math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * shared[:, 1]).float()
    aspect = torch.exp(log_r)
    w = torch.sqrt(frac * area * aspect).round()
    h = torch.sqrt(frac * area / aspect).round()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = fits.float().argmax(1, keepdim=True)  # the first fitting try (0 where none fits)
    u = torch.rand(n, 2, generator=generator).double()
    if shared is not None:
        u = shared[:, 2:]
    # fallback: whole image, ratio clamped into range, centred (as torchvision's fallback)
    r = min(max(width / height, ratio[0]), ratio[1])
    fw, fh = (width, round(width / r)) if width / height <= r else (round(height * r), height)
    ok = fits.any(1)
    bw = torch.where(ok, w.gather(1, first)[:, 0].double(), float(min(fw, width)))
    bh = torch.where(ok, h.gather(1, first)[:, 0].double(), float(min(fh, height)))
    u = torch.where(ok[:, None], u, 0.5)
    # x0 = min(floor(u (W - w + 1)), W - w): uniform over the valid integer offsets
    x0 = torch.minimum((u[:, 0] * (width - bw + 1)).floor(), width - bw)
    y0 = torch.minimum((u[:, 1] * (height - bh + 1)).floor(), height - bh)
    return torch.stack([x0 / width, y0 / height, (x0 + bw) / width, (y0 + bh) / height], 1).float()
