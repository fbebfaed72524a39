"""A classifier trained on curated labelled images: the reward of "curated-reward" AB.

    p(l | x) = softmax_l(h(f(x)))  trained with  L = CE(h(f(x_curated)), y)

Used alone it is supervised pretraining. Under AB (AB_{I1K+COCO} in the paper) the classifier
learns from the curated stream (``curated:`` in the recipe, e.g. ImageNet or the demo digits)
while TD runs on the uncurated stream (``data:``, e.g. COCO or the demo scenes):
p_target(l | x) of an uncurated crop is the EMA classifier's prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import Encoder
from ..views.photometric import Photometric
from .base import Encoded, SSLMethod, Views, step_generator
from .registry import register


@dataclass
class ClassifierConfig:
    num_classes: int = 1000
    label_smoothing: float = 0.0
    annotation_temperature: float = 1.0  # sharpening of p_target(l | x) (1: the classifier as is)


@register("classifier")
class Classifier(SSLMethod):
    def __init__(self, encoder: Encoder, classifier: ClassifierConfig, extra=None, augment: str = "simclr"):
        super().__init__(encoder, {"classifier": nn.Linear(encoder.num_features, classifier.num_classes)},
                         extra, augment)
        self.cfg = classifier

    def annotation_logits(self, which: str, features: torch.Tensor) -> torch.Tensor:
        return self.net(which)["classifier"](features).float()

    def annotation_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits / self.cfg.annotation_temperature, dim=-1)

    def value_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits, dim=-1)

    def base_loss(self, views: Views, student: Encoded, teacher: Encoded | None, batch: dict):
        if "curated" not in batch:
            raise KeyError("method classifier needs labelled curated data: set 'curated:' in the recipe")
        curated = batch["curated"]
        device = views.images[0].device
        generator = step_generator(device, self.seed, self.step, self.rank, "curated")
        images = Photometric.preset(self.augment, 0)(curated["views"][0][:, 0].to(device), generator)
        logits = self.annotation_logits("student", self.student["encoder"](images).pooled)
        labels = curated["cls"].to(device)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.cfg.label_smoothing)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return loss, {"curated_loss": loss.detach(), "curated_acc": accuracy}
