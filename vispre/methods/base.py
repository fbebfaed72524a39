"""What every pretraining method shares: the interface, the online/target networks, the views.

A method is an ``nn.Module`` whose ``forward(batch)`` returns ``(loss, metrics)``; the training
loop knows nothing else about it. Self-supervised base methods (DINO, SimCLR, CLIP, a curated
classifier) also define an *annotation space* l and the annotation distribution p(l | view),
which Annotation Bootstrapping uses as its reward:

    annotation_logits(net, features)   raw logits over l for pooled features of a view
    annotation_probs(logits)           p(l | x) as the target network announces it (sharpened)
    value_log_probs(logits)            the prediction side: log-probabilities of a value/student
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from timm.utils.model_ema import ModelEmaV3

from ..models import Encoder
from ..utils.diagnostics import accuracy_by_iou, majority_rate
from ..utils.seeding import step_generator  # noqa: F401  (re-exported for the methods)
from ..views.boxes import box_iou
from ..views.photometric import Photometric


@dataclass
class Views:
    """One batch of multi-crop views on the training device.

    ``images[g]``: [B, n_g, 3, S_g, S_g] float, augmented and normalised, for crop group g;
    ``boxes``: [B, V, 4] in source-image coordinates; ``flips``: [B, V]; views are numbered group
    after group (global views first).
    """

    images: list[torch.Tensor]
    boxes: torch.Tensor
    flips: torch.Tensor
    valid: torch.Tensor

    @property
    def counts(self) -> list[int]:
        return [g.shape[1] for g in self.images]

    @property
    def batch_size(self) -> int:
        return self.images[0].shape[0]


@dataclass
class Encoded:
    """Encoder outputs for views, per crop group: pooled [B, n_g, D]; tokens [B, n_g, 1 + N_g, D]
    (the pooled feature first, then the patch/spatial tokens: what the Q head attends to)."""

    pooled: list[torch.Tensor]
    tokens: list[torch.Tensor] = field(default_factory=list)

    def all_pooled(self) -> torch.Tensor:
        return torch.cat(self.pooled, dim=1)  # [B, V, D]


class Method(nn.Module):
    """The interface the training loop sees."""

    step, total_steps, seed, rank = 0, 1, 0, 0  # set_step() updates them before every step

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def set_step(self, step: int, total_steps: int, seed: int = 0, rank: int = 0) -> None:
        """Called before every step: schedules that live in the method, and the step's RNG."""
        self.step, self.total_steps, self.seed, self.rank = step, total_steps, seed, rank

    def update_target(self, momentum: float) -> None:
        """EMA/target update after an optimizer step (no-op for methods without a target)."""

    def before_optimizer_step(self) -> None:
        """Hook between backward and the optimizer step (e.g. DINO freezes its last layer early on)."""

    def export_encoder(self, which: str = "target") -> Encoder:
        raise NotImplementedError


class SSLMethod(Method):
    """A base method with an online network (``student``) and its EMA copy (``teacher``).

    ``student`` is a ModuleDict holding at least ``encoder``; subclasses add their heads, and a
    wrapper such as AB adds its own modules through ``extra`` so the EMA copy includes them.
    """

    teacher_groups: tuple[int, ...] = (0,)  # crop groups the target network encodes (global views)
    uses_teacher = False  # whether the base loss itself needs the target network's view encodings
    needs_target = False  # set by a wrapper (AB) that needs them for its own targets
    needs_tokens = False  # whether encodings must include patch tokens (AB's Q head)

    def __init__(self, encoder: Encoder, heads: dict[str, nn.Module], extra: dict[str, nn.Module] | None = None,
                 augment: str = "dino"):
        super().__init__()
        self.student = nn.ModuleDict({"encoder": encoder, **heads, **(extra or {})})
        self.teacher = ModelEmaV3(self.student, decay=0.996)
        self.teacher.requires_grad_(False)
        self.augment = augment
        self.step, self.total_steps, self.seed, self.rank = 0, 1, 0, 0
        self.cache: dict = {}  # per-step values shared by the base loss and a wrapper (AB)
        self.iou_bins = [0.0, 0.2, 0.4, 0.6, 1.0]

    # -- networks ---------------------------------------------------------------------------------
    def net(self, which: str) -> nn.ModuleDict:
        return self.student if which == "student" else self.teacher.module

    def update_target(self, momentum: float) -> None:
        self.teacher.decay = momentum
        self.teacher.update(self.student)

    def export_encoder(self, which: str = "target") -> Encoder:
        return (self.teacher.module if which == "target" else self.student)["encoder"]

    # -- views ------------------------------------------------------------------------------------
    def prepare(self, batch: dict) -> Views:
        """uint8 crops from the loader -> augmented, normalised views on the device (batched)."""
        device = next(self.parameters()).device
        generator = step_generator(device, self.seed, self.step, self.rank, "photometric")
        groups, view = [], 0
        for crops in batch["views"]:
            crops = crops.to(device, non_blocking=True)
            out = []
            for i in range(crops.shape[1]):
                out.append(Photometric.preset(self.augment, view)(crops[:, i], generator))
                view += 1
            groups.append(torch.stack(out, dim=1))
        return Views(groups, batch["boxes"].to(device), batch["flips"].to(device), batch["valid"].to(device))

    def encode(self, which: str, views: Views, groups=None, tokens: bool = False) -> Encoded:
        """Encode the views of ``groups`` (all by default), one encoder call per crop size."""
        encoder = self.net(which)["encoder"]
        pooled, all_tokens = [], []
        for g, images in enumerate(views.images):
            if groups is not None and g not in groups:
                continue
            b, n = images.shape[:2]
            out = encoder(images.flatten(0, 1))
            pooled.append(out.pooled.view(b, n, -1))
            if tokens:
                seq = torch.cat([out.pooled[:, None], out.tokens], dim=1)
                all_tokens.append(seq.view(b, n, seq.shape[1], -1))
        return Encoded(pooled, all_tokens)

    # -- what a base method defines ---------------------------------------------------------------
    def base_loss(self, views: Views, student: Encoded, teacher: Encoded, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def annotation_logits(self, which: str, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def annotation_probs(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def value_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def begin_step(self, views: Views, batch: dict, student: Encoded, teacher: Encoded) -> None:
        """Per-step annotation space (e.g. the batch's instance or caption embeddings)."""

    def target_probs(self, teacher: Encoded) -> torch.Tensor:
        """p_target(l | x) for the target network's views [B, G, L], computed once per step."""
        if "target_probs" not in self.cache:
            self.cache["target_logits"] = self.annotation_logits("teacher", teacher.all_pooled())
            self.cache["target_probs"] = self.annotation_probs(self.cache["target_logits"])
        return self.cache["target_probs"]

    def crop_accuracy(self, student_logits: torch.Tensor, views: Views, n_target: int, edges) -> dict:
        """Crop-prediction accuracy without actions: argmax p(l | x1) == argmax p_target(l | x2), by IoU."""
        with torch.no_grad():
            target = self.cache["target_probs"].argmax(-1)  # [B, G]
            correct = student_logits.argmax(-1)[:, :, None] == target[:, None]  # [B, V, G]
            boxes = views.boxes
            iou = box_iou(boxes[:, :, None], boxes[:, None, :n_target])
            mask = pair_mask(boxes.shape[1], n_target, boxes.device)[None].expand_as(correct)
            return {**accuracy_by_iou(correct, iou, mask, edges, "crop_acc"), "crop_acc/chance": majority_rate(target)}

    # -- one step ---------------------------------------------------------------------------------
    def encode_step(self, batch: dict) -> tuple[Views, Encoded, Encoded]:
        self.cache = {}
        views = self.prepare(batch)
        student = self.encode("student", views, tokens=self.needs_tokens)
        teacher = None
        if self.uses_teacher or self.needs_target:
            with torch.no_grad():
                teacher = self.encode("teacher", views, groups=self.teacher_groups, tokens=self.needs_tokens)
        self.begin_step(views, batch, student, teacher)
        return views, student, teacher

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        views, student, teacher = self.encode_step(batch)
        loss, metrics = self.base_loss(views, student, teacher, batch)
        return masked(loss, views.valid), metrics


def masked(loss: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Padding batches (all ``valid`` False, from a finite epoch's last steps) contribute zero
    gradient but still run forward/backward so every rank joins the all-reduce."""
    return loss * valid.any().to(loss.dtype)


def pair_mask(n_student: int, n_teacher: int, device) -> torch.Tensor:
    """[V_s, V_t] True where student view v and teacher view g are different views (v != g)."""
    v = torch.arange(n_student, device=device)[:, None]
    g = torch.arange(n_teacher, device=device)[None, :]
    return v != g
