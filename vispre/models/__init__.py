"""Model building blocks: timm encoders, projection heads, AB's action decoder and annotation head, CLIP text tower."""

from __future__ import annotations

from vispre.models.action_decoder import ActionDecoder
from vispre.models.encoder import Encoder, EncoderOutput
from vispre.models.heads import AnnotationHead, DINOHead, LogitScale, ProjectionHead, WeightNormLinear
from vispre.models.text import TEXT_PRESETS, TextTower

__all__ = [
    "TEXT_PRESETS",
    "ActionDecoder",
    "AnnotationHead",
    "DINOHead",
    "Encoder",
    "EncoderOutput",
    "LogitScale",
    "ProjectionHead",
    "TextTower",
    "WeightNormLinear",
    "build_encoder",
    "build_head",
    "build_text_tower",
]


def build_encoder(name: str, **kwargs) -> Encoder:
    """Any timm model name; kwargs go to timm.create_model (img_size, patch_size, drop_path_rate...)."""
    return Encoder(name, **kwargs)


def build_text_tower(preset: str = "ViT-B-16", **kwargs) -> TextTower:
    """The "tiny" preset (CPU tests) or an open_clip model name whose text config to use."""
    return TextTower(preset, **kwargs)


HEADS = {"dino": DINOHead, "simclr": ProjectionHead}


def build_head(kind: str, in_dim: int, **kwargs):
    """The base method's projection head: "dino" or "simclr"."""
    return HEADS[kind](in_dim, **kwargs)
