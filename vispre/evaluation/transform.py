"""The deterministic evaluation transform: resize, centre crop, normalise (timm's eval transform).

Every source (encoded bytes, numpy arrays, PIL images) becomes a uint8 [3, size, size] tensor in the
loader workers; normalisation to floats happens batched on the device (``normalize``), so loader
queues carry 4x fewer bytes. The settings come from the encoder's ``pretrained_cfg`` like timm's
``resolve_data_config`` + ``create_transform(is_training=False)``: shorter side to
``floor(size / crop_pct)``, then the centre ``size`` x ``size``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from ..data.decode import DEFAULT_MAX_PIXELS, check_size, decode_rgb, image_size, to_rgb
from ..data.transforms import center_crop_resize

INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                  "nearest": InterpolationMode.NEAREST}


class EvalTransform:
    def __init__(self, size: int, crop_pct: float = 0.875, interpolation: str = "bicubic",
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), max_pixels: int = DEFAULT_MAX_PIXELS):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"transform.interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
        if not 0 < crop_pct <= 1:
            raise ValueError(f"transform.crop_pct must be in (0, 1], got {crop_pct}")
        self.size, self.crop_pct, self.interpolation = int(size), float(crop_pct), interpolation
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.max_pixels = max_pixels
        self.resize = center_crop_resize(self.size, self.crop_pct)  # timm: floor(img_size / crop_pct)

    @classmethod
    def from_encoder(cls, encoder, overrides=None) -> EvalTransform:
        """Settings from ``encoder.timm_model.pretrained_cfg``; fields set in ``overrides``
        (a TransformConfig) win."""
        cfg = dict(getattr(encoder.timm_model, "pretrained_cfg", None) or {})
        chosen = {"size": cfg.get("input_size", (3, 224, 224))[-1], "crop_pct": cfg.get("crop_pct", 0.875),
                  "interpolation": cfg.get("interpolation") or "bicubic",
                  "mean": cfg.get("mean", (0.485, 0.456, 0.406)), "std": cfg.get("std", (0.229, 0.224, 0.225))}
        for key in chosen:
            value = getattr(overrides, key, None) if overrides is not None else None
            if value is not None:
                chosen[key] = value
        return cls(**chosen)

    def describe(self) -> dict[str, Any]:
        """What the protocol records (and the feature cache is keyed on)."""
        return {"resize_shorter": self.resize, "center_crop": self.size, "crop_pct": self.crop_pct,
                "interpolation": self.interpolation, "mean": self.mean, "std": self.std,
                "antialias": True, "resampling": "torchvision.transforms.v2.functional.resize on uint8"}

    # -- images -> uint8 [3, size, size] -------------------------------------------------------------
    def crop(self, image: torch.Tensor) -> torch.Tensor:
        image = TF.resize(image, [self.resize], interpolation=INTERPOLATIONS[self.interpolation], antialias=True)
        return TF.center_crop(image, [self.size, self.size]).contiguous()

    def image(self, value) -> torch.Tensor:
        """Encoded bytes, an HxWx3 uint8 array or a PIL image."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = bytes(value)
            width, height = image_size(value)
            check_size(width, height, self.max_pixels)
            value, _ = decode_rgb(value, min(width, height) / self.resize)  # JPEG: decode no larger than needed
        elif isinstance(value, Image.Image):
            value = np.asarray(to_rgb(value))
        array = np.asarray(value)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {array.dtype} {array.shape}")
        if not (array.flags.writeable and array.flags.c_contiguous):  # decoders may return read-only buffers
            array = array.copy()
        return self.crop(torch.from_numpy(array).permute(2, 0, 1))

    def __call__(self, data: bytes, generator: torch.Generator | None = None) -> dict:
        """The interface of vispre.data's transforms (shard samples: bytes -> {"image": ...})."""
        return {"image": self.image(data)}

    # -- batched, on the device ----------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float (x / 255 - mean) / std."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean) / std
