"""CLIP text tower: open_clip's TextTransformer, built without weights, plus its tokenizer.

The BPE vocabulary ships inside the open_clip wheel, so tokenizing works offline.
"""

from __future__ import annotations

import copy

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, _build_text_tower
from torch import nn


def _open_clip_text(model_name: str) -> tuple[int, dict]:
    """(embed_dim, text_cfg) of an open_clip model config shipped with the wheel."""
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise KeyError(f"open_clip has no model config {model_name!r}")
    return cfg["embed_dim"], copy.deepcopy(cfg["text_cfg"])


# name -> (embed_dim, text_cfg); "tiny" is for CPU tests
TEXT_PRESETS: dict[str, tuple[int, dict]] = {
    "tiny": (128, {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}),
}


def text_preset(preset: str) -> tuple[int, dict]:
    if preset in TEXT_PRESETS:
        embed_dim, cfg = TEXT_PRESETS[preset]
        return embed_dim, dict(cfg)
    return _open_clip_text(preset)  # any open_clip config name, e.g. "ViT-B-16"


class TextTower(nn.Module):
    """``forward(texts) -> [B, embed_dim]``; texts: a list of str or [B, context] token ids.

    ``preset``: "tiny" or an open_clip model name ("ViT-B-16": width 512, 12 layers, 8 heads,
    context 77, embed 512). ``embed_dim`` overrides the preset's output size (it must match the
    image projection). ``normalize=True`` returns unit vectors; by default the CLIP loss does it.
    """

    def __init__(self, preset: str = "ViT-B-16", embed_dim: int | None = None, normalize: bool = False,
                 **cfg_overrides):
        super().__init__()
        preset_dim, cfg = text_preset(preset)
        cfg.update(cfg_overrides)
        if cfg.get("hf_model_name"):
            raise ValueError("HF text towers would download weights; use a plain transformer preset")
        self.preset = preset
        self.embed_dim = embed_dim or preset_dim
        self.text_cfg = CLIPTextCfg(**cfg)
        self.context_length = self.text_cfg.context_length
        self.normalize = normalize
        self.transformer = _build_text_tower(self.embed_dim, self.text_cfg)
        # SimpleTokenizer: the vocab file is in the wheel. Any open_clip name without an HF
        # tokenizer selects it; the context length comes from our config.
        self.tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=self.context_length)

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        """[B, context_length] int64 token ids; cheap enough for loader workers."""
        return self.tokenizer(texts, context_length=self.context_length)

    def forward(self, texts: list[str] | torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(texts):
            texts = self.tokenize(list(texts))
        device = self.transformer.token_embedding.weight.device
        features = self.transformer(texts.to(device))
        return F.normalize(features, dim=-1) if self.normalize else features
