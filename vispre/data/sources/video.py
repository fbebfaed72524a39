"""Video sources: video files (PyAV) and frame folders -> clip samples."""

from __future__ import annotations

import csv
import itertools
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from vispre.data.formats import frame_ext

try:
    import av
except ImportError:  # optional (vispre[video]): torchvision.io is tried instead
    av = None

from .base import (
    FRAME_EXTS,
    VIDEO_ERRORS,
    VIDEO_EXTS,
    Skipped,
    Source,
    SourceError,
    Unreadable,
    encode_jpeg,
    image_entry,
    natural_key,
    read_bytes,
    read_json,
    resize_shorter,
    unique_keys,
)

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ videos


@dataclass(frozen=True)
class Video:
    path: str  # a video file, or a folder of frames
    video_id: str
    key: str
    fps: float | None
    is_frames: bool


def probe_video(path: str) -> tuple[int, float | None]:
    """(number of frames, fps) of a video file; counts packets when the header has no count."""
    tv_io = _torchvision_io() if av is None else None  # outside the try: no decoder is fatal
    try:
        if tv_io is not None:
            pts, fps = tv_io.read_video_timestamps(path, pts_unit="sec")
            return len(pts), fps
        with av.open(path) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0) or None
            count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            return count, fps
    except VIDEO_ERRORS + (IndexError,) as err:
        raise Unreadable(path, f"not a readable video ({err})") from None


def decode_video(path: str, last: int) -> Iterator[Image.Image]:
    """Frames 0..last of a video file in order (decoding from the start: exact, if slower than a seek)."""
    if av is None:
        frames, _, _ = _torchvision_io().read_video(path, pts_unit="sec", output_format="THWC")
        yield from (Image.fromarray(frame.numpy()) for frame in frames[: last + 1])
        return
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            yield frame.to_image()
            if index >= last:
                return


def _torchvision_io():
    import torchvision.io  # fallback when PyAV is missing; recent torchvision has no video API

    if not hasattr(torchvision.io, "read_video"):
        raise SourceError("decoding video files needs PyAV: pip install av")
    return torchvision.io


@lru_cache(maxsize=4)  # per process: consecutive reads of one folder list it once
def list_frames(folder: str) -> tuple[list[str], list[int]]:
    """Frame file names sorted naturally, and their frame numbers: the number ending each name
    when they all have one (EpicKitchens ``frame_0000000001.jpg``), else their positions."""
    names = sorted((n for n in os.listdir(folder) if n.lower().endswith(FRAME_EXTS)), key=natural_key)
    numbers = [re.search(r"(\d+)$", Path(n).stem) for n in names]
    if all(numbers) and len({int(m.group(1)) for m in numbers}) == len(names):
        return names, [int(m.group(1)) for m in numbers]
    return names, list(range(len(names)))


def load_narrations(path: str | Path) -> dict[str, list[tuple[int, int, str]]]:
    """video_id -> [(start_frame, stop_frame, narration)] sorted, from a CSV or a JSON list."""
    required = ("video_id", "start_frame", "stop_frame", "narration")
    if str(path).lower().endswith(".json"):
        rows = read_json(path, "narrations")
        rows = rows.get("annotations", rows) if isinstance(rows, dict) else rows
    else:
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except OSError as err:
            raise SourceError(f"cannot read narrations file {path}: {err}") from None
    table: dict[str, list[tuple[int, int, str]]] = {}
    for i, row in enumerate(rows):
        missing = [c for c in required if c not in row]
        if missing:
            raise SourceError(f"narrations file {path}: row {i} has no column {missing[0]!r}")
        table.setdefault(str(row["video_id"]), []).append(
            (int(row["start_frame"]), int(row["stop_frame"]), str(row["narration"])))
    return {vid: sorted(entries) for vid, entries in table.items()}


class VideoSource(Source):
    """Video files and frame folders under ``path`` -> ``clip`` samples of ``frames_per_clip``
    frames, ``frame_stride`` source frames apart, one clip every ``clip_stride`` frames.

    ``frame_indices`` (and the narration match) count decoded frames from 0 in video files, and
    use the numbers in the file names in frame folders (EpicKitchens frames start at 1)."""

    format = "clip"

    def __init__(self, path: str | Path, frames_per_clip: int = 16, frame_stride: int = 1,
                 clip_stride: int | None = None, size: int | None = None, quality: int = 90,
                 narrations: str | Path | None = None, fps: float | None = None):
        super().__init__()
        if min(frames_per_clip, frame_stride, clip_stride or 1) < 1:
            raise SourceError("frames_per_clip, frame_stride and clip_stride must be >= 1")
        self.frames_per_clip, self.frame_stride, self.size, self.quality = frames_per_clip, frame_stride, size, quality
        self.span = (frames_per_clip - 1) * frame_stride + 1
        self.clip_stride = clip_stride or self.span  # default: clips side by side, no overlap
        self.narrations = load_narrations(narrations) if narrations else {}
        found = find_videos(Path(path))
        keys = unique_keys([video_id for _, video_id, _ in found])
        self.videos: list[Video] = []
        self.items = []
        for (file, video_id, frame_count), key in zip(found, keys):
            try:
                count, video_fps = (frame_count, fps) if frame_count is not None else probe_video(file)
            except Unreadable as err:
                log.warning("skipping %s", err)
                self.skipped.append(Skipped(err.path, err.reason))
                continue
            if count < self.span:
                self.skipped.append(Skipped(file, f"{count} frames, fewer than one clip ({self.span})"))
                continue
            self.items += [(len(self.videos), s) for s in range(0, count - self.span + 1, self.clip_stride)]
            self.videos.append(Video(file, video_id, key, video_fps, frame_count is not None))

    def read(self, items: Sequence, skipped: list[Skipped]) -> Iterator[dict]:
        for video_index, group in itertools.groupby(items, key=lambda item: item[0]):
            yield from self._read_clips(self.videos[video_index], [s for _, s in group], skipped)

    def _read_clips(self, video: Video, starts: list[int], skipped: list[Skipped]) -> Iterator[dict]:
        """Decode each needed frame once, and yield every clip as soon as its last frame is in."""
        clips = [list(range(s, s + self.span, self.frame_stride)) for s in starts]
        frames = self._frames(video, sorted({p for clip in clips for p in clip}))
        cache: dict[int, bytes | Unreadable] = {}
        ended = "the video ended early"
        try:
            for position, data in frames:
                cache[position] = data
                while clips and clips[0][-1] <= position:
                    clip = clips.pop(0)
                    bad = [cache[p] for p in clip if isinstance(cache[p], Unreadable)]
                    if bad:
                        log.warning("skipping clip of %s: %s", video.path, bad[0])
                        skipped.append(Skipped(bad[0].path, bad[0].reason))
                    else:
                        yield self._sample(video, clip, [cache[p] for p in clip])
                for p in [p for p in cache if not clips or p < clips[0][0]]:
                    del cache[p]  # frames no clip still needs: memory stays at about one clip
        except VIDEO_ERRORS as err:
            ended = f"decoding failed ({err})"
        for clip in clips:
            log.warning("skipping %s clip at frame %d: %s", video.path, clip[0], ended)
            skipped.append(Skipped(f"{video.path} (clip at frame {clip[0]})", ended))

    def _frames(self, video: Video, needed: list[int]) -> Iterator[tuple[int, bytes | Unreadable]]:
        """(position, JPEG bytes) for the needed frame positions, in order."""
        if not video.is_frames:
            wanted = set(needed)
            for position, img in enumerate(decode_video(video.path, needed[-1])):
                if position in wanted:
                    yield position, encode_jpeg(resize_shorter(img.convert("RGB"), self.size), self.quality)
            return
        names, _ = list_frames(video.path)
        for position in needed:
            path = str(Path(video.path) / names[position])
            try:
                data = read_bytes(Path(path))
                ext, data, img = image_entry(data, path, self.quality)
                if self.size or ext != "jpg":  # keep the original JPEG bytes when nothing changes
                    data = encode_jpeg(resize_shorter(img.convert("RGB"), self.size), self.quality)
                yield position, data
            except Unreadable as err:
                yield position, err

    def _sample(self, video: Video, clip: list[int], frames: list[bytes]) -> dict:
        indices = list_frames(video.path)[1] if video.is_frames else None
        frame_indices = [indices[p] for p in clip] if indices else list(clip)
        narration = next((text for start, stop, text in self.narrations.get(video.video_id, ())
                          if start <= frame_indices[0] <= stop), "")
        sample: dict[str, Any] = {"__key__": f"{video.key}_{frame_indices[0]:06d}"}
        sample.update({frame_ext(i): data for i, data in enumerate(frames)})
        sample["json"] = {"video_id": video.video_id, "frame_indices": frame_indices,
                          "fps": video.fps, "narration": narration}
        return sample


def find_videos(root: Path) -> list[tuple[str, str, int | None]]:
    """(path, video_id, frame count for frame folders / None for files), in sorted order."""
    if root.is_file():
        return [(str(root), root.stem, None)]
    if not root.is_dir():
        raise SourceError(f"video input {root} does not exist")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        frames = [f for f in files if f.lower().endswith(FRAME_EXTS)]
        if frames:
            found.append((folder, Path(folder).name, len(frames)))
        found += [(os.path.join(folder, f), Path(f).stem, None)
                  for f in sorted(files) if f.lower().endswith(VIDEO_EXTS)]
    if not found:
        raise SourceError(f"no video files ({', '.join(VIDEO_EXTS)}) or frame folders under {root}")
    return found
