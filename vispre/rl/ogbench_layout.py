"""What OGBench's goal-conditioned agents share (``impls/agents/{gcbc,gcivl,gciql,hiql}.py`` and
``impls/utils/{encoders,networks,datasets}.py`` in github.com/seohongpark/ogbench, rewritten in PyTorch):
the common config, the networks and the goal-conditioned batch.

Network layout, as OGBench builds it:

* every network (value, critic, target critic, actor) has its **own encoder**; on pixels OGBench's
  ``impala_small`` (:class:`ImpalaEncoder`: three conv stacks of 16/32/32 channels, one residual block
  each, ReLU, a 512-unit dense layer with GELU), on states none (the state itself);
* the goal enters by **early fusion**: the encoder reads the channel-stacked ``[s; g]`` image (6 channels,
  3 x frame_stack each) and a vector ``[s, g]`` on states. An encoder that reads one frame only (a vispre
  export, a timm model, precomputed frozen features) cannot read [s; g]: then s and g are encoded by the
  same network's encoder and the features concatenated (late fusion; :class:`GoalInput` says which);
* MLPs are Dense -> GELU -> LayerNorm (**LayerNorm after the activation**, value networks only; actors have
  none), Xavier-uniform weights, zero biases; the value ensembles are two MLPs on one encoder;
* Gaussian actors have a **fixed standard deviation** (1, ``const_std``) and no tanh; their mean layer is
  initialised at scale 1e-2; discrete actors are categorical;
* **one random crop per sample** (pad 3, edge replicated), shared by all of the sample's images
  (observation, next observation and every goal), applied to a whole batch with probability ``augment_prob``
  (OGBench's p_aug: 0.5 on pixel manipulation, 0 elsewhere).

Goals are drawn by the one goal sampler (``vispre.data.goals`` through ``Transitions``): value goals
current / future (geometric, p = 1 - discount) / random = 0.2 / 0.5 / 0.3, actor goals a uniformly drawn
later state of the same trajectory; reward 0 and mask 0 when the state is the goal, else -1 and 1.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, Independent, Normal

from ..views.shift import shift_frames
from .agent import Agent, AgentConfig
from .networks import ActionSpace
from .transitions import Transitions, goal_rewards

MAX_WEIGHT = 100.0  # AWR weights are clipped here (OGBench)


@dataclass
class OGBenchConfig(AgentConfig):
    """OGBench's defaults (``get_config`` of its agents; state-based runs): batch 1024, 512x3 MLPs, lr 3e-4.
    Pixel runs (``impls/hyperparameters.sh``): batch_size 256, augment_prob 0.5 on manipulation, 500k steps."""

    steps: int = 1_000_000
    batch_size: int = 1024
    hidden: list[int] = field(default_factory=lambda: [512, 512, 512])  # not read: actor_hidden / value_hidden
    actor_hidden: list[int] = field(default_factory=lambda: [512, 512, 512])
    value_hidden: list[int] = field(default_factory=lambda: [512, 512, 512])
    layer_norm: bool = True  # value / critic MLPs: Dense -> GELU -> LayerNorm
    tau: float = 0.005
    const_std: bool = True  # Gaussian actors: std 1 (False: a learnt state-independent log-std)
    augment_pad: int = 3  # OGBench's random crop: pad 3, edge replicated
    augment_prob: float = 0.0  # p_aug (0.5 for pixel manipulation)
    shared_crop: bool = True  # one crop per sample for all its images (OGBench); False: one per image (DrQ)
    gc_negative: bool = True  # reward 0 at the goal and -1 elsewhere (False: 1 / 0)
    # value goals: current / future in the trajectory / random, future offsets geometric (p = 1 - discount)
    value_p_current: float = 0.2
    value_p_trajectory: float = 0.5
    value_p_random: float = 0.3
    value_geometric: bool = True
    # actor goals: by default a uniformly drawn later state of the same trajectory
    actor_p_current: float = 0.0
    actor_p_trajectory: float = 1.0
    actor_p_random: float = 0.0
    actor_geometric: bool = False


# ----- networks --------------------------------------------------------------------------------------------------
def _dense(in_dim: int, out_dim: int, scale: float = 1.0) -> nn.Linear:
    """OGBench's default_init: variance_scaling(scale, fan_avg, uniform) = Xavier uniform with gain sqrt(scale)."""
    layer = nn.Linear(in_dim, out_dim)
    nn.init.xavier_uniform_(layer.weight, gain=math.sqrt(scale))
    nn.init.zeros_(layer.bias)
    return layer


def og_mlp(in_dim: int, dims: list[int], activate_final: bool = False, layer_norm: bool = False) -> nn.Sequential:
    """OGBench's MLP: Dense per entry of ``dims``; GELU (then LayerNorm) after every layer but the last, and
    after the last too with ``activate_final``."""
    layers: list[nn.Module] = []
    for i, width in enumerate(dims):
        layers.append(_dense(in_dim, width))
        if i + 1 < len(dims) or activate_final:
            layers.append(nn.GELU())
            if layer_norm:
                layers.append(nn.LayerNorm(width, eps=1e-6))
        in_dim = width
    return nn.Sequential(*layers)


class _ResidualStack(nn.Module):
    def __init__(self, in_channels: int, channels: int, blocks: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)  # 'SAME': 64 -> 32 -> 16 -> 8
        self.blocks = nn.ModuleList(nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                                  nn.Conv2d(channels, channels, 3, padding=1)) for _ in range(blocks))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv(x))
        for block in self.blocks:
            x = x + block(x)
        return x


class ImpalaEncoder(nn.Module):
    """OGBench's IMPALA encoder; ``impala_small`` (the default here) has one residual block per stack.

    Reads uint8 stacks [B, S, H, W, C] (the S frames channel-stacked, oldest first, as OGBench's frame stack)
    and returns [B, 512]. ``fresh(in_channels)`` builds a new, randomly initialised copy for another input
    width (the per-network encoders, early fusion of [s; g])."""

    def __init__(self, in_channels: int = 3, image_size: int = 64, stack_sizes=(16, 32, 32), num_blocks: int = 1,
                 mlp_dims=(512,), layer_norm: bool = False):
        super().__init__()
        self.args = {"image_size": image_size, "stack_sizes": tuple(stack_sizes), "num_blocks": num_blocks,
                     "mlp_dims": tuple(mlp_dims), "layer_norm": layer_norm}
        self.in_channels = in_channels
        stacks, c = [], in_channels
        for width in stack_sizes:
            stacks.append(_ResidualStack(c, width, num_blocks))
            c = width
        self.stacks = nn.Sequential(*stacks)
        cells = c * math.ceil(image_size / 2 ** len(stack_sizes)) ** 2
        self.norm = nn.LayerNorm(cells, eps=1e-6) if layer_norm else None
        self.mlp = og_mlp(cells, list(mlp_dims), activate_final=True, layer_norm=layer_norm)
        self.num_features = mlp_dims[-1]

    def fresh(self, in_channels: int) -> ImpalaEncoder:
        return ImpalaEncoder(in_channels, **self.args)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        b, s, h, w, c = obs.shape
        x = obs.permute(0, 1, 4, 2, 3).reshape(b, s * c, h, w).float().div(255.0)
        x = F.relu(self.stacks(x)).flatten(1)
        if self.norm is not None:
            x = self.norm(x)
        return self.mlp(x)


class GoalInput(nn.Module):
    """The input a goal-conditioned network reads, with its own encoder (a fresh one, or a copy of ``prototype``):

    * ``goal=False``: enc(s);
    * early fusion (an encoder with ``fresh``, e.g. impala_small): enc([s; g]), the goal stacked on the channels;
    * late fusion (any other encoder: an export, timm, frozen features, states): [enc(s), enc(g)] (for states,
      whose encoder is the identity, that is OGBench's [s, g])."""

    def __init__(self, prototype: nn.Module, goal: bool = True):
        super().__init__()
        self.goal = goal
        self.early = goal and hasattr(prototype, "fresh")
        if hasattr(prototype, "fresh"):
            self.encoder = prototype.fresh(prototype.in_channels * (2 if self.early else 1))
        else:
            self.encoder = copy.deepcopy(prototype)
        width = self.encoder.num_features
        self.num_features = width * (2 if goal and not self.early else 1)

    def forward(self, obs: torch.Tensor, goals: torch.Tensor | None = None) -> torch.Tensor:
        if not self.goal:
            return self.encoder(obs)
        if self.early:
            return self.encoder(torch.cat([obs, goals], dim=1))  # [B, 2S, H, W, C]: channels [s; g]
        return torch.cat([self.encoder(obs), self.encoder(goals)], -1)


class Ensemble(nn.Module):
    """``n`` MLPs on the same input (OGBench's ensemblize): [n, B]."""

    def __init__(self, n: int, in_dim: int, hidden: list[int], layer_norm: bool):
        super().__init__()
        self.members = nn.ModuleList(og_mlp(in_dim, [*hidden, 1], layer_norm=layer_norm) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).squeeze(-1) for m in self.members])


class GCActor(nn.Module):
    """pi(a | x): OGBench's GCActor (Gaussian, no tanh, fixed std 1 or a learnt log-std in [-5, 2]) or
    GCDiscreteActor (categorical), on an MLP with GELU after every layer and no LayerNorm."""

    def __init__(self, in_dim: int, space: ActionSpace, hidden: list[int], const_std: bool = True):
        super().__init__()
        self.space, self.const_std = space, const_std
        self.net = og_mlp(in_dim, hidden, activate_final=True)
        self.out = _dense(hidden[-1] if hidden else in_dim, space.n, scale=1e-2)
        if not space.discrete and not const_std:
            self.log_std = nn.Parameter(torch.zeros(space.n))

    def dist(self, x: torch.Tensor, temperature: float = 1.0):
        out = self.out(self.net(x))
        if self.space.discrete:
            return Categorical(logits=out / max(temperature, 1e-6))
        log_std = torch.zeros_like(out) if self.const_std else self.log_std.clamp(-5.0, 2.0).expand_as(out)
        return Independent(Normal(out, log_std.exp() * max(temperature, 1e-6)), 1)

    def log_prob(self, x: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.dist(x).log_prob(actions.long() if self.space.discrete else actions.float())

    def mode(self, x: torch.Tensor) -> torch.Tensor:
        out = self.out(self.net(x))
        return out.argmax(-1) if self.space.discrete else out

    def act(self, x: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """A sampled action, or the mode (OGBench evaluates at temperature 0: the mode); boxes clipped to [-1, 1]."""
        action = self.dist(x).sample() if sample else self.mode(x)
        return action if self.space.discrete else action.clamp(-1, 1)


def shift_shared(stacks: list[torch.Tensor], pad: int = 3,
                 generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Stacks [B, S, H, W, C] of the same B samples, each padded by ``pad`` (edge replicated) and cropped back with
    ONE offset per sample for all of them (OGBench's ``augment``: a sample's images share their crop)."""
    if pad <= 0:
        return list(stacks)
    b, _, h, w, _ = stacks[0].shape
    device = stacks[0].device
    oy, ox = torch.randint(0, 2 * pad + 1, (2, b, 1), generator=generator).to(device)
    rows = (oy + torch.arange(h, device=device))[:, :, None]  # [B, H, 1]
    cols = (ox + torch.arange(w, device=device))[:, None, :]  # [B, 1, W]
    index = torch.arange(b, device=device)[:, None, None]
    out = []
    for obs in stacks:
        _, s, _, _, c = obs.shape
        x = F.pad(obs.permute(0, 1, 4, 2, 3).reshape(b, s * c, h, w), (pad, pad, pad, pad), mode="replicate")
        crop = x[index, :, rows, cols]  # advanced indices around the channel slice come first: [B, H, W, S * C]
        out.append(crop.reshape(b, h, w, s, c).permute(0, 3, 1, 2, 4))
    return out


def length_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / |x| * sqrt(d) (OGBench's LengthNormalize)."""
    return x / x.norm(dim=-1, keepdim=True) * math.sqrt(x.shape[-1])


def action_input(space: ActionSpace, actions: torch.Tensor) -> torch.Tensor:
    """What a critic reads of an action: the box vector, or the one-hot of a discrete action (OGBench)."""
    return F.one_hot(actions.long(), space.n).float() if space.discrete else actions.float()


def frozen_call(module: nn.Module, *args):
    """``module(*args)`` with its parameters treated as constants: gradients reach the inputs only (OGBench calls
    a network with the stored, not the differentiated, parameters, e.g. the critic in DDPG+BC)."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    return torch.func.functional_call(module, params, args)


# ----- the agent -------------------------------------------------------------------------------------------------
class GoalConditionedAgent(Agent):
    """Common part of OGBench's agents: goal-conditioned batches, the shared crop, per-network encoders.

    ``encoder`` (from the arm) is a prototype: every network builds its own from it (:class:`GoalInput`);
    ``self.encoder`` then holds all of them, so the arm's encoder_lr and freezing apply to every copy."""

    goal_conditioned = True
    image_keys = ("observations", "next_observations", "value_goals", "actor_goals")

    def __init__(self, encoder, space: ActionSpace, cfg: OGBenchConfig, frame_stack: int = 1):
        super().__init__(encoder, space, cfg, frame_stack)
        self.prototype = [encoder]  # in a list: not a registered submodule (never trained itself)

    def goal_input(self, goal: bool = True) -> GoalInput:
        return GoalInput(self.prototype[0], goal)

    def collect_encoders(self, *inputs: GoalInput) -> None:
        self.encoder = nn.ModuleList([i.encoder for i in inputs])

    # ----- batches
    def make_batch(self, data: Transitions, rows: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        cfg, stack = self.cfg, self.frame_stack
        batch = data.batch(rows, stack)
        value_goals = data.sample_goals(rows, rng, cfg.value_p_current, cfg.value_p_trajectory, cfg.value_p_random,
                                        cfg.discount if cfg.value_geometric else None)
        actor_goals = data.sample_goals(rows, rng, cfg.actor_p_current, cfg.actor_p_trajectory, cfg.actor_p_random,
                                        cfg.discount if cfg.actor_geometric else None)
        rewards, masks = goal_rewards(rows, value_goals)
        batch["rewards"], batch["masks"] = (rewards if cfg.gc_negative else rewards + 1.0), masks
        batch["value_goals"], batch["actor_goals"] = data.stack(value_goals, stack), data.stack(actor_goals, stack)
        self.extra_goals(data, rows, rng, batch)
        return batch

    def extra_goals(self, data: Transitions, rows: np.ndarray, rng: np.random.Generator, batch: dict) -> None:
        """Agent-specific goal images (HIQL's sub-goals)."""

    def augmented(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch with its images cropped: with probability augment_prob, one crop offset per sample shared by
        all its images (``shared_crop``, OGBench) or one per image; features and states pass through."""
        cfg = self.cfg
        keys = [k for k in self.image_keys if k in batch]
        if cfg.augment_pad <= 0 or batch[keys[0]].ndim != 5:
            return batch
        if torch.rand((), generator=self.generator) >= cfg.augment_prob:
            return batch
        stacks = [batch[k] for k in keys]
        g = self._device_generator(stacks[0])
        if cfg.shared_crop:
            shifted = shift_shared(stacks, cfg.augment_pad, g)
        else:
            shifted = [shift_frames(s, cfg.augment_pad, g) for s in stacks]
        return {**batch, **dict(zip(keys, shifted))}
