"""CLIP (Radford et al. 2021): contrast each image with its caption, text tower from open_clip.

    u = normalise(W f(x)),  t = normalise(text(c)),  s = exp(logit_scale) (clamped at 100)
    L = ( CE(s u T^T, identity) + CE(s t U^T, identity) ) / 2      (captions from every rank)

Each image has one or several captions (``txt``, or COCO's ``captions``); a step uses one,
drawn from the step's seed. Annotation space for AB_CLIP: the annotation batch's captions (all ranks),
embedded by the target network's text tower:  p_target(l | x) = softmax_l(s_target u_target(x) . t_l).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import Encoder, LogitScale, TextTower
from ..utils.distributed import gather_no_grad, gather_with_grad, rank
from .base import SSLMethod, Step, step_generator
from .registry import register


@dataclass
class CLIPConfig:
    text: str = "ViT-B-16"  # TextTower preset: an open_clip model name, or "tiny" for CPU runs
    embed_dim: int = 512
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0


def pick_captions(batch: dict, generator: torch.Generator) -> list[str]:
    if "captions" in batch:
        choice = torch.randint(0, 1 << 30, (len(batch["captions"]),), generator=generator).tolist()
        return [caps[i % len(caps)] for caps, i in zip(batch["captions"], choice)]
    if "txt" in batch:
        return list(batch["txt"])
    raise KeyError("CLIP needs captions: data.format 'caption' (json captions) or 'image' with txt files")


@register("clip", config=CLIPConfig)
class CLIP(SSLMethod):
    num_annotations = None  # a per-step annotation set: the annotation batch's captions

    def __init__(self, encoder: Encoder, clip: CLIPConfig, augment: str = "simclr"):
        heads = {"proj": nn.Linear(encoder.num_features, clip.embed_dim, bias=False),
                 "text": TextTower(clip.text, embed_dim=clip.embed_dim),
                 "logit_scale": LogitScale(clip.init_logit_scale)}
        super().__init__(encoder, heads, augment)
        self.cfg = clip
        self.annotation_dim = clip.embed_dim  # what AB's own annotation head embeds: the text tower's output

    def image_embed(self, which: str, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(which)["proj"](features).float(), dim=-1)

    def scale(self, which: str) -> torch.Tensor:
        return self.net(which)["logit_scale"](self.cfg.max_logit_scale)

    def annotations(self, step: Step) -> None:
        generator = step_generator("cpu", self.seed, self.step, self.rank, "captions")
        step.captions = pick_captions(step.batch, generator)
        step.text = self.online["text"](step.captions).float()  # [B, E], with gradient (base loss, AB head)
        if step.target is not None:  # AB: the captions' keys, from the target network's text tower (run once)
            with torch.no_grad():
                step.target_text = gather_no_grad(self.net("target")["text"](step.captions).float())
            step.keys = F.normalize(step.target_text, dim=-1)

    def annotation_inputs(self, which: str, step: Step) -> torch.Tensor:
        """[L, E]: the text tower's embeddings of the step's captions from the ``which`` network, all ranks."""
        if which == "online":
            return gather_with_grad(step.text.contiguous())
        if step.target_text is None:  # annotations() computes it once per step when there is a target
            with torch.no_grad():
                step.target_text = gather_no_grad(self.net("target")["text"](step.captions).float())
        return step.target_text

    def annotation_logits(self, which: str, features: torch.Tensor, step: Step) -> torch.Tensor:
        return self.scale("target") * self.image_embed(which, features) @ step.keys.T

    def annotation_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits, dim=-1)

    def value_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits, dim=-1)

    def base_loss(self, step: Step):
        images = self.image_embed("online", step.online.pooled[0][:, 0])  # first global view
        texts = F.normalize(step.text, dim=-1)
        all_images, all_texts = gather_with_grad(images), gather_with_grad(texts)
        scale = self.scale("online")
        labels = torch.arange(len(images), device=images.device) + rank() * len(images)
        loss = (F.cross_entropy(scale * images @ all_texts.T, labels)
                + F.cross_entropy(scale * texts @ all_images.T, labels)) / 2
        return loss, {"clip_loss": loss.detach(), "logit_scale": scale.detach()}
