"""What every pretraining method shares: the interface the trainer and exporter use, the online/target
networks, the views, and the per-step state.

A method is an ``nn.Module`` whose ``forward(batch)`` returns ``(loss, metrics)``; every other hook the
training loop or the exporter calls is declared on ``Method`` below with its default, so a method overrides
only what it needs. Self-supervised base methods (DINO, SimCLR, CLIP, a classifier) also define an
*annotation space* l and the annotation distribution p(l | view), which Annotation Bootstrapping uses as
its reward:

    annotation_logits(which, features, step)   raw logits over l for pooled features of views
    annotation_probs(logits)                   p(l | x) as the target network announces it (sharpened)
    value_log_probs(logits)                    the prediction side: log-probabilities of the online network

The two networks are always called ``online`` (trained by gradient) and ``target`` (its EMA copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from timm.utils.model_ema import ModelEmaV3

from ..data import DataConfig, build_loader
from ..data.device_decode import decode_views
from ..models import Encoder
from ..models.exportable import ExportedModule
from ..utils.diagnostics import accuracy_by_iou, majority_rate
from ..utils.seeding import step_generator  # noqa: F401  (re-exported for the methods)
from ..views.boxes import box_iou
from ..views.photometric import Photometric
from .registry import config_of

NETWORKS = ("online", "target")


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
    photometric: torch.Tensor | None = None  # [B, V, Photometric.PARAMS] when prepared with params=True

    @property
    def counts(self) -> list[int]:
        return [g.shape[1] for g in self.images]

    @property
    def batch_size(self) -> int:
        return self.images[0].shape[0]


@dataclass
class Encoded:
    """Encoder outputs for views, per crop group: pooled [B, n_g, D]; tokens [B, n_g, 1 + N_g, D]
    (the pooled feature first, then the patch/spatial tokens: what AB's decoder attends to)."""

    pooled: list[torch.Tensor]
    tokens: list[torch.Tensor] = field(default_factory=list)

    def all_pooled(self) -> torch.Tensor:
        return torch.cat(self.pooled, dim=1)  # [B, V, D]


@dataclass
class Step:
    """One step of a base method on its batch, computed once and shared, in this order, by the base loss,
    a wrapper's loss (AB) and ``finish_step`` (which alone may move state such as DINO's centre)."""

    batch: dict
    views: Views
    online: Encoded
    target: Encoded | None = None  # the target network's encodings of ``target_groups``
    target_logits: torch.Tensor | None = None  # [B, G, L] annotation logits of the target views
    target_probs: torch.Tensor | None = None  # [B, G, L] p_target(l | x) of the target views
    keys: torch.Tensor | None = None  # [L, P] a per-step annotation set from the target network, all ranks
    captions: list[str] | None = None  # CLIP: the caption drawn for each image
    text: torch.Tensor | None = None  # CLIP: the online text tower's embeddings of the captions (gradient)
    target_text: torch.Tensor | None = None  # CLIP under AB: the target text tower's embeddings, all ranks


def tensor_momentum(update_target):
    """Marks an ``update_target`` that takes a 0-dim device tensor as momentum (see ``ema_update_``): the loop
    then skips a non-finite step's target update on the device; an unmarked one (a plugin's) gets a float and
    the loop reads the step's finite flag on the host first."""
    update_target.tensor_momentum = True
    return update_target


@torch.no_grad()
def ema_update_(ema: ModelEmaV3, model: nn.Module, momentum: float | torch.Tensor) -> None:
    """ema <- momentum ema + (1 - momentum) model, over parameters and floating buffers (as timm's ModelEmaV3;
    integer buffers are copied). A float: timm's own update. A 0-dim tensor (on the device): the same with the
    weight read by the kernels, never by the host; momentum 1 leaves every value as it was."""
    if not isinstance(momentum, torch.Tensor):
        ema.decay = momentum
        ema.update(model)
        return
    weight = 1 - momentum
    ema_values, model_values = [], []
    for e, m in zip(ema.module.state_dict().values(), model.state_dict().values()):
        if e.is_floating_point():
            ema_values.append(e)
            model_values.append(m)
        else:
            e.copy_(torch.where(weight > 0, m, e))
    if ema_values:
        diffs = torch._foreach_sub(model_values, ema_values)
        torch._foreach_mul_(diffs, weight)
        torch._foreach_add_(ema_values, diffs)


class Method(nn.Module):
    """The interface the training loop and the exporter see; every hook has a default."""

    method_name: str = "?"  # set by @register
    config_class: type | None = None
    step, total_steps, seed, rank = 0, 1, 0, 0  # set_step() updates them before every step

    @classmethod
    def from_config(cls, method_cfg, encoder: Encoder) -> Method:
        """Build from the recipe's ``method:`` section: ``cls(encoder, method.NAME, augment=method.augment)``."""
        return cls(encoder, config_of(method_cfg, cls.method_name), augment=method_cfg.augment)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """One step's loss (a scalar with gradient) and metrics (scalars) from one loader batch."""
        raise NotImplementedError

    def build_loader(self, data_cfg: DataConfig, rank: int = 0, world_size: int = 1,
                     second: DataConfig | None = None):
        """The rank's training loader; ``second`` is the recipe's second stream (``annotation_data``), which
        only methods that read two streams (AB) accept."""
        if second is not None:
            raise ValueError(f"method {self.method_name} reads one stream: annotation_data must not be set")
        return build_loader(data_cfg, rank, world_size)

    def has_unused_parameters(self) -> bool:
        """True when some trainable parameters get no gradient in a step (DDP must then look for them:
        ``find_unused_parameters``)."""
        return False

    def samples_per_step(self, data_cfg: DataConfig) -> int:
        """Samples one step loads per process (the throughput the loop logs as samples_per_s)."""
        return data_cfg.batch_size

    def diagnostics(self, data_cfg: DataConfig, n: int) -> dict | None:
        """Method-specific diagnostics on ``n`` probe samples, or None: the trainer's default (srank and
        RankMe of the target encoder's features on a fixed batch of centre crops)."""
        return None

    def data_format(self, data_cfg: DataConfig) -> str:
        """The data format the encoder read, as the export records it (``vispre.data.formats``)."""
        return data_cfg.format

    def export_modules(self, which: str = "target") -> dict[str, ExportedModule]:
        """Extra modules to export beside the encoder (``NAME.safetensors`` + the spec that rebuilds it),
        from the ``which`` network."""
        return {}

    def set_step(self, step: int, total_steps: int, seed: int = 0, rank: int = 0) -> None:
        """Called before every step: schedules that live in the method, and the step's RNG."""
        self.step, self.total_steps, self.seed, self.rank = step, total_steps, seed, rank

    @tensor_momentum
    def update_target(self, momentum: float | torch.Tensor) -> None:
        """EMA/target update after an optimizer step (no-op for methods without a target). ``momentum``: a
        float, or, from a method whose ``update_target`` is marked ``@tensor_momentum``, a 0-dim tensor on the
        device (1.0 after a step skipped on the device: nothing moves; the host never reads it)."""

    def before_optimizer_step(self) -> None:
        """Hook between backward and the optimizer step (e.g. DINO freezes its last layer early on)."""

    def export_encoder(self, which: str = "target") -> Encoder:
        """The encoder of the ``online`` or ``target`` network."""
        raise NotImplementedError


def rename_legacy_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints written before the online/target vocabulary named the networks student/teacher."""
    for old, new in (("student.", "online."), ("teacher.", "target.")):
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)


class SSLMethod(Method):
    """A base method with an ``online`` network and its EMA copy ``target``.

    ``online`` is a ModuleDict holding at least ``encoder``; subclasses add their heads, and a wrapper such
    as AB adds its own modules with ``attach`` so the EMA copy includes them.
    """

    target_groups: tuple[int, ...] = (0,)  # crop groups the target network encodes (global views)
    uses_target = False  # whether the base loss itself needs the target network's view encodings
    needs_target = False  # set by a wrapper (AB) that needs them for its own targets
    ema_target = True  # False (AB's "no EMA target" ablation): the target is the online network, no gradient
    # the annotation space, for AB's own annotation head psi_AB: a fixed set of ``num_annotations`` (DINO's
    # prototypes, a classifier's classes) or, with None, a per-step set whose ``annotation_inputs`` of width
    # ``annotation_dim`` AB's head embeds (SimCLR: the annotation images' features; CLIP: caption embeddings)
    num_annotations: int | None = None
    annotation_dim: int | None = None

    def __init__(self, encoder: Encoder, heads: dict[str, nn.Module], augment: str = "dino"):
        super().__init__()
        self.online = nn.ModuleDict({"encoder": encoder, **heads})
        self.target = ModelEmaV3(self.online, decay=0.996)
        self.target.requires_grad_(False)
        self.augment = augment
        self.step, self.total_steps, self.seed, self.rank = 0, 1, 0, 0
        self.iou_bins = [0.0, 0.2, 0.4, 0.6, 1.0]
        self._register_load_state_dict_pre_hook(self._rename_legacy, with_module=False)

    def _rename_legacy(self, state_dict, prefix, *args):
        rename_legacy_keys(self, state_dict, prefix)

    def attach(self, modules: dict[str, nn.Module]) -> None:
        """Add a wrapper's modules (AB's decoder and annotation head) to both networks."""
        self.online.update(modules)
        self.target = ModelEmaV3(self.online, decay=self.target.decay)
        self.target.requires_grad_(False)

    # -- networks ---------------------------------------------------------------------------------
    def net(self, which: str) -> nn.ModuleDict:
        if which not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}, got {which!r}")
        return self.online if which == "online" or not self.ema_target else self.target.module

    @tensor_momentum
    def update_target(self, momentum: float | torch.Tensor) -> None:
        ema_update_(self.target, self.online, momentum)

    def export_encoder(self, which: str = "target") -> Encoder:
        return self.net(which)["encoder"]

    # -- views ------------------------------------------------------------------------------------
    def prepare(self, batch: dict, augment: str | None = None, stream: str = "photometric",
                params: bool = False) -> Views:
        """uint8 crops from the loader -> augmented, normalised views on the device (batched); ``params``:
        with each view's photometric parameters (``Views.photometric``)."""
        device = next(self.parameters()).device
        if "views" not in batch and "jpeg" in batch:  # data.decode_device=cuda: decoded and cropped here
            batch = decode_views(batch, device)
        generator = step_generator(device, self.seed, self.step, self.rank, stream)
        preset = augment or self.augment
        groups, described, view = [], [], 0
        for crops in batch["views"]:
            crops = crops.to(device, non_blocking=True)  # from pinned memory on CUDA: an asynchronous copy
            out = []
            for i in range(crops.shape[1]):
                # on the device, whole batches; float32 maths, the views written in the autocast dtype (bf16
                # under bf16 mixed precision: what the encoder's first layer reads anyway, half the memory)
                images, p = Photometric.preset(preset, view)(crops[:, i], generator, dtype="autocast",
                                                             return_params=True)
                out.append(images)
                described.append(p)
                view += 1
            groups.append(torch.stack(out, dim=1))
        return Views(groups, batch["boxes"].to(device, non_blocking=True), batch["flips"].to(device, non_blocking=True),
                     batch["valid"].to(device, non_blocking=True),
                     torch.stack(described, dim=1) if params else None)

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
    def annotations(self, step: Step) -> None:
        """The step's annotation set, from the target network (e.g. SimCLR's instance keys, CLIP's
        captions); called by ``begin`` once the views are encoded."""

    def annotation_inputs(self, which: str, step: Step) -> torch.Tensor:
        """[L, annotation_dim]: what AB's annotation head embeds for a per-step annotation set (all ranks;
        ``online`` with gradient)."""
        raise NotImplementedError(f"{type(self).__name__} has a fixed annotation set (num_annotations)")

    def base_loss(self, step: Step) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def finish_step(self, step: Step) -> None:
        """After every loss of the step has been computed: move per-step state (DINO's centre)."""

    def annotation_logits(self, which: str, features: torch.Tensor, step: Step) -> torch.Tensor:
        """Logits over the annotation space for pooled features [..., D] of the ``which`` network."""
        raise NotImplementedError

    def annotation_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """p_target(l | x) from target logits (the base method's own sharpening / centring)."""
        raise NotImplementedError

    def value_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def target_distribution(self, features: torch.Tensor, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, p_target(l | x)) for the target network's pooled features [..., D] of any views,
        against the step's annotation set."""
        logits = self.annotation_logits("target", features, step)
        return logits, self.annotation_probs(logits)

    def crop_accuracy(self, online_logits: torch.Tensor, step: Step) -> dict:
        """Crop-prediction accuracy without actions: argmax p(l | x1) == argmax p_target(l | x2), by IoU."""
        with torch.no_grad():
            target = step.target_probs.argmax(-1)  # [B, G]
            n_target = target.shape[1]
            correct = online_logits.argmax(-1)[:, :, None] == target[:, None]  # [B, V, G]
            boxes = step.views.boxes
            iou = box_iou(boxes[:, :, None], boxes[:, None, :n_target])
            mask = pair_mask(boxes.shape[1], n_target, boxes.device)[None].expand_as(correct)
            return {**accuracy_by_iou(correct, iou, mask, self.iou_bins, "crop_acc"),
                    "crop_acc/chance": majority_rate(target)}

    # -- one step ---------------------------------------------------------------------------------
    def begin(self, batch: dict, tokens: bool = False) -> Step:
        """Views prepared and encoded once: online for every group, target for ``target_groups``
        (``tokens``: with their patch tokens)."""
        views = self.prepare(batch)
        step = Step(batch, views, self.encode("online", views, tokens=tokens))
        if self.uses_target or self.needs_target:
            with torch.no_grad():
                step.target = self.encode("target", views, groups=self.target_groups, tokens=tokens)
        self.annotations(step)
        if self.uses_target:
            with torch.no_grad():
                step.target_logits, step.target_probs = self.target_distribution(step.target.all_pooled(), step)
        return step

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        step = self.begin(batch)
        loss, metrics = self.base_loss(step)
        self.finish_step(step)
        return masked(loss, step.views.valid), metrics


def masked(loss: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Padding batches (all ``valid`` False, from a finite epoch's last steps) contribute zero
    gradient but still run forward/backward so every rank joins the all-reduce."""
    return loss * valid.any().to(loss.dtype)


def pair_mask(n_online: int, n_target: int, device) -> torch.Tensor:
    """[V_o, V_t] True where online view v and target view g are different views (v != g)."""
    v = torch.arange(n_online, device=device)[:, None]
    g = torch.arange(n_target, device=device)[None, :]
    return v != g
