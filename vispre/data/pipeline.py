"""The ``data:`` section of a recipe, and the one function that turns it into a loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .decode import DEFAULT_MAX_PIXELS
from .loader import StreamLoader
from .stream import Layout, ShardStream
from .transforms import CenterCrop, ClipFrames, CropGroup, RandomViews, SampleDecoder
from .urls import parse_spec


@dataclass
class DataConfig:
    spec: str = "???"  # shard spec; sources joined by '::' (see vispre.data.urls)
    weights: Optional[list[float]] = None  # mixing weight per source (resampled only)
    format: str = "image"  # image | caption | clip | labelled (see vispre.data.formats)
    resampled: bool = True  # draw shards with replacement; epochs of samples_per_epoch
    samples_per_epoch: Optional[int] = None
    batch_size: int = 64  # per rank
    workers: int = 2  # loader processes per rank (0: read in the training process)
    shuffle_buffer: int = 1000
    shard_shuffle: bool = True
    seed: int = 0
    even_batches: bool = True  # finite epochs: pad ranks to the same number of batches (valid=False)
    # transform: random multi-crop views (pretraining) or a centre crop (evaluation)
    views: list[CropGroup] = field(default_factory=lambda: [CropGroup()])
    flip: bool = True
    reduce_decode: bool = True  # decode JPEGs at 1/2, 1/4, 1/8 size when the crops allow it
    eval_size: Optional[int] = None  # set: centre crops of this size instead of random views
    crop_pct: float = 0.875
    frame_size: int = 64  # clip format: frame side in px
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_pipe: bool = False  # 'pipe:' URLs run shell commands
    http_timeout: float = 60.0
    prefetch_factor: int = 2


def build_transform(cfg: DataConfig):
    if cfg.format == "clip":
        return ClipFrames(cfg.frame_size, cfg.max_pixels)
    if cfg.eval_size:
        return CenterCrop(cfg.eval_size, cfg.crop_pct, cfg.max_pixels)
    return RandomViews(list(cfg.views), cfg.flip, cfg.max_pixels, cfg.reduce_decode)


def build_loader(cfg: DataConfig, rank: int = 0, world_size: int = 1, transform=None) -> StreamLoader:
    """The loader of one rank. ``transform`` overrides the one the config describes."""
    sources = parse_spec(cfg.spec, cfg.weights, allow_pipe=cfg.allow_pipe)
    layout = Layout(world_size=world_size, rank=rank, workers=max(cfg.workers, 1))
    decoder = SampleDecoder(cfg.format, transform if transform is not None else build_transform(cfg))
    stream = ShardStream(sources, decoder, batch_size=cfg.batch_size, layout=layout, resampled=cfg.resampled,
                         samples_per_epoch=cfg.samples_per_epoch, shuffle_buffer=cfg.shuffle_buffer,
                         shard_shuffle=cfg.shard_shuffle, seed=cfg.seed, allow_pipe=cfg.allow_pipe,
                         timeout=cfg.http_timeout)
    return StreamLoader(stream, num_workers=cfg.workers, prefetch_factor=cfg.prefetch_factor,
                        even_batches=cfg.even_batches)
