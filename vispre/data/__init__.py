"""From shard URLs to batches: ``build_loader(DataConfig(...), rank, world_size)``.

Stages, in the order data flows: urls (specs, opening) -> tar (raw samples) -> stream (split by
slot, shuffle, resume) -> transforms (decode, crop) -> loader (one rank's epochs and state).

The names below are imported on first use (PEP 562), so ``vispre.data.formats`` and the CLI's parser
do not pull in torch.
"""

import importlib

_WHERE = {"StreamLoader": "loader", "DataConfig": "pipeline", "build_loader": "pipeline",
          "build_transform": "pipeline", "SkipCounter": "skips", "SkipSample": "skips", "RankLayout": "stream",
          "ShardStream": "stream", "CenterCrop": "transforms", "ClipFrames": "transforms", "CropGroup": "transforms",
          "RandomViews": "transforms", "SampleDecoder": "transforms", "ShardSet": "urls", "parse_spec": "urls"}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
