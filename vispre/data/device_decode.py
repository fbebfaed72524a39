"""Random views decoded and cropped on the training GPU (``data.decode_device: cuda``).

At ~1,000 img/s per GPU the loader must decode faster than the ~1,000-1,750 img/s per core measured on the
CPU path. With ``cuda``, the workers only read each JPEG's header, draw the boxes and flips (the same draws
as the CPU path) and pass the encoded bytes on; the method's ``prepare`` then decodes the whole batch with
``torchvision.io.decode_jpeg(device="cuda")`` (nvJPEG) and crops + resizes each view on the GPU
(antialiased, as the CPU path). Images that are not JPEG, or that nvJPEG refuses (CMYK), are decoded on the
CPU one by one. The crops are taken from the full-size image (the CPU path may decode a JPEG at 1/2..1/8
first, ``data.reduce_decode``), so the two paths' views differ by resampling only.

torchvision 0.29 deprecates its image decoders (a DeprecationWarning) in favour of TorchCodec, which this
environment does not have; decode_jpeg(device="cuda") is still torchvision's nvJPEG path.

Untested on a GPU here: the tests run this module with ``device="cpu"`` (torchvision's CPU decode_jpeg);
the nvJPEG call is the same function with another device.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from ..utils.errors import UserError

DECODE_DEVICES = ("cpu", "cuda")
_JPEG_MAGIC = b"\xff\xd8"


def check_decode_device(cfg, field: str = "data.decode_device") -> None:
    """``cuda`` needs a CUDA device in this process (it only applies to random views: evaluation crops and
    clips are decoded on the CPU whatever it says)."""
    random_views = cfg.eval_size is None and cfg.format != "clip"
    if random_views and cfg.decode_device == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{field}=cuda: no CUDA device here (torch.cuda.is_available() is False); "
                        f"set {field}=cpu")


def decode_images(data: list[bytes], device) -> list[torch.Tensor]:
    """Encoded images -> uint8 [3, H, W] each, on ``device``: JPEGs in one batched ``decode_jpeg`` call."""
    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
    jpeg = [i for i, d in enumerate(data) if d[:2] == _JPEG_MAGIC]
    out: list[torch.Tensor | None] = [None] * len(data)
    if jpeg:
        try:
            for i, image in zip(jpeg, decode_jpeg([encoded[i] for i in jpeg], mode=ImageReadMode.RGB,
                                                  device=device)):
                out[i] = image
        except RuntimeError:  # one JPEG nvJPEG cannot read (CMYK, damaged) fails the batch: one at a time below
            pass
    for i, image in enumerate(out):
        if image is None:
            out[i] = decode_image(encoded[i], mode=ImageReadMode.RGB).to(device, non_blocking=True)
    return out


def decode_views(batch: dict, device) -> dict:
    """An undecoded batch (``jpeg``, ``crop_pixels`` [B, V, 4], ``flips`` [B, V], ``view_groups`` [B, G, 2], from
    ``RandomViews(decode=False)``) -> the batch with ``views``: per crop group [B, n_g, 3, S_g, S_g] uint8 on
    ``device``, as the CPU path's crops. The crop geometry is read from the loader's host tensors (no sync)."""
    images = decode_images(batch["jpeg"], device)
    pixels, flips = batch["crop_pixels"].tolist(), batch["flips"].tolist()
    views, first = [], 0
    for count, size in batch["view_groups"][0].tolist():
        group = []
        for b, image in enumerate(images):
            crops = []
            for v in range(first, first + count):
                x0, y0, x1, y1 = pixels[b][v]
                crop = TF.resized_crop(image, y0, x0, y1 - y0, x1 - x0, [size, size], antialias=True)
                crops.append(crop.flip(-1) if flips[b][v] else crop)
            group.append(torch.stack(crops))
        views.append(torch.stack(group))
        first += count
    return {**batch, "views": views}
