"""The sample formats vispre reads and writes (one WebDataset sample = files sharing a key).

Keys are ``[A-Za-z0-9_-]+`` (webdataset splits member names at the first dot). Shard
directories carry ``sizes.json`` (shard file name -> number of samples) when vispre wrote them.

``image``    images as img2dataset writes them (e.g. CC12M)::

                 KEY.jpg | KEY.png | KEY.webp     the image (first of IMAGE_EXTS present)
                 KEY.txt                           optional caption
                 KEY.json                          optional metadata (url, width, height, ...)

``caption``  an image with all of its captions (COCO captions: one sample per image)::

                 KEY.jpg
                 KEY.json   {"captions": ["...", "..."], "image_id": 139, ...}
                 KEY.txt    optional; one caption per line (used when json has no captions)

``clip``     an ordered clip of video frames (EpicKitchens style)::

                 KEY.000.jpg, KEY.001.jpg, ...     frames in temporal order
                 KEY.json   {"video_id": "P01_01", "frame_indices": [10, 20, ...], "fps": 50.0,
                             "narration": "open drawer", ...}

``labelled`` images with an integer class, for evaluation sets::

                 KEY.jpg (or png/webp)
                 KEY.cls    the class index as ASCII digits
                 KEY.json   optional, e.g. {"label_name": "cat"}

``trajectories`` not shards: an OGBench-layout ``.npz`` of observation arrays (``data.spec`` is its path;
             read by ``vispre.data.trajectories``, the ICVF method builds that loader itself).

The embedded demo "scenes" are ``image`` samples whose json holds the pasted digits:
``{"labels": [3, 7], "boxes": [[x0, y0, x1, y1], ...] (pixels), "background": "astronaut"}``.
"""

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")
FORMATS = ("image", "caption", "clip", "labelled")  # shard formats (SampleDecoder)
TRAJECTORIES = "trajectories"  # OGBench-layout arrays, not shards
ALL_FORMATS = (*FORMATS, TRAJECTORIES)
FRAME_FORMATS = ("clip", TRAJECTORIES)  # whole video frames / observations: the encoder sees frame_size px


def frame_ext(index: int, ext: str = "jpg") -> str:
    """File extension of frame ``index`` inside a clip sample (``000.jpg``)."""
    return f"{index:03d}.{ext}"


# ---------------------------------------------------------------------------------------------
# Readers: raw sample (ext -> bytes) -> the fields of its format. Bad input raises SkipSample.

import json as _json  # noqa: E402

from .skips import SkipSample  # noqa: E402


def image_bytes(raw: dict) -> bytes:
    for ext in IMAGE_EXTS:
        if ext in raw:
            return raw[ext]
    raise SkipSample("missing_key", f"no image ({'/'.join(IMAGE_EXTS)}) among {sorted(_exts(raw))}")


def metadata(raw: dict) -> dict:
    if "json" not in raw:
        return {}
    try:
        value = _json.loads(raw["json"])
    except ValueError as e:
        raise SkipSample("bad_json", str(e)) from e
    if not isinstance(value, dict):
        raise SkipSample("bad_json", f"json is a {type(value).__name__}, not an object")
    return value


def caption(raw: dict) -> str:
    return raw["txt"].decode("utf-8", "replace").strip() if "txt" in raw else ""


def captions(raw: dict) -> list[str]:
    found = metadata(raw).get("captions")
    if found is None and "txt" in raw:
        found = [line for line in caption(raw).splitlines() if line.strip()]
    if not found:
        raise SkipSample("missing_key", "no captions (json 'captions' or txt)")
    return [str(c) for c in found]


def label(raw: dict) -> int:
    if "cls" not in raw:
        raise SkipSample("missing_key", "no cls")
    try:
        return int(raw["cls"].decode().strip())
    except ValueError as e:
        raise SkipSample("bad_label", f"cls is not an integer: {raw['cls'][:20]!r}") from e


def clip_frames(raw: dict) -> list[bytes]:
    """The frames ``000.jpg, 001.jpg, ...`` of a clip sample, in temporal order."""
    frames = sorted((ext for ext in raw if ext.split(".")[0].isdigit() and "." in ext),
                    key=lambda e: int(e.split(".")[0]))
    if not frames:
        raise SkipSample("missing_key", f"no frames (000.jpg, ...) among {sorted(_exts(raw))}")
    return [raw[ext] for ext in frames]


def _exts(raw: dict) -> list[str]:
    return [k for k in raw if not k.startswith("__")]
