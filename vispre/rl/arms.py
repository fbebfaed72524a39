"""Encoder arms: which encoder an agent trains with, and what data it reads.

    scratch        a new encoder trained end to end: NatureCNN (architecture: nature, the CPU choice),
                   OGBench's impala_small (architecture: impala_small; OGBench's agents give each network
                   its own) or the export's own architecture, randomly initialised (architecture: export);
                   state observations (vectors) have no encoder, as in OGBench
    finetune       the export's weights, trained end to end (encoder_lr)
    frozen         the export, frozen: per-frame features computed once for the whole dataset, the
                   agent trains MLP heads on them (no augmentation: the features are fixed)
    random_frozen  the export's architecture, randomly initialised (one fixed draw, seed 0), frozen:
                   the floor a pretrained encoder has to beat

An export arm reads the backbone's pooled feature (``features: pooled``), its whole last feature map or
token grid flattened (``features: grid``: where things are, which pooling drops) or, for ICVF exports, the
representation ICVF learns on top of it (``features: phi``). ``encoder: timm:NAME`` stands for any timm model
instead of an export (its pretrained weights with ``pretrained``, a download; random weights otherwise), so a
public encoder is scored the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
from torch import nn

from ..export.read import load_encoder, load_exported_module
from ..models import Encoder
from .encoders import CachedFrameEncoder, FeatureEncoder, NatureCNN, PixelEncoder, precompute_features
from .ogbench_layout import ImpalaEncoder
from .rl_recipe import ArmConfig
from .transitions import Transitions

RANDOM_DRAW_SEED = 0


@dataclass
class ArmData:
    """What one (arm, seed) trains on: the agent's encoder, its train / val data, and ``observe``
    (frames -> what the encoder reads) for rollouts, None when the encoder reads frames itself."""

    encoder: nn.Module
    train: Transitions
    val: Transitions
    observe: Callable | None
    train_encoder: bool


TIMM = "timm:"


def timm_encoder(name: str, pretrained: bool) -> Encoder:
    """Any timm model as a vispre Encoder: random weights, or timm's pretrained ones (downloaded, or from the
    Hugging Face cache); a machine that cannot download them gets an error that says so."""
    if not pretrained:
        return Encoder(name)
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as e:  # offline (HF_HUB_OFFLINE, no network), an unknown name, no pretrained tag, ...
        raise RuntimeError(f"timm could not load the pretrained weights of {name!r} ({type(e).__name__}: {e}). "
                           "Offline, or no weights for this name? Set the arm's pretrained: false for random "
                           "weights, or fill the Hugging Face cache on a machine that can download.") from e
    return Encoder(name, timm_model=model).eval()


def _load_export(path: str, random_init: bool, draw_seed: int = RANDOM_DRAW_SEED, pretrained: bool = True):
    if not path:
        raise ValueError("this arm needs an exported encoder: pass --encoder DIR or set the arm's encoder field")
    if random_init:
        torch.manual_seed(draw_seed)
    if path.startswith(TIMM):
        return timm_encoder(path[len(TIMM):], pretrained and not random_init)
    return load_encoder(path, random_init=random_init)


def _feature_head(arm: ArmConfig, path: str, random_init: bool) -> nn.Module | None:
    """features: pooled or grid -> None (the backbone's own output); phi -> the ICVF export's phi module
    (random_init: the same module as built, drawn right after the backbone)."""
    if arm.features in ("pooled", "grid"):
        return None
    return load_exported_module(path, arm.features, random_init=random_init)


def _pixel_encoder(arm: ArmConfig, path: str, frame_stack: int, random_init: bool, image_size: int = 0,
                   draw_seed: int = RANDOM_DRAW_SEED) -> PixelEncoder:
    backbone = _load_export(path, random_init, draw_seed, arm.pretrained)
    return PixelEncoder(backbone, frame_stack, arm.input_size, _feature_head(arm, path, random_init),
                        batch_norm=arm.batch_norm, reads="grid" if arm.features == "grid" else "pooled",
                        image_size=image_size)


class FrozenFeatures:
    """Per-frame features of the train and val frames under one frozen encoder, computed once per arm."""

    def __init__(self, arm: ArmConfig, path: str, train: Transitions, val: Transitions, device, frame_stack: int):
        pixels = _pixel_encoder(arm, path, frame_stack, random_init=arm.kind == "random_frozen",
                                image_size=train.observations.shape[1])
        self.pixels = pixels.to(device).eval().requires_grad_(False)
        self.dim = pixels.feature_dim
        self.observe = CachedFrameEncoder(self.pixels)  # rollouts: frames -> features, shared by the seeds
        self.train = self._swap(train, device, f"{arm.name} train")
        self.val = self._swap(val, device, f"{arm.name} val")

    def _swap(self, data: Transitions, device, desc: str) -> Transitions:
        feats = precompute_features(self.pixels, data.observations, device, desc=desc)
        nxt = None
        if data.next_observations is not None:
            nxt = precompute_features(self.pixels, data.next_observations, device, desc=desc + " next")
        return data.with_observations(feats, nxt)


def build_arm(arm: ArmConfig, path: str, seed: int, train: Transitions, val: Transitions, frame_stack: int,
              frozen: FrozenFeatures | None = None) -> ArmData:
    """The encoder for one seed (trainable arms get a fresh one, seeded); ``frozen`` for frozen arms."""
    if arm.kind in ("frozen", "random_frozen"):
        if frozen is None:
            raise ValueError(f"arm {arm.name}: frozen arms need their FrozenFeatures")
        return ArmData(FeatureEncoder(frozen.dim, frame_stack), frozen.train, frozen.val, frozen.observe, False)
    torch.manual_seed(seed)
    if arm.kind == "scratch" and train.observations.ndim == 2:  # states: no encoder (OGBench's state layout)
        encoder = FeatureEncoder(train.observations.shape[1], frame_stack)
    elif arm.kind == "scratch" and arm.architecture == "nature":
        channels, size = train.observations.shape[-1], train.observations.shape[1]
        encoder = PixelEncoder(NatureCNN(channels, image_size=arm.input_size or size), frame_stack, arm.input_size)
    elif arm.kind == "scratch" and arm.architecture == "impala_small":
        channels, size = train.observations.shape[-1], train.observations.shape[1]
        encoder = ImpalaEncoder(channels * frame_stack, image_size=size)
    elif arm.kind == "scratch" and arm.architecture == "export":
        encoder = _pixel_encoder(arm, path, frame_stack, random_init=True, image_size=train.observations.shape[1],
                                 draw_seed=seed)
    elif arm.kind == "scratch":
        raise ValueError(f"arm {arm.name}: architecture must be nature, impala_small or export, got "
                         f"{arm.architecture!r}")
    else:
        encoder = _pixel_encoder(arm, path, frame_stack, random_init=False, image_size=train.observations.shape[1])
    return ArmData(encoder.train(), train, val, None, True)
