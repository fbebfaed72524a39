"""CLIP (Radford et al. 2021): contrast each image with its caption, text tower from open_clip.

    u = normalise(W f(x)),  t = normalise(text(c)),  s = exp(logit_scale) (clamped at 100)
    L = ( CE(s u T^T, identity) + CE(s t U^T, identity) ) / 2      (captions from every rank)

Each image has one or several captions (``txt``, or COCO's ``captions``); a step uses one,
drawn from the step's seed. Annotation space for AB_CLIP: the batch's captions, embedded by the
target network's text tower:  p_target(l | x) = softmax_l(s u_target(x) . t_l).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import Encoder, TextTower
from ..utils.distributed import gather_no_grad, gather_with_grad, rank
from .base import Encoded, SSLMethod, Views, step_generator
from .registry import register


@dataclass
class CLIPConfig:
    text: str = "ViT-B-16"  # TextTower preset: an open_clip model name, or "tiny" for CPU runs
    embed_dim: int = 512
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0


class LogitScale(nn.Module):
    def __init__(self, init: float):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(init))

    def forward(self, max_scale: float) -> torch.Tensor:
        return self.value.exp().clamp(max=max_scale)


def pick_captions(batch: dict, generator: torch.Generator) -> list[str]:
    if "captions" in batch:
        choice = torch.randint(0, 1 << 30, (len(batch["captions"]),), generator=generator).tolist()
        return [caps[i % len(caps)] for caps, i in zip(batch["captions"], choice)]
    if "txt" in batch:
        return list(batch["txt"])
    raise KeyError("CLIP needs captions: data.format 'caption' (json captions) or 'image' with txt files")


@register("clip")
class CLIP(SSLMethod):
    def __init__(self, encoder: Encoder, clip: CLIPConfig, extra=None, augment: str = "simclr"):
        heads = {"proj": nn.Linear(encoder.num_features, clip.embed_dim, bias=False),
                 "text": TextTower(clip.text, embed_dim=clip.embed_dim),
                 "logit_scale": LogitScale(clip.init_logit_scale)}
        super().__init__(encoder, heads, extra, augment)
        self.cfg = clip

    def image_embed(self, which: str, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(which)["proj"](features).float(), dim=-1)

    def scale(self, which: str) -> torch.Tensor:
        return self.net(which)["logit_scale"](self.cfg.max_logit_scale)

    def begin_step(self, views: Views, batch: dict, student: Encoded, teacher: Encoded | None) -> None:
        generator = step_generator("cpu", self.seed, self.step, self.rank, "captions")
        self.cache["captions"] = pick_captions(batch, generator)
        if teacher is not None:  # AB: the captions' keys, from the target network's text tower
            with torch.no_grad():
                keys = F.normalize(self.net("teacher")["text"](self.cache["captions"]).float(), dim=-1)
                self.cache["keys"] = gather_no_grad(keys)

    def annotation_logits(self, which: str, features: torch.Tensor) -> torch.Tensor:
        return self.scale("teacher") * self.image_embed(which, features) @ self.cache["keys"].T

    def annotation_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits, dim=-1)

    def value_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits, dim=-1)

    def base_loss(self, views: Views, student: Encoded, teacher: Encoded | None, batch: dict):
        images = self.image_embed("student", student.pooled[0][:, 0])  # first global view
        texts = F.normalize(self.student["text"](self.cache["captions"]).float(), dim=-1)
        all_images, all_texts = gather_with_grad(images), gather_with_grad(texts)
        scale = self.scale("student")
        labels = torch.arange(len(images), device=images.device) + rank() * len(images)
        loss = (F.cross_entropy(scale * images @ all_texts.T, labels)
                + F.cross_entropy(scale * texts @ all_images.T, labels)) / 2
        return loss, {"clip_loss": loss.detach(), "logit_scale": scale.detach()}
