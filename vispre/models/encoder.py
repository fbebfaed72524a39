"""Image encoders: any timm model, seen as tokens + a pooled feature.

The wrapper adds no parameters of its own, so export can save ``timm_model.state_dict()`` and
``timm_model.pretrained_cfg`` and plain ``timm.create_model(name, **model_args)`` loads them.
"""

from __future__ import annotations

from typing import NamedTuple

import timm
import torch
from torch import nn


class EncoderOutput(NamedTuple):
    """A NamedTuple (not a dataclass) so DDP and torch.compile traverse it like any tuple."""

    tokens: torch.Tensor               # [B, N, D] patch tokens, or the last feature map's cells
    pooled: torch.Tensor               # [B, D] timm's own pre-logits feature (CLS / avg pool)
    prefix: torch.Tensor | None = None  # [B, P, D] ViT prefix tokens (CLS, registers), else None

    def tokens_with_pooled(self) -> torch.Tensor:
        """[B, 1 + N, D]: the pooled feature prepended, as keys/values for a Q head."""
        return torch.cat([self.pooled.unsqueeze(1), self.tokens], 1)


def _create(name: str, dynamic_img_size: bool | None, kwargs: dict) -> tuple[nn.Module, dict]:
    """timm.create_model, passing ``dynamic_img_size=True`` where the model takes it (ViTs).

    ``None`` means "if supported": ViT-like classes accept it, CNNs raise a TypeError naming the
    argument at once (before building anything), so we retry without it.
    """
    args = dict(kwargs)
    if dynamic_img_size is not False:
        try:
            model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, **args)
            return model, {**args, "dynamic_img_size": True}
        except TypeError as e:
            if dynamic_img_size or "dynamic_img_size" not in str(e):
                raise
    return timm.create_model(name, pretrained=False, num_classes=0, **args), args


class Encoder(nn.Module):
    """A timm backbone without classifier: ``forward(x) -> EncoderOutput``.

    Several input sizes work in one model (multi-crop 224 + 96): ViTs are built with
    ``dynamic_img_size=True`` (position embeddings resampled per size), CNNs are size-agnostic.
    """

    def __init__(self, name: str, dynamic_img_size: bool | None = None, *, timm_model: nn.Module | None = None,
                 **kwargs):
        """Build ``name`` without weights, or wrap an existing ``timm_model`` (e.g. one that
        ``timm.create_model("local-dir:DIR")`` loaded from an export; ``kwargs`` are then its model_args)."""
        super().__init__()
        self.name = name
        if timm_model is None:
            self.timm_model, self.model_args = _create(name, dynamic_img_size, kwargs)
        else:
            self.timm_model, self.model_args = timm_model, dict(kwargs)
            if dynamic_img_size is not None:
                self.model_args["dynamic_img_size"] = dynamic_img_size
        # Rebuild recipe: timm.create_model(name, num_classes=0, **model_args); export adds
        # num_classes itself, as timm's hub config keeps it outside model_args.
        self.num_features = self.timm_model.num_features
        self.num_prefix_tokens = getattr(self.timm_model, "num_prefix_tokens", 0)
        # NHWC for e.g. swin, NCHW for resnet/convnext; ViTs return [B, L, D]
        self.output_fmt = getattr(self.timm_model, "output_fmt", "NCHW")
        self._fix_pretrained_cfg()

    def _fix_pretrained_cfg(self) -> None:
        """Make the cfg describe this model rather than the default 224 px release.

        timm keeps the registered cfg (input_size 224, fixed_input_size) even when img_size was
        changed; an exported model would then advertise the wrong resolution.
        """
        cfg = getattr(self.timm_model, "pretrained_cfg", None)
        if cfg is None:
            return
        cfg = dict(cfg)
        patch_embed = getattr(self.timm_model, "patch_embed", None)
        img_size = getattr(patch_embed, "img_size", None)
        if img_size is not None:
            cfg["input_size"] = (3, *tuple(img_size))
        if self.model_args.get("dynamic_img_size"):
            cfg["fixed_input_size"] = False
        self.timm_model.pretrained_cfg = cfg

    def _to_tokens(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if features.ndim == 3:  # ViT-like: [B, prefix + N, D]
            p = self.num_prefix_tokens
            return features[:, p:], (features[:, :p] if p else None)
        if self.output_fmt == "NHWC":
            return features.flatten(1, 2), None
        return features.flatten(2).transpose(1, 2), None  # NCHW -> [B, H*W, C]

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        features = self.timm_model.forward_features(x)
        pooled = self.timm_model.forward_head(features, pre_logits=True)
        tokens, prefix = self._to_tokens(features)
        return EncoderOutput(tokens, pooled, prefix)

    def vit_intermediates(self, x: torch.Tensor, n_last_blocks: int = 1):
        """ViT-like models, one pass: the last ``n_last_blocks`` blocks' normed outputs as (patches [B, N, D],
        prefix [B, P, D]) pairs, oldest first; None for models without prefix tokens (CNNs)."""
        m = self.timm_model
        if not (hasattr(m, "num_prefix_tokens") and hasattr(m, "forward_intermediates")):
            return None
        return m.forward_intermediates(x, indices=n_last_blocks, return_prefix_tokens=True, norm=True,
                                       intermediates_only=True, output_fmt="NLC")

    def pool_block(self, patches: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """A ViT block's pooled feature for probes: the CLS token when the model has one, else the patch mean."""
        return prefix[:, 0] if getattr(self.timm_model, "cls_token", None) is not None else patches.mean(1)

    def intermediate_features(self, x: torch.Tensor, n_last_blocks: int = 1) -> list[torch.Tensor]:
        """Pooled features [B, D_i] of the last ``n_last_blocks`` blocks (ViT) or stages (CNN).

        For linear probes (DINO's protocol concatenates these, plus the last block's patch
        average). ViT: final norm applied, CLS token when the model has one, else patch mean.
        CNN: global average of each stage's map. Gradients flow; wrap in no_grad for probes.
        """
        blocks = self.vit_intermediates(x, n_last_blocks)
        if blocks is not None:
            return [self.pool_block(patches, prefix) for patches, prefix in blocks]
        # NCHW here even for NHWC models (swin): timm's forward_intermediates default
        outs = self.timm_model.forward_intermediates(x, indices=n_last_blocks, intermediates_only=True)
        return [o.mean((2, 3)) for o in outs]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.timm_model.set_grad_checkpointing(enable)
