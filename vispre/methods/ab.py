"""Annotation Bootstrapping (Ghosh & Levine): value learning on the augmentation MDP of crops, as the AB
preprint's Algorithms 1-2 and Table 7 specify it, with v1's gamma and max (``research/ab_paper.md``).

Every step draws two batches (preprint Alg. 2):
  annotation batch  the base method's own images, views and augmentation (``data``, or the second stream
                    ``annotation_data`` in the decoupled and supervised-reward variants), size base // 2:
                    the base loss, and the annotation set l (SimCLR: its images; CLIP: its captions;
                    DINO: the prototypes; a classifier: the classes)
  bootstrap batch   unlabeled images of ``data``, size base // 8, ``bootstrap_views``: 4 views each at
                    RandomResizedCrop(0.05, 1), no flip, no colour augmentation (``bootstrap_augment``)
For every ordered pair (i, j), i != j, of one bootstrap image's views, a = bb_{i->j}:

  p_target(l | x_j)  = the base's target distribution of x_j over the annotation batch's l       (Eq. 3)
  Q(l | x_i, a)      = softmax_l( t_AB <phi_AB(x_i, a), psi_AB(l)> )   (unit vectors)            (Eq. 4)
  y(l)               = (1 - gamma) p_target(l | x_j) + gamma N[ max_{a' in A'} Q_target(l | x_j, a') ]  (v1)
  L_AB               = mean over images and pairs i != j of  KL( y || Q(. | x_i, bb_{i->j}) )    (Eq. 5)
  L                  = annotation_weight L_base + bootstrap_weight L_AB                          (ratio 1)

phi_AB is the action decoder on the online encoder's tokens of x_i (``vispre.models.action_decoder``);
psi_AB and t_AB are AB's own annotation head (``vispre.models.heads.AnnotationHead``), online with gradient.
Everything in y comes from the EMA target network under stop-gradient. Q_target is a distribution over the
same l as p_target (same units); the normalisation N is explicit (``target_norm``): ``future`` (default,
ours) normalises the max term over l, so y sums to 1 and the reward keeps its weight 1 - gamma; ``total``
normalises y after the max (the old behaviour: the reward's effective weight falls below 1 - gamma);
``none`` leaves y as it is (for ``bce``). Each step logs the max term's mass and the reward's effective
weight in y. A' holds the other bootstrap views' boxes and ``num_candidates`` random boxes, never a' = stay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from ..data import CropGroup, DataConfig, build_loader
from ..data.paired import PairedLoader
from ..models import ActionDecoder, AnnotationHead
from ..utils.device_constants import device_constant
from ..utils.diagnostics import accuracy_in_bins, majority_rate
from ..views.boxes import box_iou, candidate_boxes, relative_action
from ..views.photometric import Photometric
from .base import Encoded, Method, SSLMethod, Step, Views, masked, pair_mask, step_generator, tensor_momentum
from .registry import METHODS, register

DIVERGENCES, NORMS = ("kl", "bce"), ("future", "total", "none")


@dataclass
class ABConfig:
    # the bootstrap batch (preprint Table 7); the annotation batch is data (or annotation_data), size base // 2
    bootstrap_batch_size: int = 128  # per rank; the paper: base // 8
    bootstrap_views: list[CropGroup] = field(default_factory=lambda: [CropGroup(count=4, size=224, scale=[0.05, 1.0])])
    bootstrap_flip: bool = False  # the paper's bootstrap views are RandomResizedCrop only
    bootstrap_augment: str = "none"  # photometric preset on bootstrap views (ablation: "simclr" / "dino")
    photometric_tokens: bool = False  # the target view's photometric parameters as an action token (option)
    # the value target (v1); the paper gives no gamma, candidate set or normalisation: ours
    gamma: float = 0.8  # ours
    target_norm: str = "future"  # future | total | none (module docstring); ours
    num_candidates: int = 8  # ours: random boxes in A' per target view, besides the other views' boxes
    candidate_scale: list[float] = field(default_factory=lambda: [0.05, 1.0])  # ours: the bootstrap views' RRC
    divergence: str = "kl"  # kl (the preprint's) | bce (per-annotation, sigmoid values)
    bce_bias: float = -10.0  # ours (SigLIP's initial logit bias): sigmoid outputs start near 4.5e-5
    # the networks: psi_AB / t_AB and the "S"-size decoder (depth and bins not given: ours)
    dim: int = 256  # ours: width of phi_AB and psi_AB
    head_hidden_dim: int = 1024  # ours: psi_AB's MLP for per-step annotation sets (SimCLR, CLIP)
    init_temperature: float = 0.07  # ours: t_AB starts at 1 / 0.07 (CLIP's)
    decoder_width: int = 384  # "S"
    decoder_depth: int = 2  # ours
    decoder_heads: int = 6
    action_encoding: str = "tokens"  # tokens (the paper's discretised relative box) | fourier (ours)
    box_bins: int = 100  # ours
    box_range: list[float] = field(default_factory=lambda: [-4.5, 5.5])  # ours: corners in the source view's frame
    # ablations (preprint Table 5)
    mask_actions: bool = False  # action tokens replaced by mask tokens, decoder kept
    ema_target: bool = True  # False: targets from the online network (no gradient)
    annotation_weight: float = 1.0  # 0: no annotation (base) loss
    bootstrap_weight: float = 1.0  # 0: no bootstrapping loss (and no bootstrap batch)
    # value accuracy bins (the paper's): IoU 0, (0.01, 0.2], (0.2, 0.5], (0.5, 0.8]
    value_acc_bins: list[list[float]] = field(default_factory=lambda: [[0.0, 0.0], [0.01, 0.2], [0.2, 0.5],
                                                                       [0.5, 0.8]])


@register("ab", config=ABConfig)
class AB(Method):
    """Wraps a base method (``method.base``), built from its own section of the recipe (``from_config``)."""

    @classmethod
    def from_config(cls, method_cfg, encoder) -> AB:
        base_cls = METHODS.get(method_cfg.base)
        if base_cls is None or not issubclass(base_cls, SSLMethod):
            bases = sorted(n for n, c in METHODS.items() if issubclass(c, SSLMethod))
            raise ValueError(f"method.base must be one of {bases}, got {method_cfg.base!r}")
        return cls(base_cls.from_config(method_cfg, encoder), method_cfg.ab)

    def __init__(self, base: SSLMethod, ab: ABConfig):
        super().__init__()
        if ab.divergence not in DIVERGENCES or ab.target_norm not in NORMS:
            raise ValueError(f"method.ab: divergence must be one of {DIVERGENCES} and target_norm one of {NORMS}, "
                             f"got {ab.divergence!r}, {ab.target_norm!r}")
        fixed = base.num_annotations
        head = AnnotationHead(ab.dim, num_annotations=fixed, in_dim=None if fixed else base.annotation_dim,
                              hidden_dim=ab.head_hidden_dim, init_scale=math.log(1 / ab.init_temperature),
                              bias_init=ab.bce_bias if ab.divergence == "bce" else None)
        decoder = ActionDecoder(base.online["encoder"].num_features, ab.dim, ab.decoder_width, ab.decoder_depth,
                                ab.decoder_heads, encoding=ab.action_encoding, bins=ab.box_bins,
                                box_range=ab.box_range, mask_actions=ab.mask_actions,
                                photometric_dim=Photometric.PARAMS if ab.photometric_tokens else 0)
        base.attach({"ab_decoder": decoder, "ab_head": head})
        base.needs_target, base.ema_target = True, ab.ema_target
        self.base, self.cfg = base, ab

    # -- the loop's hooks: the base method owns the networks ----------------------------------------
    def set_step(self, step, total_steps, seed=0, rank=0):
        super().set_step(step, total_steps, seed, rank)
        self.base.set_step(step, total_steps, seed, rank)

    @tensor_momentum
    def update_target(self, momentum) -> None:
        self.base.update_target(momentum)

    def before_optimizer_step(self) -> None:
        self.base.before_optimizer_step()

    def has_unused_parameters(self) -> bool:  # without one of the two losses its heads get no gradient
        return self.cfg.annotation_weight == 0 or self.cfg.bootstrap_weight == 0

    def samples_per_step(self, data_cfg: DataConfig) -> int:  # the annotation batch + the bootstrap batch
        return data_cfg.batch_size + (self.cfg.bootstrap_batch_size if self.cfg.bootstrap_weight > 0 else 0)

    def export_encoder(self, which: str = "target"):
        return self.base.export_encoder(which)

    def build_loader(self, data_cfg: DataConfig, rank: int = 0, world_size: int = 1,
                     second: DataConfig | None = None) -> PairedLoader:
        """Bootstrap batches from ``data`` with the bootstrap views; annotation batches from ``second``
        (``annotation_data``) or, without one, from ``data`` again under another seed (other images)."""
        cfg, loaders = self.cfg, {}
        if cfg.bootstrap_weight > 0:
            bootstrap = replace(data_cfg, views=list(cfg.bootstrap_views), batch_size=cfg.bootstrap_batch_size,
                                flip=cfg.bootstrap_flip, eval_size=None)
            loaders["bootstrap"] = build_loader(bootstrap, rank, world_size)
        annotation = second if second is not None else replace(data_cfg, seed=data_cfg.seed + 1)
        loaders["annotation"] = self.base.build_loader(annotation, rank, world_size)
        return PairedLoader(loaders)

    # -- one step -----------------------------------------------------------------------------------
    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        step = self.base.begin(batch["annotation"])
        loss, metrics = step.views.images[0].new_zeros((), dtype=torch.float32), {}  # views may be bf16
        if cfg.annotation_weight > 0:
            base_loss, metrics = self.base.base_loss(step)
            loss = loss + cfg.annotation_weight * masked(base_loss, step.views.valid)
        if cfg.bootstrap_weight > 0:
            views = self.bootstrap_views(batch["bootstrap"])
            ab_loss, ab_metrics = self.bootstrap_loss(step, views)
            loss = loss + cfg.bootstrap_weight * masked(ab_loss, views.valid)
            metrics = {**metrics, **ab_metrics, "td_loss": ab_loss.detach()}
        self.base.finish_step(step)  # after both losses: DINO's centre moves only now
        return loss, metrics

    def bootstrap_views(self, batch: dict) -> Views:
        """The bootstrap batch's crops, normalised (``bootstrap_augment``: none by default, no colour)."""
        return self.base.prepare(batch, augment=self.cfg.bootstrap_augment, stream="bootstrap",
                                 params=self.cfg.photometric_tokens)

    def bootstrap_loss(self, step: Step, views: Views) -> tuple[torch.Tensor, dict]:
        """L_AB over all ordered pairs (i, j), i != j, of each bootstrap image's views."""
        boxes, flips, n = views.boxes, views.flips, views.boxes.shape[1]
        online = self.base.encode("online", views, tokens=True)
        with torch.no_grad():
            target = self.base.encode("target", views, tokens=self.cfg.gamma > 0)
            _, p = self.base.target_distribution(target.all_pooled(), step)  # [B, V, L]
            y, metrics = self.td_target(p, views, target, self.annotation_embeddings("target", step))
        actions = relative_action(boxes[:, :, None], boxes[:, None], flips[:, :, None], flips[:, None])  # i -> j
        if views.photometric is not None:  # + x_j's photometric parameters
            actions = torch.cat([actions, views.photometric[:, None].expand(-1, n, -1, -1)], -1)
        logits = self.q_logits("online", online, actions, self.annotation_embeddings("online", step))  # [B, V, V, L]
        mask = pair_mask(n, n, logits.device)  # i != j
        per_pair = self.divergence(logits, y[:, None].expand_as(logits)).mean(0)
        loss = torch.where(mask, per_pair, 0.0).sum() / mask.sum()  # per_pair[mask] would sync the host
        metrics.update(self.value_accuracy(logits, p, boxes, mask))
        metrics["ab/t_ab"] = self.base.online["ab_head"].scale(self.base.online["ab_head"].max_scale).detach()
        return loss, metrics

    # -- Q(l | x, a) ---------------------------------------------------------------------------------
    def annotation_embeddings(self, which: str, step: Step) -> torch.Tensor:
        """psi_AB(l) [L, dim] of the ``which`` network: its table, or its MLP on the step's annotation inputs."""
        head = self.base.net(which)["ab_head"]
        if self.base.num_annotations is not None:
            return head.embed()
        return head.embed(self.base.annotation_inputs(which, step))

    def q_logits(self, which: str, encoded: Encoded, actions: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """Logits of Q(l | x, a) for each view (tokens per group [B, n_g, T, D]) and action [B, V, K, 5]:
        [B, V, K, L]."""
        net, out, start = self.base.net(which), [], 0
        for group in encoded.tokens:
            b, n, t, d = group.shape
            a = actions[:, start:start + n]
            phi = net["ab_decoder"](group.reshape(b * n, t, d), a.reshape(b * n, *a.shape[2:]))
            out.append(phi.view(b, n, a.shape[2], -1))
            start += n
        return net["ab_head"](torch.cat(out, dim=1), psi)

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        """Q(l | x, a) in the units of p_target: a distribution over l (kl), or per-l sigmoids (bce)."""
        return torch.sigmoid(logits) if self.cfg.divergence == "bce" else logits.softmax(-1)

    def divergence(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """kl: KL(y || softmax(logits)) = sum_l y (log y - log Q);  bce: sum_l BCE(sigmoid(logits), y)."""
        if self.cfg.divergence == "kl":
            return F.kl_div(logits.log_softmax(-1), y, reduction="none").sum(-1)
        return F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(-1)

    # -- the target -----------------------------------------------------------------------------------
    def td_target(self, p: torch.Tensor, views: Views, target: Encoded, psi: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """y = (1 - gamma) p_target(l | x_j) + gamma N[max_{a'} Q_target(l | x_j, a')] for every view j [B, V, L]."""
        cfg, gamma = self.cfg, self.cfg.gamma
        if gamma == 0:
            return p, {"ab/reward_weight": p.new_ones(())}
        boxes, flips, device = views.boxes, views.flips, p.device
        b, n = boxes.shape[:2]
        generator = step_generator(device, self.seed, self.step, self.rank, "candidates")
        random_boxes, random_flips = candidate_boxes(b, cfg.num_candidates, cfg.candidate_scale, generator=generator,
                                                     device=device, flip_p=0.5 if cfg.bootstrap_flip else 0.0)
        to = torch.cat([boxes, random_boxes], 1), torch.cat([flips.bool(), random_flips], 1)  # A': [B, V + K]
        actions = relative_action(boxes[:, :, None], to[0][:, None], flips[:, :, None], to[1][:, None])
        if views.photometric is not None:  # candidates: the other views' parameters; random boxes: identity
            # cached on the device: torch.tensor(..., device=cuda) would wait for the GPU every step
            identity = device_constant((1.0, 1, 1, 0, 0, 0, 0), device).expand(b, cfg.num_candidates, -1)
            photometric = torch.cat([views.photometric, identity], 1)  # [B, V + K, P]
            actions = torch.cat([actions, photometric[:, None].expand(-1, n, -1, -1)], -1)
        q = self.value(self.q_logits("target", target, actions, psi))  # [B, V, V + K, L]
        stay = torch.zeros(n, to[0].shape[1], dtype=torch.bool, device=device)
        stay[:, :n] = ~pair_mask(n, n, device)  # a' = "stay at x_j" is not a move
        future = q.masked_fill(stay[None, :, :, None], 0).amax(2)  # per-l max over A': [B, V, L]
        mass = future.sum(-1, keepdim=True)
        if cfg.target_norm == "future":
            y = (1 - gamma) * p + gamma * future / mass.clamp_min(1e-12)
        else:
            y = (1 - gamma) * p + gamma * future
            y = y / y.sum(-1, keepdim=True) if cfg.target_norm == "total" else y
        reward = (1 - gamma) * p.sum(-1) / y.sum(-1) if cfg.target_norm != "total" else \
            (1 - gamma) * p.sum(-1) / ((1 - gamma) * p.sum(-1) + gamma * mass[..., 0])
        return y, {"ab/future_mass": mass.mean(), "ab/target_mass": y.sum(-1).mean(), "ab/reward_weight": reward.mean()}

    @torch.no_grad()
    def value_accuracy(self, logits: torch.Tensor, p: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor) -> dict:
        """The paper's value accuracy: argmax_l Q(l | x_i, a_{i->j}) == argmax_l p_target(l | x_j) (the
        annotation of x_j, not the bootstrapped target), by IoU(x_i, x_j); chance: the most frequent argmax."""
        labels = p.argmax(-1)  # [B, V]: the annotation of each view x_j
        correct = logits.argmax(-1) == labels[:, None, :]  # [B, V_i, V_j]
        iou = box_iou(boxes[:, :, None], boxes[:, None])
        metrics = accuracy_in_bins(correct, iou, mask[None].expand_as(correct), self.cfg.value_acc_bins, "value_acc")
        metrics["value_acc/chance"] = majority_rate(labels)
        return metrics
