"""Bytes -> RGB uint8 arrays, checked before the expensive part.

The header is read first (size check against ``max_pixels`` without decoding). JPEGs decode with
libjpeg-turbo through simplejpeg, at a reduced size when the caller needs fewer pixels
(DCT scaling by 1/2, 1/4 or 1/8 costs less than decoding in full and resizing). Everything
else, and the JPEGs libjpeg-turbo cannot convert to RGB (CMYK, YCCK), goes through PIL; grey,
palette, CMYK and alpha images all come out as 3-channel RGB.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import simplejpeg
from PIL import Image

from .skips import SkipSample

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb threshold
_JPEG_MAGIC = b"\xff\xd8"

# A bad image must be counted by us, not stopped by PIL's bomb check (we do our own) or warnings.
Image.MAX_IMAGE_PIXELS = None


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone; raises SkipSample for unreadable data."""
    if not data:
        raise SkipSample("empty", "zero-byte image")
    if data[:2] == _JPEG_MAGIC:
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return width, height
        except ValueError:
            pass  # let PIL try (some valid JPEGs have headers turbojpeg rejects)
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception as e:
        raise SkipSample("decode", f"unreadable image header: {e}") from e


def check_size(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise SkipSample("decode", f"image size {width}x{height}")
    if width * height > max_pixels:
        raise SkipSample("too_large", f"{width}x{height} pixels > data.max_pixels={max_pixels}")


def jpeg_reduction(width: int, height: int, allowed: float) -> int:
    """Largest DCT scaling denominator in (1, 2, 4, 8) not above ``allowed`` (source px per needed px)."""
    factor = 1
    while factor < 8 and factor * 2 <= allowed:
        factor *= 2
    return factor


def decode_rgb(data: bytes, reduce: float = 1.0) -> tuple[np.ndarray, float]:
    """Decode to an HxWx3 uint8 array; JPEGs may be decoded ``reduce`` times smaller or less.

    Returns the array and the scale actually applied (decoded size / source size).
    """
    if data[:2] == _JPEG_MAGIC:
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            factor = jpeg_reduction(width, height, reduce)
            min_h, min_w = (math.ceil(height / factor), math.ceil(width / factor)) if factor > 1 else (0, 0)
            array = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_h, min_width=min_w)
            return array, array.shape[1] / width
        except ValueError:
            pass  # CMYK/YCCK or a JPEG turbojpeg finds too damaged: PIL decides
    return _decode_pil(data), 1.0


def _decode_pil(data: bytes) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Palette images with Transparency" notices
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return np.asarray(to_rgb(img))
    except SkipSample:
        raise
    except Exception as e:  # truncated data, garbage, unsupported format
        raise SkipSample("decode", f"{type(e).__name__}: {e}") from e


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB for every mode; transparent pixels are composited on white (as a viewer shows them)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / float grey: rescale to 8 bits
        array = np.asarray(img, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        array = np.zeros_like(array) if hi <= lo else (array - lo) * (255.0 / (hi - lo))
        img = Image.fromarray(array.astype(np.uint8))
    return img.convert("RGB")
