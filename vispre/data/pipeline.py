"""The ``data:`` section of a recipe, and the one function that turns it into a loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..utils.checks import Checks
from .decode import DEFAULT_MAX_PIXELS
from .device_decode import DECODE_DEVICES, check_decode_device
from .loader import StreamLoader
from .stream import RankLayout, ShardStream
from .tar import DEFAULT_MAX_MEMBER_BYTES
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
    # a tar member (image, video, json) larger than this is skipped unread and counted as too_large
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    allow_pipe: bool = False  # 'pipe:' URLs run shell commands
    http_timeout: float = 60.0  # seconds without a byte before an HTTP read fails
    # seconds one whole shard may take to read (a server trickling bytes); then unreadable_shard. 0: no limit
    shard_deadline: float = 1800.0
    prefetch_factor: int = 2
    # where random views' JPEGs are decoded and cropped: cpu (loader workers) | cuda (the training GPU, batched
    # torchvision.io.decode_jpeg, for when the CPU cores cannot decode fast enough; vispre.data.device_decode)
    decode_device: str = "cpu"


def check_data_config(cfg: DataConfig, prefix: str = "data") -> Checks:
    """Value checks (types are OmegaConf's): every problem names its field, e.g. ``data.views.0.size``."""
    c = Checks(prefix)
    c.at_least("batch_size", cfg.batch_size, 1)
    c.at_least("workers", cfg.workers, 0)
    c.at_least("samples_per_epoch", cfg.samples_per_epoch, 1, optional=True)
    c.at_least("shuffle_buffer", cfg.shuffle_buffer, 0)
    c.at_least("prefetch_factor", cfg.prefetch_factor, 1)
    c.one_of("decode_device", cfg.decode_device, DECODE_DEVICES)
    for i, w in enumerate(cfg.weights or []):
        c.above(f"weights.{i}", w, 0)
    random_views = cfg.eval_size is None and cfg.format != "clip"
    if random_views and not cfg.views:
        c.fail("views", "needs at least one crop group")
    for i, group in enumerate(cfg.views if random_views else []):
        c.at_least(f"views.{i}.count", group.count, 1)
        c.at_least(f"views.{i}.size", group.size, 1)
        if len(group.scale) != 2 or not 0 < group.scale[0] <= group.scale[1] <= 1:
            c.fail(f"views.{i}.scale", f"must be [low, high] with 0 < low <= high <= 1, got {list(group.scale)}")
        if len(group.ratio) != 2 or not 0 < group.ratio[0] <= group.ratio[1]:
            c.fail(f"views.{i}.ratio", f"must be [low, high] with 0 < low <= high, got {list(group.ratio)}")
    c.at_least("eval_size", cfg.eval_size, 1, optional=True)
    c.between("crop_pct", cfg.crop_pct, 0, 1, open_low=True)
    c.at_least("frame_size", cfg.frame_size, 1)
    c.at_least("max_pixels", cfg.max_pixels, 1)
    c.at_least("max_member_bytes", cfg.max_member_bytes, 1)
    c.above("http_timeout", cfg.http_timeout, 0)
    c.at_least("shard_deadline", cfg.shard_deadline, 0)
    return c


def build_transform(cfg: DataConfig):
    if cfg.format == "clip":
        return ClipFrames(cfg.frame_size, cfg.max_pixels)
    if cfg.eval_size:
        return CenterCrop(cfg.eval_size, cfg.crop_pct, cfg.max_pixels)
    return RandomViews(list(cfg.views), cfg.flip, cfg.max_pixels, cfg.reduce_decode,
                       decode=cfg.decode_device == "cpu")  # eval crops and clips: always on the CPU


def build_loader(cfg: DataConfig, rank: int = 0, world_size: int = 1, transform=None) -> StreamLoader:
    """The loader of one rank. ``transform`` overrides the one the config describes."""
    check_data_config(cfg).raise_if_any()
    check_decode_device(cfg)
    sources = parse_spec(cfg.spec, cfg.weights, allow_pipe=cfg.allow_pipe)
    layout = RankLayout(world_size=world_size, rank=rank, workers=max(cfg.workers, 1))
    decoder = SampleDecoder(cfg.format, transform if transform is not None else build_transform(cfg))
    stream = ShardStream(sources, decoder, batch_size=cfg.batch_size, layout=layout, resampled=cfg.resampled,
                         samples_per_epoch=cfg.samples_per_epoch, shuffle_buffer=cfg.shuffle_buffer,
                         shard_shuffle=cfg.shard_shuffle, seed=cfg.seed, allow_pipe=cfg.allow_pipe,
                         timeout=cfg.http_timeout, deadline=cfg.shard_deadline or None,
                         max_member_bytes=cfg.max_member_bytes)
    # pinned batches on CUDA: the trainer's non_blocking copies to the GPU are then asynchronous
    return StreamLoader(stream, num_workers=cfg.workers, prefetch_factor=cfg.prefetch_factor,
                        pin_memory=torch.cuda.is_available(), even_batches=cfg.even_batches)
