"""Per-sample stages that run in the loader workers: raw sample -> decoded, cropped sample.

Only geometry happens here (crop boxes, resize, flip), on uint8. Photometric augmentation
(colour jitter, grey, blur, solarize) is about two thirds of the CPU cost per image and runs
batched on the training device instead (see ``vispre.views``). Every class is module-level and
picklable so the pipeline works with spawn/forkserver workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torchvision.transforms.v2.functional as TF

from . import formats
from .crop_boxes import sample_boxes
from .decode import DEFAULT_MAX_PIXELS, check_size, decode_rgb, image_size
from .skips import SkipSample


@dataclass
class CropGroup:
    """``count`` random crops of ``size`` px covering a ``scale`` fraction of the image area."""

    count: int = 2
    size: int = 224
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    # correlation of the group's box draws (crop_boxes.sample_boxes): each box stays RandomResizedCrop's,
    # the mean IoU between them moves up (> 0) or down (< 0, down to -1 / (count - 1)); 0: independent
    overlap: float = 0.0


def _to_chw(array) -> torch.Tensor:
    # A channels-last view: torchvision's uint8 antialiased resize has its fast path for it. Arrays over
    # PIL's buffer are read-only, which torch.from_numpy warns about: copied (~10 us for 224 px, << decode).
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).permute(2, 0, 1)


class RandomViews:
    """Multi-crop views for pretraining: every view keeps its box and flip.

    Boxes are drawn from the header's image size before decoding, so a JPEG is decoded only as
    large as the most demanding box needs (a 96 px crop of a 512 px image decodes at 1/2 or 1/4).
    """

    def __init__(self, groups: list[CropGroup], flip: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
                 reduce_decode: bool = True, decode: bool = True):
        """``decode=False`` (``data.decode_device: cuda``): boxes and flips only, the encoded image passed on
        for ``vispre.data.device_decode`` to decode and crop on the GPU."""
        self.groups = [g if isinstance(g, CropGroup) else CropGroup(**g) for g in groups]
        self.flip = flip
        self.max_pixels = max_pixels
        self.reduce_decode = reduce_decode
        self.decode = decode

    def __call__(self, data: bytes, generator: torch.Generator) -> dict:
        width, height = image_size(data)
        check_size(width, height, self.max_pixels)
        boxes = [sample_boxes(g.count, width, height, g.scale, g.ratio, generator, overlap=g.overlap)
                 for g in self.groups]
        if not self.decode:
            return self.undecoded(data, boxes, width, height, generator)
        # source pixels per output pixel, for the tightest box: how much smaller we may decode
        allowed = min(float(min((b[:, 2] - b[:, 0]).min() * width, (b[:, 3] - b[:, 1]).min() * height)) / g.size
                      for b, g in zip(boxes, self.groups))
        array, _ = decode_rgb(data, allowed if self.reduce_decode else 1.0)
        image = _to_chw(array)
        h, w = image.shape[1:]
        all_boxes = torch.cat(boxes)
        n = len(all_boxes)
        flips = torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        views, i = [], 0
        scale = torch.tensor([w, h, w, h])
        for b, g in zip(boxes, self.groups):
            crops = []
            for box in b:
                x0, y0, x1, y1 = (box * scale).round().long().tolist()
                x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
                crops.append(TF.resized_crop(image, y0, x0, y1 - y0, x1 - x0, [g.size, g.size], antialias=True))
                crops[-1] = crops[-1].flip(-1) if flips[i] else crops[-1]
                # the box actually cropped, on the decoded pixel grid (a reduced decode rounds coarser)
                all_boxes[i] = torch.tensor([x0, y0, x1, y1]) / scale
                i += 1
            views.append(torch.stack(crops).contiguous())
        return {"views": views, "boxes": all_boxes, "flips": flips, "image_size": torch.tensor([width, height])}

    def undecoded(self, data: bytes, boxes: list[torch.Tensor], width: int, height: int,
                  generator: torch.Generator) -> dict:
        """The same draws as a decoded sample (boxes, then flips), the boxes on the full-size pixel grid:
        ``crop_pixels`` [V, 4] (x0, y0, x1, y1) and ``view_groups`` [G, 2] (count, size) for the device."""
        all_boxes = torch.cat(boxes)
        n = len(all_boxes)
        flips = torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        scale = torch.tensor([width, height, width, height])
        pixels = (all_boxes * scale).round().long()
        pixels[:, 2] = torch.maximum(pixels[:, 2], pixels[:, 0] + 1)
        pixels[:, 3] = torch.maximum(pixels[:, 3], pixels[:, 1] + 1)
        return {"jpeg": data, "crop_pixels": pixels, "boxes": pixels / scale, "flips": flips,
                "view_groups": torch.tensor([[g.count, g.size] for g in self.groups]),
                "image_size": torch.tensor([width, height])}


def center_crop_resize(size: int, crop_pct: float) -> int:
    """The shorter side to resize to before a centre ``size`` crop: timm's ``floor(size / crop_pct)``
    (the one rule for vispre's loaders and probes)."""
    return math.floor(size / crop_pct)


class CenterCrop:
    """Evaluation transform: resize the shorter side to ``center_crop_resize(size, crop_pct)``, take the centre
    ``size``."""

    def __init__(self, size: int = 224, crop_pct: float = 0.875, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.size = size
        self.crop_pct = crop_pct
        self.max_pixels = max_pixels

    def image(self, data: bytes) -> torch.Tensor:
        width, height = image_size(data)
        check_size(width, height, self.max_pixels)
        resize = center_crop_resize(self.size, self.crop_pct)
        array, _ = decode_rgb(data, min(width, height) / resize)
        image = TF.resize(_to_chw(array), [resize], antialias=True)
        return TF.center_crop(image, [self.size, self.size]).contiguous()

    def __call__(self, data: bytes, generator: torch.Generator | None = None) -> dict:
        return {"image": self.image(data)}


class ClipFrames:
    """Every frame of a clip sample, each centre-cropped to ``size`` (crop_pct 1): [T, 3, size, size]."""

    def __init__(self, size: int = 64, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.frame = CenterCrop(size, crop_pct=1.0, max_pixels=max_pixels)

    def __call__(self, frames: list[bytes], generator: torch.Generator | None = None) -> dict:
        return {"frames": torch.stack([self.frame.image(f) for f in frames])}


class SampleDecoder:
    """Raw sample -> training sample for one format (see ``formats``): image fields + metadata."""

    def __init__(self, format: str, transform):
        if format not in formats.FORMATS:
            raise ValueError(f"data.format must be one of {formats.FORMATS}, got {format!r}")
        self.format = format
        self.transform = transform

    def __call__(self, raw: dict, generator: torch.Generator) -> dict:
        out = {"__key__": raw["__key__"], "__url__": raw["__url__"], "json": formats.metadata(raw)}
        if self.format == "clip":
            out.update(self.transform(formats.clip_frames(raw), generator))
            return out
        out.update(self.transform(formats.image_bytes(raw), generator))
        if self.format == "image":
            out["txt"] = formats.caption(raw)
        elif self.format == "caption":
            out["captions"] = formats.captions(raw)
        elif self.format == "labelled":
            out["cls"] = formats.label(raw)
        return out


def collate(samples: list[dict]) -> dict:
    """Stack tensors (lists of tensors per position), ints become a tensor, the rest stay lists."""
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        first = values[0]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, list) and first and all(isinstance(v, torch.Tensor) for v in first):
            batch[key] = [torch.stack(group) for group in zip(*values)]
        elif isinstance(first, (int, bool)) and not isinstance(first, str):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


__all__ = ["CropGroup", "RandomViews", "CenterCrop", "ClipFrames", "SampleDecoder", "collate", "SkipSample"]
