"""Batched photometric augmentation on the training device (DINO / SimCLR / BYOL style).

The loader only crops and flips (uint8); colour jitter, greyscale, blur and solarize are about two
thirds of the CPU cost per image, so they run here on whole batches with per-sample random
parameters and no Python loop over samples. Pipeline, as in DINO/BYOL:

    RandomApply(ColorJitter(b, c, s, h), p) -> RandomGrayscale(p) -> GaussianBlur(p, sigma)
    -> Solarize(p, threshold 0.5) -> Normalize(mean, std)

Each op matches torchvision.transforms.v2.functional (adjust_brightness/contrast/saturation/hue,
rgb_to_grayscale, gaussian_blur, solarize) on float images in 0..1. Hue is an exact HSV rotation.
Jitter order: ``order="fixed"`` (brightness, contrast, saturation, hue, the default: one pass per op) or
``"random"`` (an independent random permutation per sample, as torchvision's ColorJitter applied per
sample: 4 slots, each a per-sample blend (brightness/contrast/saturation/identity) then hue on the
samples whose op is hue; on accelerators hue is evaluated for all at every slot, ~3x the jitter cost).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ..utils.device_constants import device_constant

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma)
_DRAWS = 13  # uniforms per sample: jitter?, b, c, s, h, grey?, blur?, sigma, solarize?, 4 order keys
_CPU_CHUNK_BYTES = 2 << 20  # on the CPU, work on ~2 MiB of pixels at a time so they stay in cache
INDEX_DEVICES = ("cpu",)  # where ``on_samples`` indexes the chosen samples rather than selecting after
Range = float | tuple[float, float]


# -- ops: x is float [N, 3, H, W] in 0..1, per-sample parameters are [N] -------------------------
def _col(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1, 1)


def grey(x: torch.Tensor) -> torch.Tensor:
    """Luma L = 0.2989 R + 0.587 G + 0.114 B, [N, 1, H, W]."""
    r, g, b = x.unbind(-3)
    return (r * GREY[0]).add_(g, alpha=GREY[1]).add_(b, alpha=GREY[2]).unsqueeze(-3)


def blend(x: torch.Tensor, alpha: torch.Tensor, u: torch.Tensor | None = None,
          v: torch.Tensor | None = None) -> torch.Tensor:
    """clamp(alpha x + u L(x) + v mean(L(x)), 0, 1): every jitter op but hue is one of these:

    brightness b: (b, 0, 0);  contrast c: (c, 0, 1 - c);  saturation s: (s, 1 - s, 0).
    """
    out = x * _col(alpha)
    if u is not None or v is not None:
        lum = grey(x)
        if u is not None:
            out.add_(lum * _col(u))
        if v is not None:
            out.add_(lum.mean((-2, -1), keepdim=True) * _col(v))
    return out.clamp_(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Exact HSV hue rotation H -> H + shift (in turns), S and V kept (as torchvision's adjust_hue).

    With C = max - min: C H6 = G - B if max = R, (B - R) + 2C if max = G, else (R - G) + 4C
    (ties in that order); back to RGB (Wikipedia's closed form): channel n = (5, 3, 1) for (R, G, B) is
    V - C clamp(min(k, 4 - k), 0, 1), k = (n + H6 + 6 shift) mod 6. Masks are multiplied, not
    ``torch.where``d: where and remainder are unvectorised, several times slower, on the CPU.
    """
    r, g, b = x.unbind(-3)
    mx, mn = x.amax(-3), x.amin(-3)
    c = mx - mn
    is_r = (mx == r).to(x.dtype)
    is_g = (mx == g).to(x.dtype).mul_(1 - is_r)
    is_b = 1 - is_r - is_g
    hc = (g - b).mul_(is_r).add_((b - r).add_(c, alpha=2).mul_(is_g)).add_((r - g).add_(c, alpha=4).mul_(is_b))
    h6 = hc.div_(c.clamp_min(1e-12)).add_((shift * 6 + 6).view(-1, 1, 1))  # + 6 keeps it > 0 for fmod
    k = (h6.unsqueeze(-3) + device_constant((5.0, 3.0, 1.0), x.device, x.dtype).view(1, 3, 1, 1)).fmod_(6)
    k = (k - 2).abs_().neg_().add_(2).clamp_(0, 1)  # = clamp(min(k, 4 - k), 0, 1) for k in [0, 6)
    return torch.addcmul(mx.unsqueeze(-3), k, c.unsqueeze(-3), value=-1)


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Per-sample normalised 1-D kernels [N, 2r + 1]: w_i ~ exp(-i^2 / (2 sigma^2)) (sigma -> 0: a delta)."""
    i = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    w = torch.exp(-0.5 * (i / sigma.clamp_min(1e-6)[:, None]) ** 2)
    return w / w.sum(-1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma, reflect padding (as torchvision): one depthwise
    conv per axis over the batch folded into channels, [1, N * 3, H, W] with N * 3 groups."""
    n, ch, hgt, wid = x.shape
    radius = min(radius, hgt - 1, wid - 1)  # reflect padding needs radius < size
    k = gaussian_kernels(sigma, radius).to(x.dtype).repeat_interleave(ch, 0)  # [N * 3, K]
    y = x.reshape(1, n * ch, hgt, wid)
    y = nn.functional.pad(y, (radius, radius, 0, 0), mode="reflect")
    y = nn.functional.conv2d(y, k[:, None, None, :], groups=n * ch)
    y = nn.functional.pad(y, (0, 0, radius, radius), mode="reflect")
    y = nn.functional.conv2d(y, k[:, None, :, None], groups=n * ch)
    return y.view(n, ch, hgt, wid)


def solarize(x: torch.Tensor, apply: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """x -> 1 - x where x >= threshold, for the samples in ``apply`` (lerp with a 0/1 weight is exact)."""
    return torch.lerp(x, 1 - x, (x >= threshold).to(x.dtype).mul_(_col(apply.to(x.dtype))))


def on_samples(x: torch.Tensor, mask: torch.Tensor, fn, *args: torch.Tensor) -> torch.Tensor:
    """x with ``fn(x, *args)`` on the samples in ``mask`` (args are per sample, [N]).

    On the CPU only those samples are computed (indexing is free there); on an accelerator all are
    and then selected, since indexing by a mask would make the host wait for the device.
    """
    if x.device.type not in INDEX_DEVICES:
        return torch.where(_col(mask), fn(x, *args), x)
    idx = mask.nonzero()[:, 0]
    if len(idx):
        x = x.clone()
        x[idx] = fn(x[idx], *(a[idx] for a in args))
    return x


# -- the module -----------------------------------------------------------------------------------
class Photometric(nn.Module):
    """uint8 [N, 3, H, W] (any device) -> augmented, normalised float [N, 3, H, W].

    ``brightness``/``contrast``/``saturation`` draw factors ~ U(max(0, 1 - s), 1 + s) and ``hue``
    a shift (in turns) ~ U(-h, h), or U(lo, hi) given a pair, as torchvision's ColorJitter.
    Blur draws sigma ~ U(sigma) in pixels of the input, kernel support +-ceil(truncate sigma_max).
    Random parameters are drawn with ``generator`` (or the global RNG) on the generator's device,
    13 uniforms per sample whatever the config, so a seed gives the same output on any chunking.
    """

    def __init__(self, jitter_p: float = 0.8, brightness: Range = 0.4, contrast: Range = 0.4,
                 saturation: Range = 0.2, hue: Range = 0.1, grey_p: float = 0.2, blur_p: float = 0.0,
                 sigma: tuple[float, float] = (0.1, 2.0), solarize_p: float = 0.0,
                 mean: tuple[float, ...] | None = IMAGENET_MEAN, std: tuple[float, ...] | None = IMAGENET_STD,
                 order: str = "fixed", truncate: float = 3.0):
        super().__init__()
        if order not in ("fixed", "random"):
            raise ValueError(f"order must be 'fixed' or 'random', got {order!r}")
        self.jitter_p = jitter_p
        self.ranges = (*(_range(v, 1.0) for v in (brightness, contrast, saturation)), _range(hue, 0.0))
        self.grey_p, self.blur_p, self.sigma, self.solarize_p = grey_p, blur_p, tuple(sigma), solarize_p
        self.mean, self.std, self.order = mean, std, order
        self.radius = math.ceil(truncate * sigma[1])  # kernel support +-truncate sigma_max

    # presets ---------------------------------------------------------------------------------
    @classmethod
    def dino(cls, view: str | int = "global1", **kw) -> Photometric:
        """DINO/BYOL: jitter(0.4, 0.4, 0.2, 0.1) p 0.8, grey 0.2, then per view kind:
        global1 (view 0): blur p 1.0; global2 (view 1): blur p 0.1, solarize p 0.2; local (2+): blur p 0.5."""
        kind = view if isinstance(view, str) else ("global1", "global2")[view] if view < 2 else "local"
        extra = {"global1": {"blur_p": 1.0}, "global2": {"blur_p": 0.1, "solarize_p": 0.2},
                 "local": {"blur_p": 0.5}}[kind]
        return cls(**{**extra, **kw})

    @classmethod
    def simclr(cls, strength: float = 0.5, **kw) -> Photometric:
        """SimCLR: jitter(0.8, 0.8, 0.8, 0.2) x strength with p 0.8, grey 0.2, blur p 0.5 sigma 0.1..2.
        strength 0.5 gives MoCo v2's (0.4, 0.4, 0.4, 0.1); SimCLR's ImageNet runs used 1.0."""
        s = strength
        return cls(**{"jitter_p": 0.8, "brightness": 0.8 * s, "contrast": 0.8 * s, "saturation": 0.8 * s,
                      "hue": 0.2 * s, "grey_p": 0.2, "blur_p": 0.5, **kw})

    @classmethod
    def none(cls, **kw) -> Photometric:
        """No augmentation: only the 0..1 scaling and the normalisation."""
        return cls(**{"jitter_p": 0.0, "grey_p": 0.0, **kw})

    @staticmethod
    def preset(name: str, view: str | int = 0) -> Photometric:
        """A cached preset by name: 'dino' (per view), 'simclr' or 'none'."""
        return _preset(name, view if name == "dino" else 0)

    # forward -----------------------------------------------------------------------------------
    PARAMS = 7  # describe(): brightness, contrast, saturation, hue shift, grey, blur sigma (0: none), solarize

    def describe(self, u: torch.Tensor) -> torch.Tensor:
        """The parameters each sample was augmented with, from its draws ``u`` [N, 13]: [N, PARAMS]
        (the identity is (1, 1, 1, 0, 0, 0, 0))."""
        b, c, s, shift = self._factors(u)
        grey_on = (u[:, 5] < self.grey_p).to(b.dtype)
        lo, hi = self.sigma
        sigma = torch.where(u[:, 6] < self.blur_p, lo + (hi - lo) * u[:, 7], 0.0)
        return torch.stack([b, c, s, shift, grey_on, sigma, (u[:, 8] < self.solarize_p).to(b.dtype)], -1)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None,
                dtype: torch.dtype | str | None = None, chunk: int | None = None, return_params: bool = False):
        """``dtype``: the output dtype (float32 default; 'autocast': the active autocast dtype).
        ``chunk``: samples per pass (default: whole batch on accelerators, ~2 MiB of float pixels on the CPU).
        ``return_params``: also return ``describe`` of the draws, [N, PARAMS]."""
        n, _, h, w = images.shape
        device = images.device
        params = torch.rand(n, _DRAWS, generator=generator,
                            device=generator.device if generator is not None else device).to(device)
        if chunk is None:
            chunk = max(1, _CPU_CHUNK_BYTES // (12 * h * w)) if device.type == "cpu" else max(n, 1)
        out = torch.empty(images.shape, device=device, dtype=_out_dtype(dtype, device))
        with torch.autocast(device.type, enabled=False):  # float32 maths whatever the caller's autocast
            for i in range(0, n, chunk):  # chunks of the batch, never a loop over samples
                out[i:i + chunk] = self._augment(images[i:i + chunk], params[i:i + chunk])
        return (out, self.describe(params)) if return_params else out

    def _augment(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 if not images.is_floating_point() else images.to(torch.float32, copy=True)
        if self.jitter_p > 0:
            x = self._jitter(x, u)
        if self.grey_p > 0:
            x = torch.lerp(x, grey(x).expand_as(x), _col((u[:, 5] < self.grey_p).to(x.dtype)))
        if self.blur_p > 0:
            lo, hi = self.sigma  # sigma ~ U(lo, hi)
            blur = functools.partial(gaussian_blur, radius=self.radius)
            x = on_samples(x, u[:, 6] < self.blur_p, blur, lo + (hi - lo) * u[:, 7])
        if self.solarize_p > 0:
            x = solarize(x, u[:, 8] < self.solarize_p)
        if self.mean is not None:
            # cached on the device: x.new_tensor would copy from the host and wait for the GPU, every step
            mean = device_constant(self.mean, x.device, x.dtype).view(1, -1, 1, 1)
            std = device_constant(self.std, x.device, x.dtype).view(1, -1, 1, 1)
            x = (x - mean).div_(std)
        return x

    def _factors(self, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(b, c, s, hue shift) per sample; the identity (1, 1, 1, 0) for samples not jittered."""
        on = u[:, 0] < self.jitter_p
        return tuple(torch.where(on, lo + (hi - lo) * u[:, 1 + j], 0.0 if j == 3 else 1.0)
                     for j, (lo, hi) in enumerate(self.ranges))

    def _jitter(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        b, c, s, shift = self._factors(u)
        use = [r != (1.0, 1.0) for r in self.ranges[:3]] + [self.ranges[3] != (0.0, 0.0)]  # not the identity
        if self.order == "fixed":
            x = blend(x, b) if use[0] else x
            x = blend(x, c, None, 1 - c) if use[1] else x
            x = blend(x, s, 1 - s, None) if use[2] else x
            return on_samples(x, u[:, 0] < self.jitter_p, adjust_hue, shift) if use[3] else x
        perm = u[:, 9:13].argsort(-1)  # an independent random order per sample
        one, zero = torch.ones_like(b), torch.zeros_like(b)
        for slot in range(4):
            op = perm[:, slot]
            alpha = torch.where(op == 0, b, torch.where(op == 1, c, torch.where(op == 2, s, one)))
            x = blend(x, alpha, torch.where(op == 2, 1 - s, zero), torch.where(op == 1, 1 - c, zero))
            if use[3]:  # blend was the identity on the samples whose op here is hue
                x = on_samples(x, op == 3, adjust_hue, shift)
        return x


def _range(value: Range, centre: float) -> tuple[float, float]:
    """A jitter strength s -> (max(0, c - s), c + s) about the identity c (hue: (-s, s)); a pair as is."""
    if isinstance(value, (int, float)):
        return (max(0.0, centre - value) if centre else -float(value), centre + value)
    return float(value[0]), float(value[1])


def _out_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype == "autocast":
        on = torch.is_autocast_enabled(device.type)
        return torch.get_autocast_dtype(device.type) if on else torch.float32
    return dtype or torch.float32


@functools.cache
def _preset(name: str, view: str | int) -> Photometric:
    presets = {"dino": lambda: Photometric.dino(view), "simclr": Photometric.simclr, "none": Photometric.none}
    if name not in presets:
        raise ValueError(f"augment must be one of {sorted(presets)}, got {name!r}")
    return presets[name]()


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Photometric",
    "adjust_hue",
    "blend",
    "gaussian_blur",
    "gaussian_kernels",
    "grey",
    "on_samples",
    "solarize",
]
