"""What every offline-RL agent shares: its config's common part, the encoder, batches as tensors, one optimizer
step, augmentation.

An agent is an ``nn.Module`` with

    make_batch(data, rows, rng)  numpy batch for sampled rows (goals are drawn here for goal-conditioned agents)
    losses(batch)                (loss, metrics) on a tensor batch
    act(obs, goals, sample)      actions for observation stacks [B, S, ...] (goals: goal stacks or None)
    value(obs, goals)            V(s) / V(s, g) for the value error against Monte-Carlo returns (None: no value)

and ``update(batch)`` runs one Adam step on the sum of its losses and moves the Polyak targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..views.shift import shift_frames
from .networks import ActionSpace
from .transitions import Transitions


@dataclass
class AgentConfig:
    """What every agent's config has; each agent file subclasses it with its own fields."""

    name: str = "iql"  # a registered agent (vispre.rl.registry.AGENTS)
    steps: int = 5000
    batch_size: int = 256
    lr: float = 3e-4
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    discount: float = 0.99  # the task's; also the Monte-Carlo returns the value error compares against
    augment_pad: int = 4  # random shift for pixel arms (DrQ pad 4; OGBench pad 3); 0 = off
    augment_prob: float = 1.0  # per batch (OGBench p_aug 0.5 on manipulation)


@dataclass
class TDConfig(AgentConfig):
    """The value-learning part IQL and HIQL share."""

    layer_norm: bool = True  # on the value / Q MLPs
    tau: float = 0.005  # Polyak rate of the target networks
    expectile: float = 0.9  # IQL 0.7 (locomotion) / 0.9 (AntMaze, pixels); HIQL 0.7
    max_weight: float = 100.0  # AWR weights clipped here


def to_torch(batch: dict[str, np.ndarray], device) -> dict[str, torch.Tensor]:
    """uint8 frames stay uint8 until the encoder (4x less to move); floats become float32, ints int64."""
    out = {}
    for key, value in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(value))
        if t.is_floating_point():
            t = t.float()
        elif t.dtype not in (torch.uint8, torch.bool):
            t = t.long()
        out[key] = t.to(device, non_blocking=True)
    return out


class Agent(nn.Module):
    goal_conditioned = False  # act() / value() take goal observations; rewards come from the goals
    uses_dataset_rewards = False  # trains on the dataset's rewards (data.reward_scale / reward_shift apply)
    agent_name, config = "", AgentConfig  # set by @register_agent

    def __init__(self, encoder: nn.Module, space: ActionSpace, cfg: AgentConfig, frame_stack: int = 1):
        super().__init__()
        self.encoder, self.space, self.cfg, self.frame_stack = encoder, space, cfg, frame_stack
        self.optimizer: torch.optim.Optimizer | None = None
        self.targets: list = []  # ModelEmaV3 copies moved after each step
        self.generator = torch.Generator()

    # ----- set up
    def configure(self, encoder_lr: float = 0.0, train_encoder: bool = True, seed: int = 0) -> Agent:
        """Adam over the heads (agent.lr) and, if trained, the encoder (``encoder_lr``, 0 = agent.lr)."""
        self.generator.manual_seed(seed)
        target_ids = {id(p) for t in self.targets for p in t.parameters()}
        encoder_ids = {id(p) for p in self.encoder.parameters()}
        heads = [p for p in self.parameters() if id(p) not in target_ids | encoder_ids]
        groups = [{"params": heads, "lr": self.cfg.lr}]
        self.encoder.requires_grad_(train_encoder)
        if train_encoder and encoder_ids:
            groups.append({"params": list(self.encoder.parameters()), "lr": encoder_lr or self.cfg.lr})
        self.optimizer = torch.optim.Adam(groups)
        return self

    # ----- one step
    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.train()
        loss, metrics = self.losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        for target in self.targets:
            target.update(self.target_source(target))
        return {k: float(v) for k, v in metrics.items()}

    def target_source(self, target) -> nn.Module:
        raise NotImplementedError

    def augment(self, *stacks: torch.Tensor) -> list[torch.Tensor]:
        """Random shift of pixel stacks [B, S, H, W, C], with probability augment_prob per batch; each
        stack is shifted independently (DrQ). Precomputed features ([B, S, D]) pass through."""
        pad = self.cfg.augment_pad
        if pad <= 0 or stacks[0].ndim != 5 or torch.rand((), generator=self.generator) >= self.cfg.augment_prob:
            return list(stacks)
        return [shift_frames(s, pad, self._device_generator(s)) for s in stacks]

    def _device_generator(self, x: torch.Tensor) -> torch.Generator | None:
        return self.generator if x.device.type == "cpu" else None

    # ----- interface
    def make_batch(self, data: Transitions, rows: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return data.batch(rows, self.frame_stack)

    def losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    @torch.no_grad()
    def act(self, obs: torch.Tensor, goals: torch.Tensor | None = None, sample: bool = True) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def value(self, obs: torch.Tensor, goals: torch.Tensor | None = None) -> torch.Tensor | None:
        return None
