"""ICVF: intention-conditioned value functions from action-free video (Ghosh, Bhateja & Levine 2023).

V(s, s+, z) estimates the discounted occupancy of outcome s+ when acting to reach intent z from
s. With the release's shifted rewards (0 on reaching, -1 otherwise; mask 0 on reaching), values
are minus discounted step counts. One step (``src/icvf_learner.py``), target network V-bar:

    A   = r_z + gamma m_z min_k V-bar_k(s', z, z) - mean_k V-bar_k(s, z, z)     advantage of s -> s' for z
    y_k = r_g + gamma m_g V-bar_k(s', s+, z)                                     TD target, stop-gradient
    L   = sum_k mean_batch |alpha - 1(A < 0)| (y_k - V_k(s, s+, z))^2           expectile alpha = 0.9

One shared encoder under a k = 2 ensemble of heads (``vispre.models.icvf``); the target network
(encoder and heads) is a Polyak average, moved by the trainer's ``update_target(momentum)``
(tau = 1 - momentum: the recipes set ema_momentum = ema_momentum_end = 0.995, the release's 0.005).
Samples (s, s', s+, z) come from ``vispre.data.goals`` (clip shards, ``data.format: clip``) or
``vispre.data.trajectories`` (OGBench-layout arrays, ``data.format: trajectories``, ``data.spec``
the ``.npz`` path): the method builds its own loader (``build_loader``). Export: the encoder, and
phi (the first head's phi MLP on the encoder's pooled feature) as a separate module.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from timm.utils.model_ema import ModelEmaV3
from torch import nn

from ..data import ClipFrames, DataConfig, build_loader, formats
from ..data.goals import ClipQuadruples, GoalMix, resolve_random
from ..data.trajectories import TrajectoryLoader
from ..models import Encoder
from ..models.exportable import ExportedModule, ExportSpec
from ..models.icvf import GridFeatures, ValueEnsemble, ValueFunction
from ..utils.diagnostics import rankme, spearman, srank
from ..views.photometric import Photometric
from ..views.shift import random_shift
from .base import Method, ema_update_, masked, step_generator, tensor_momentum
from .registry import register


@dataclass
class ICVFConfig:
    head: str = "multilinear"  # multilinear (ICVF) | monolithic (ViVa)
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])  # phi/psi/T MLPs; d = the last
    layer_norm: bool = False  # LayerNorm+GELU MLPs instead of ReLU ones
    ensemble: int = 2
    discount: float = 0.99
    expectile: float = 0.9
    min_q: bool = True  # the advantage's next value: min over the ensemble (else the mean)
    no_intent: bool = False  # ablation: z constant, advantage 0 (a plain goal-conditioned value)
    # (s, s', s+, z) sampling: see vispre.data.goals
    p_current: float = 0.2
    p_future: float = 0.5
    p_random: float = 0.3
    future: str = "uniform"  # uniform (release) | uniform_after | geometric (offsets ~ Geom(1 - discount))
    p_same: float = 0.5  # s+ := z
    crop_pad: int = 0  # random shift of each of s, s', s+, z on its own (the video code: 16 px at 128 px frames)
    intent_same_video: bool = False  # random intents from the sample's own clip (the video code); clip data only
    features: str = "pooled"  # pooled: the encoder's pooled feature | grid: its last map pooled to grid x grid
    grid: int = 4  # features: grid; phi's input is then C * grid^2 (MiniGrid: the 4x4 map, kept whole)
    diagnostic_pairs: int = 2000  # (s, g) pairs for the value/distance rank correlations

    def goal_mix(self) -> GoalMix:
        mix = GoalMix(self.p_current, self.p_future, self.p_random, self.future, self.discount, self.p_same)
        mix.check()
        return mix


@register("icvf", config=ICVFConfig)
class ICVF(Method):
    def __init__(self, encoder: Encoder, icvf: ICVFConfig, augment: str = "none"):
        super().__init__()
        if not 0 < icvf.expectile < 1 or icvf.ensemble < 1:
            raise ValueError(f"method.icvf: expectile must be in (0, 1) and ensemble >= 1, got {icvf}")
        self.cfg, self.mix, self.augment = icvf, icvf.goal_mix(), augment
        if icvf.features not in ("pooled", "grid"):
            raise ValueError(f"method.icvf.features must be 'pooled' or 'grid', got {icvf.features!r}")
        self.grid = GridFeatures(icvf.grid) if icvf.features == "grid" else None
        in_dim = encoder.num_features * (icvf.grid ** 2 if self.grid is not None else 1)
        value = ValueEnsemble(icvf.head, in_dim, icvf.hidden_dims, icvf.ensemble, icvf.layer_norm)
        self.online = nn.ModuleDict({"encoder": encoder, "value": value})
        self.target = ModelEmaV3(self.online, decay=0.995)
        self.target.requires_grad_(False)
        self.probe: list | None = None
        self.trajectories: TrajectoryLoader | None = None

    def encode(self, net: nn.ModuleDict, images: torch.Tensor) -> torch.Tensor:
        """What the heads read: the pooled feature, or the grid-pooled map (``features: grid``)."""
        out = net["encoder"](images)
        return out.pooled if self.grid is None else self.grid(out.tokens)

    def net(self, which: str) -> nn.ModuleDict:
        return self.online if which == "online" else self.target.module

    # -- data -------------------------------------------------------------------------------------------
    def build_loader(self, cfg: DataConfig, rank: int = 0, world_size: int = 1, second: DataConfig | None = None):
        """Clip shards (``data.format: clip``) or an OGBench-layout ``.npz`` (``data.format: trajectories``)."""
        if second is not None:
            raise ValueError("method icvf reads one stream: annotation_data must not be set")
        if cfg.format == formats.TRAJECTORIES:
            if self.cfg.intent_same_video:
                raise ValueError("method.icvf.intent_same_video needs clip data (data.format: clip): a trajectory "
                                 "array's random frames are not drawn per clip")
            self.trajectories = TrajectoryLoader(cfg.spec, self.mix, cfg.batch_size, rank=rank, world_size=world_size,
                                                 seed=cfg.seed, samples_per_epoch=cfg.samples_per_epoch,
                                                 frame_size=cfg.frame_size)
            return self.trajectories
        if cfg.format != "clip":
            raise ValueError(f"method icvf reads data.format 'clip' (shards) or 'trajectories' (.npz), "
                             f"got {cfg.format!r}")
        return build_loader(cfg, rank, world_size, transform=ClipQuadruples(self.mix, cfg.frame_size, cfg.max_pixels))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, H, W] -> normalised float (with the recipe's photometric preset)."""
        generator = step_generator(images.device, self.seed, self.step, self.rank, "photometric")
        return Photometric.preset(self.augment, 0)(images, generator, dtype="autocast")  # bf16 under autocast

    # -- loss -------------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        cfg, device = self.cfg, next(self.parameters()).device
        frames = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        q = resolve_random(frames, step_generator("cpu", self.seed, self.step, self.rank, "goals"),
                           intent_same_clip=cfg.intent_same_video)
        if cfg.no_intent:
            q["intent"] = torch.zeros_like(q["intent"])
        b = q["s"].shape[0]
        images = self.prepare(torch.cat([q["s"], q["s_next"], q["goal"], q["intent"]]))
        if cfg.crop_pad:  # one independent shift per image: s, s', s+ and z each get their own
            images = random_shift(images, cfg.crop_pad, step_generator(images.device, self.seed, self.step,
                                                                       self.rank, "crop"))
        with torch.no_grad():
            target = self.target.module
            f_s, f_next, f_g, f_z = self.encode(target, images).split(b)
            y = q["reward_g"] + cfg.discount * q["mask_g"] * target["value"](f_next, f_g, f_z)  # [k, B]
            next_zz = target["value"](f_next, f_z, f_z)
            next_zz = next_zz.min(0).values if cfg.min_q else next_zz.mean(0)
            adv = q["reward_z"] + cfg.discount * q["mask_z"] * next_zz - target["value"](f_s, f_z, f_z).mean(0)
            if cfg.no_intent:
                adv = torch.zeros_like(adv)
        o_s, o_g, o_z = self.encode(self.online, torch.cat([images[:b], images[2 * b:]])).split(b)
        v = self.online["value"](o_s, o_g, o_z)  # [k, B]
        weight = torch.where(adv >= 0, cfg.expectile, 1 - cfg.expectile)
        loss = (weight * (y - v).square()).mean(1).sum()
        reached = q["mask_g"] == 0
        metrics = {"icvf_loss": loss.detach(), "v": v.detach().mean(), "y": y.mean(), "adv": adv.mean(),
                   "adv_positive": (adv >= 0).float().mean(), "reached": reached.float().mean()}
        return masked(loss, batch["valid"].to(device, non_blocking=True)), metrics

    # -- target and export ------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        """The target network always runs in eval mode: its TD targets must not depend on batch statistics
        (or dropout) of the batch they are computed on."""
        super().train(mode)
        self.target.eval()
        return self

    @tensor_momentum
    def update_target(self, momentum) -> None:
        ema_update_(self.target, self.online, momentum)  # V-bar <- momentum V-bar + (1 - momentum) V

    def export_encoder(self, which: str = "target") -> Encoder:
        return self.net(which)["encoder"]

    def export_modules(self, which: str = "target") -> dict[str, ExportedModule]:
        """``value``: the whole value function V(s, s+, z) on encoder outputs (phi, psi, T and the heads);
        ``phi``: the first head's phi, the state representation (multilinear heads only). Both read
        ``Encoder(x).pooled`` or, with ``features: grid``, ``Encoder(x).tokens`` through the grid pooling."""
        cfg, net = self.cfg, self.net(which)
        common = {"width": net["encoder"].num_features, "hidden_dims": list(cfg.hidden_dims),
                  "layer_norm": cfg.layer_norm, "grid": cfg.grid if self.grid is not None else None}
        reads = "pooled" if self.grid is None else "tokens"
        value = ValueFunction(net["value"], self.grid)
        out = {"value": ExportedModule(value, ExportSpec("icvf_value", {
            **common, "head": cfg.head, "ensemble": cfg.ensemble}, reads))}
        phi = net["value"].heads[0].phi
        if phi is not None:
            out["phi"] = ExportedModule(phi if self.grid is None else nn.Sequential(self.grid, phi),
                                        ExportSpec("icvf_phi", common, reads, cfg.hidden_dims[-1]))
        return out

    # -- diagnostics ------------------------------------------------------------------------------------
    def probe_clips(self, cfg: DataConfig, frames: int) -> list[tuple[torch.Tensor, dict]]:
        """Whole clips (uint8 [T, 3, H, W], metadata) from the start of the data, ``frames`` frames in all."""
        if cfg.format == formats.TRAJECTORIES:
            source = self.trajectories or TrajectoryLoader(cfg.spec, self.mix, 1, frame_size=cfg.frame_size)
            clips = iter(source.episodes(len(source.ends)))
        else:
            probe_cfg = replace(cfg, resampled=False, workers=0, shuffle_buffer=0, shard_shuffle=False, batch_size=1)
            loader = build_loader(probe_cfg, transform=ClipFrames(cfg.frame_size, cfg.max_pixels))
            clips = ((batch["frames"][0], batch["json"][0]) for batch in loader)
        out, total = [], 0
        for clip in clips:
            if total >= frames:
                break
            out.append(clip)
            total += len(clip[0])
        return out

    @torch.no_grad()
    def diagnostics(self, cfg: DataConfig, frames: int = 256) -> dict:
        """On fixed probe clips, target network: srank/RankMe of the encoder features and of phi;
        Spearman of V(s, g, g) with minus the frame gap (g later in the same clip) and, where the
        clips carry true ``distances`` to the goal and end on it, with minus that distance."""
        if self.probe is None:
            self.probe = self.probe_clips(cfg, frames)
        net, device = self.net("target"), next(self.parameters()).device
        generator = torch.Generator().manual_seed(0)
        feats, pairs_v, gaps, goal_v, goal_d = [], [], [], [], []
        per_clip = max(1, self.cfg.diagnostic_pairs // len(self.probe))
        for clip, meta in self.probe:
            f = self.encode(net, self.prepare(clip.to(device)))
            feats.append(f)
            t = len(f)
            i = torch.randint(0, t - 1, (per_clip,), generator=generator)
            j = i + 1 + (torch.rand(per_clip, generator=generator) * (t - 1 - i)).long()
            pairs_v.append(net["value"](f[i], f[j], f[j]).mean(0))
            gaps.append((j - i).float())
            if meta.get("success") and "distances" in meta:
                goal = f[-1:].expand_as(f)
                goal_v.append(net["value"](f, goal, goal).mean(0))
                goal_d.append(torch.as_tensor(meta["distances"], dtype=torch.float32))
        feats = torch.cat(feats)
        out = {"srank": srank(feats), "rankme": rankme(feats),
               "spearman_gap": spearman(torch.cat(pairs_v).cpu(), -torch.cat(gaps))}
        if net["value"].heads[0].phi is not None:
            phi = net["value"].phi(feats)
            out.update(srank_phi=srank(phi), rankme_phi=rankme(phi))
        if goal_v:
            out["spearman_goal_distance"] = spearman(torch.cat(goal_v).cpu(), -torch.cat(goal_d))
        return out

