"""The augmentation MDP's geometry: crop boxes in source-image coordinates.

A box is ``(x0, y0, x1, y1)`` in normalised image coordinates (0..1), so boxes of different
images and resolutions compare directly; the loader crops with them and every view keeps its box.
Pure functions on tensors; the action functions broadcast over any leading dims.
"""

from __future__ import annotations

import math

import torch

from ..data.crop_boxes import sample_boxes  # noqa: F401  (the loader draws boxes; re-exported)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes ``a[..., 4]`` and ``b[..., 4]`` (broadcast)."""
    ix = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    iy = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = ix * iy
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter).clamp(min=1e-12)


# -- the action space ---------------------------------------------------------------------------
# A view is (box b, flip f). Its centre c = ((x0 + x1) / 2, (y0 + y1) / 2), size (w, h) = (x1 - x0, y1 - y0).
# The action v1 -> v2 is written in view 1's pixel frame as the model sees it (mirrored if f1):
#   a = (s1 (cx2 - cx1) / w1, (cy2 - cy1) / h1, log(w2 / w1), log(h2 / h1), f1 xor f2),  s1 = -1 if f1 else +1.
# The flip component a4 is a float 0/1, so an action is one [..., 5] tensor.

def _centre_size(b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2, b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]


def _sign(f: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """s = 1 - 2 f: -1 for a mirrored view, +1 otherwise (1 when ``f`` is None)."""
    return torch.ones_like(like) if f is None else 1 - 2 * f.to(like.dtype)


def _flip(f: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like, dtype=torch.bool) if f is None else f.bool().expand_as(like)


def relative_action(b1: torch.Tensor, b2: torch.Tensor, f1: torch.Tensor | None = None,
                    f2: torch.Tensor | None = None) -> torch.Tensor:
    """The action v1 -> v2 (broadcast over leading dims): [..., 5], equation above."""
    cx1, cy1, w1, h1 = _centre_size(b1)
    cx2, cy2, w2, h2 = _centre_size(b2)
    dx = (cx2 - cx1) / w1
    flip = _flip(f1, dx) ^ _flip(f2, dx)
    return torch.stack([_sign(f1, dx) * dx, (cy2 - cy1) / h1, torch.log(w2 / w1), torch.log(h2 / h1),
                        flip.to(dx.dtype)], -1)


def relative_box(a: torch.Tensor) -> torch.Tensor:
    """The box reached by action ``a`` as corners (x0, y0, x1, y1) in the source view's own frame (the view
    spans [0, 1]^2, mirrored if it was flipped): the AB preprint's relative_bbox(bb1, bb2). [..., 5] -> [..., 4]:

    cx = 1/2 + a0,  cy = 1/2 + a1,  (w, h) = (e^a2, e^a3),  corners = (cx - w/2, cy - h/2, cx + w/2, cy + h/2).
    """
    cx, cy, w, h = 0.5 + a[..., 0], 0.5 + a[..., 1], torch.exp(a[..., 2]), torch.exp(a[..., 3])
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def apply_action(b1: torch.Tensor, a: torch.Tensor, f1: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Where action ``a`` leads from view (b1, f1): returns (b2 [..., 4], f2 [...] bool).

    w2 = w1 e^a2, h2 = h1 e^a3, cx2 = cx1 + s1 a0 w1, cy2 = cy1 + a1 h1, f2 = f1 xor a4.
    """
    cx1, cy1, w1, h1 = _centre_size(b1)
    w2, h2 = w1 * torch.exp(a[..., 2]), h1 * torch.exp(a[..., 3])
    cx2 = cx1 + _sign(f1, cx1) * a[..., 0] * w1
    cy2 = cy1 + a[..., 1] * h1
    b2 = torch.stack([cx2 - w2 / 2, cy2 - h2 / 2, cx2 + w2 / 2, cy2 + h2 / 2], -1)
    return b2, _flip(f1, cx2) ^ (a[..., 4] > 0.5)


def inverse_action(a: torch.Tensor) -> torch.Tensor:
    """The action v2 -> v1 given a: v1 -> v2; it needs only a, since s1 s2 = 1 - 2 a4:

    a'0 = s2 (cx1 - cx2) / w2 = -(1 - 2 a4) a0 e^-a2,  a'1 = -a1 e^-a3,  a'2 = -a2,  a'3 = -a3,  a'4 = a4.
    """
    s = 1 - 2 * a[..., 4]
    return torch.stack([-s * a[..., 0] * torch.exp(-a[..., 2]), -a[..., 1] * torch.exp(-a[..., 3]),
                        -a[..., 2], -a[..., 3], a[..., 4]], -1)


def compose_actions(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a: v1 -> v2 then b: v2 -> v3 gives c: v1 -> v3 (the offset of v3 in v2's frame is rescaled into v1's):

    c0 = a0 + (1 - 2 a4) b0 e^a2,  c1 = a1 + b1 e^a3,  c2 = a2 + b2,  c3 = a3 + b3,  c4 = a4 xor b4.
    """
    s = 1 - 2 * a[..., 4]
    xor = a[..., 4] + b[..., 4] - 2 * a[..., 4] * b[..., 4]  # xor of 0/1 floats
    return torch.stack([a[..., 0] + s * b[..., 0] * torch.exp(a[..., 2]), a[..., 1] + b[..., 1] * torch.exp(a[..., 3]),
                        a[..., 2] + b[..., 2], a[..., 3] + b[..., 3], xor], -1)


def candidate_boxes(batch_shape: int | tuple[int, ...], k: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                    generator: torch.Generator | None = None, device: torch.device | str | None = None,
                    flip_p: float = 0.5, tries: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` random views per image: RandomResizedCrop boxes in normalised coordinates, and flips.

    Area fraction ~ U(scale), log(w / h) ~ U(log ratio), with w, h in normalised units (so the ratio
    is the pixel aspect ratio relative to the image's). Each box takes the first of ``tries`` draws
    that fits in the unit square, else the largest centred box of a clamped ratio; its corner is
    uniform over the positions that keep it inside. Continuous (no pixel grid), vectorised.
    Returns (boxes [*batch_shape, k, 4], flips [*batch_shape, k] bool, True with probability flip_p).
    """
    shape = (batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape)
    device = device if device is not None else (generator.device if generator is not None else None)
    u = torch.rand(*shape, k, 2 * tries + 3, generator=generator, device=device)
    frac = scale[0] + (scale[1] - scale[0]) * u[..., :tries]
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., tries:2 * tries])
    w, h = torch.sqrt(frac * aspect), torch.sqrt(frac / aspect)  # w h = frac, w / h = aspect
    fits = (w <= 1) & (h <= 1)
    first = fits.to(torch.uint8).argmax(-1, keepdim=True)
    r = min(max(1.0, ratio[0]), ratio[1])  # fallback: the unit square's ratio, clamped
    ok = fits.any(-1)
    w = torch.where(ok, w.gather(-1, first)[..., 0], min(1.0, r))
    h = torch.where(ok, h.gather(-1, first)[..., 0], min(1.0, 1 / r))
    pos = torch.where(ok[..., None], u[..., 2 * tries:2 * tries + 2], 0.5)
    x0, y0 = pos[..., 0] * (1 - w), pos[..., 1] * (1 - h)  # corner ~ U(0, 1 - size)
    boxes = torch.stack([x0, y0, x0 + w, y0 + h], -1).clamp(0, 1)
    return boxes, u[..., -1] < flip_p


def candidate_actions(b_from: torch.Tensor, f_from: torch.Tensor | None, boxes: torch.Tensor,
                      flips: torch.Tensor | None) -> torch.Tensor:
    """Actions from view (b_from [..., 4], f_from [...]) to each candidate (boxes [..., K, 4], flips [..., K]):
    relative_action broadcast over the candidate dim, [..., K, 5]."""
    return relative_action(b_from[..., None, :], boxes, None if f_from is None else f_from[..., None], flips)
