"""A classifier trained on labelled images (``data.format: labelled``): the reward of supervised-reward AB.

    p(l | x) = softmax_l(h(f(x)))  trained with  L = CE(h(f(x)), y)    (first view of each image)

Used alone it is supervised pretraining. Under AB it is *supervised-reward AB*, ours, not the paper's
decoupled AB (which uses no labels): the classifier learns from the annotation stream
(``annotation_data:``, labelled, e.g. ImageNet or the demo digits) while AB bootstraps on the main
stream (``data:``, e.g. COCO or the demo scenes): p_target(l | x) of a bootstrap crop is the EMA
classifier's prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import Encoder
from .base import SSLMethod, Step
from .registry import register


@dataclass
class ClassifierConfig:
    num_classes: int = 1000
    label_smoothing: float = 0.0
    annotation_temperature: float = 1.0  # sharpening of p_target(l | x) (1: the classifier as is)


@register("classifier", config=ClassifierConfig)
class Classifier(SSLMethod):
    def __init__(self, encoder: Encoder, classifier: ClassifierConfig, augment: str = "simclr"):
        super().__init__(encoder, {"classifier": nn.Linear(encoder.num_features, classifier.num_classes)}, augment)
        self.cfg = classifier
        self.num_annotations = classifier.num_classes  # a fixed annotation set: the classes

    def annotation_logits(self, which: str, features: torch.Tensor, step: Step | None = None) -> torch.Tensor:
        return self.net(which)["classifier"](features).float()

    def annotation_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits / self.cfg.annotation_temperature, dim=-1)

    def value_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits, dim=-1)

    def base_loss(self, step: Step):
        if "cls" not in step.batch:
            raise KeyError("method classifier needs labelled images: data.format 'labelled' (under AB: the "
                           "annotation_data stream)")
        logits = self.annotation_logits("online", step.online.pooled[0][:, 0])
        labels = step.batch["cls"].to(logits.device)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.cfg.label_smoothing)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return loss, {"classifier_loss": loss.detach(), "classifier_acc": accuracy}
