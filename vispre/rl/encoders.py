"""The agents' observation encoders: uint8 frame stacks (or precomputed per-frame features) -> one vector.

Every arm goes through one interface, ``encoder(obs [B, S, ...]) -> [B, S * D]``:

* :class:`PixelEncoder` wraps a vispre :class:`~vispre.models.Encoder` (a timm backbone, e.g. an
  exported pretrained one) or the small :class:`NatureCNN` (scratch on CPU). With a frame stack
  (S > 1) each frame is encoded alone and the S features are concatenated ("late fusion"), so a
  single-frame pretrained encoder is used as it was trained and scratch and pretrained arms share it;
* :class:`FeatureEncoder` is the frozen path: features were computed once per dataset frame
  (:func:`precompute_features`) and the stack's features are only concatenated.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models import Encoder, EncoderOutput
from ..models.exportable import ExportedModule
from ..utils.progress import progress


class NatureCNN(nn.Module):
    """DQN's encoder (Mnih et al. 2015): conv 8x8/4 (32), 4x4/2 (64), 3x3/1 (64), then a linear layer
    with LayerNorm. ~40 ms per pixel-IQL update at 64x64, batch 256, on 2 CPU cores."""

    def __init__(self, in_channels: int = 3, num_features: int = 256, image_size: int = 64):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU())
        with torch.no_grad():
            cells = self.convs(torch.zeros(1, in_channels, image_size, image_size)).numel()
        self.head = nn.Sequential(nn.Linear(cells, num_features), nn.LayerNorm(num_features))
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        maps = self.convs(x)
        return EncoderOutput(maps.flatten(2).transpose(1, 2), self.head(maps.flatten(1)))


def _normalisation(backbone: nn.Module) -> tuple[tuple, tuple, tuple | None]:
    """mean, std and the fixed input size (None: any size) the backbone was trained with. A backbone without
    a timm pretrained_cfg (NatureCNN) reads x / 255: black stays 0, which on MiniGrid's mostly black frames
    learnt much faster than DrQ's x / 255 - 0.5 (a BC probe: 300 vs > 1000 updates)."""
    cfg = getattr(getattr(backbone, "timm_model", None), "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean", (0.0, 0.0, 0.0))), tuple(cfg.get("std", (1.0, 1.0, 1.0)))
    fixed = cfg.get("fixed_input_size", False) and cfg.get("input_size")
    return mean, std, (tuple(cfg["input_size"][-2:]) if fixed else None)


class PixelEncoder(nn.Module):
    """uint8 frames [B, S, H, W, C] -> [B, S * D] (augmentation happens before, see ``vispre.views.shift``).

    Each frame's feature is the backbone's pooled feature, its whole token grid flattened (``reads: grid``:
    a CNN's last map or a ViT's patch tokens, [N * D]) or, with ``head`` (an export's extra module, e.g.
    ICVF's phi), ``head.module(output.<head.spec.reads>)`` of width ``head.spec.out_dim``."""

    def __init__(self, backbone: Encoder | NatureCNN, frame_stack: int = 1, input_size: int = 0,
                 head: ExportedModule | None = None, batch_norm: str = "train", reads: str = "pooled",
                 image_size: int = 0):
        super().__init__()
        if batch_norm not in ("train", "frozen"):
            raise ValueError(f"batch_norm must be 'train' or 'frozen', got {batch_norm!r}")
        if reads not in ("pooled", "grid"):
            raise ValueError(f"reads must be 'pooled' or 'grid', got {reads!r}")
        self.backbone = backbone
        self.batch_norm = batch_norm
        self.head = head.module if head is not None else None
        self.head_reads = head.spec.reads if head is not None else "pooled"
        self.frame_stack = frame_stack
        mean, std, fixed = _normalisation(backbone)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.input_size = (input_size, input_size) if input_size else fixed
        self.reads = reads if head is None else "head"
        if head is not None:
            self.feature_dim = head.spec.out_dim  # per frame
        elif reads == "grid":
            self.feature_dim = self._grid_dim(self.input_size or (image_size, image_size))
        else:
            self.feature_dim = backbone.num_features
        self.num_features = self.feature_dim * frame_stack

    @torch.no_grad()
    def _grid_dim(self, size: tuple[int, int]) -> int:
        """N * D of the token grid at this input size (one probe forward in eval mode: BatchNorm untouched)."""
        if not all(size):
            raise ValueError("reads='grid' needs the frame size (image_size) for a backbone without a fixed one")
        was_training = self.backbone.training
        self.backbone.eval()
        tokens = self.backbone(torch.zeros(1, self.mean.shape[1], *size)).tokens
        self.backbone.train(was_training)
        return tokens.shape[1] * tokens.shape[2]

    def train(self, mode: bool = True) -> PixelEncoder:
        """``batch_norm: frozen`` keeps BatchNorm layers on the running statistics they were pretrained with,
        in training too: RL batches are small and augmented (shift, colour jitter), so statistics updated from
        them no longer fit the plain frames the policy sees in evaluation (V-PTR on MiniGrid with an ICVF
        BatchNorm export: greedy actions matched the data's 64% of the time in train mode, 27% in eval mode)."""
        super().train(mode)
        if self.batch_norm == "frozen":
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        b, s, h, w, c = obs.shape
        x = obs.permute(0, 1, 4, 2, 3).reshape(b * s, c, h, w).float().div_(255)
        if self.input_size is not None and (h, w) != tuple(self.input_size):
            x = F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        output = self.backbone((x - self.mean) / self.std)
        if self.head is not None:
            features = self.head(getattr(output, self.head_reads))
        else:
            features = output.tokens.flatten(1) if self.reads == "grid" else output.pooled
        return features.reshape(b, -1)


class FeatureEncoder(nn.Module):
    """Precomputed per-frame features [B, S, D] -> [B, S * D] (the frozen arms: nothing to train)."""

    def __init__(self, dim: int, frame_stack: int = 1):
        super().__init__()
        self.num_features = dim * frame_stack

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.float().flatten(1)


def unique_rows(frames: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(first row of each distinct frame, for every row the index of its distinct frame), by hashing the
    bytes (MiniGrid data revisit states often: a few thousand distinct frames in tens of thousands of rows)."""
    seen: dict[bytes, int] = {}
    first, inverse = [], np.empty(len(frames), np.int64)
    for start in range(0, len(frames), chunk):
        block = np.ascontiguousarray(frames[start:start + chunk])
        for i, frame in enumerate(block):
            key = hashlib.blake2b(frame.tobytes(), digest_size=16).digest()
            if key not in seen:
                seen[key] = len(first)
                first.append(start + i)
            inverse[start + i] = seen[key]
    return np.asarray(first, np.int64), inverse


@torch.no_grad()
def precompute_features(encoder: PixelEncoder, frames: np.ndarray, device: torch.device | str = "cpu",
                        batch_size: int = 256, desc: str = "features", dedup: bool = True) -> np.ndarray:
    """Per-frame features [R, D] float32 of frames [R, H, W, C] (any array, memory-mapped included);
    ``dedup``: each distinct frame is encoded once."""
    encoder.eval().to(device)
    rows, inverse = unique_rows(frames) if dedup else (np.arange(len(frames)), None)
    out = np.empty((len(rows), encoder.feature_dim), np.float32)
    for i in progress(range(0, len(rows), batch_size), desc=desc, unit="batch"):
        chunk = torch.from_numpy(np.ascontiguousarray(frames[rows[i:i + batch_size]])).to(device)
        out[i:i + len(chunk)] = encoder(chunk[:, None]).float().cpu().numpy()
    return out if inverse is None else out[inverse]


class CachedFrameEncoder:
    """Frames [B, S, H, W, C] -> [B, S * D] through a frozen encoder, each distinct frame encoded once
    (rollouts in grid worlds revisit the same frames over and over). Cleared when it holds ``max_entries``."""

    def __init__(self, encoder: PixelEncoder, max_entries: int = 200_000):
        self.encoder, self.max_entries = encoder, max_entries
        self.cache: dict[bytes, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        b, s = obs.shape[:2]
        frames = obs.reshape(b * s, *obs.shape[2:])
        keys = [hashlib.blake2b(f.tobytes(), digest_size=16).digest() for f in frames.cpu().numpy()]
        missing = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if len(self.cache) + len(missing) > self.max_entries:
            self.cache.clear()
            missing = list(dict.fromkeys(keys))
        if missing:
            where = {k: i for i, k in enumerate(keys)}
            new = self.encoder(frames[[where[k] for k in missing]][:, None])
            self.cache.update(zip(missing, new))
        return torch.stack([self.cache[k] for k in keys]).reshape(b, -1)
