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

The embedded demo "scenes" are ``image`` samples whose json holds the pasted digits:
``{"labels": [3, 7], "boxes": [[x0, y0, x1, y1], ...] (pixels), "background": "astronaut"}``.
"""

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")
FORMATS = ("image", "caption", "clip", "labelled")


def frame_ext(index: int, ext: str = "jpg") -> str:
    """File extension of frame ``index`` inside a clip sample (``000.jpg``)."""
    return f"{index:03d}.{ext}"
