"""What a shard spec that is no shards holds: an image folder or a Hugging Face dataset saved to disk.

vispre reads WebDataset shards only (resumable, shardable, the same bytes on every machine); a plain folder
is converted once. The loader's error then says how, in one line, instead of "no *.tar files".
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")  # Dataset(Dict).save_to_disk writes them
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")


def plain_input_hint(folder: str | Path, max_files: int = 2000) -> str | None:
    """How to convert ``folder`` into shards when it is an image / video folder or a saved HF dataset (None:
    neither). Looks at no more than ``max_files`` names (an ImageNet-sized folder answers at once)."""
    folder = Path(folder)
    if any((folder / marker).is_file() for marker in HF_MARKERS):
        return (f"data.spec {folder} is a Hugging Face dataset (save_to_disk), not shards: convert it once with "
                f"'vispre shards write hf {folder} OUT_DIR' and set data.spec=OUT_DIR")
    seen = 0
    for _, _, files in os.walk(folder):
        for name in files:
            suffix = os.path.splitext(name)[1].lower()
            if suffix in IMAGE_SUFFIXES:
                return (f"data.spec {folder} is a folder of images, not shards: convert it once with "
                        f"'vispre shards write folder {folder} OUT_DIR' (class sub-folders become labels) and set "
                        "data.spec=OUT_DIR")
            if suffix in VIDEO_SUFFIXES:
                return (f"data.spec {folder} is a folder of videos, not shards: convert it once with "
                        f"'vispre shards write video {folder} OUT_DIR' and set data.spec=OUT_DIR")
            seen += 1
            if seen >= max_files:
                return None
    return None
