"""From shard URLs to batches: ``build_loader(DataConfig(...), rank, world_size)``.

Stages, in the order data flows: urls (specs, opening) -> tar (raw samples) -> stream (split by
slot, shuffle, resume) -> transforms (decode, crop) -> loader (one rank's epochs and state).
"""

from .loader import StreamLoader
from .pipeline import DataConfig, build_loader, build_transform
from .skips import SkipCounter, SkipSample
from .stream import RankLayout, ShardStream
from .transforms import CenterCrop, ClipFrames, CropGroup, RandomViews, SampleDecoder
from .urls import ShardSet, parse_spec

__all__ = ["DataConfig", "build_loader", "build_transform", "StreamLoader", "SkipCounter", "SkipSample",
           "RankLayout", "ShardStream", "CenterCrop", "ClipFrames", "CropGroup", "RandomViews", "SampleDecoder",
           "ShardSet", "parse_spec"]
