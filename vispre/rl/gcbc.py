"""Goal-conditioned behaviour cloning (GCBC) as OGBench builds it (``impls/agents/gcbc.py``): the actor
maximises the likelihood of the dataset's action towards a later state of the same trajectory (actor goals:
uniform over the rest of the trajectory). One network, with its own encoder reading [s; g] (see
``ogbench_layout``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .networks import ActionSpace
from .ogbench_layout import GCActor, GoalConditionedAgent, OGBenchConfig
from .registry import register_agent


@dataclass
class GCBCConfig(OGBenchConfig):
    name: str = "gcbc"


@register_agent("gcbc", GCBCConfig)
class GCBC(GoalConditionedAgent):
    image_keys = ("observations", "actor_goals")

    def __init__(self, encoder, space: ActionSpace, cfg: GCBCConfig, frame_stack: int = 1):
        super().__init__(encoder, space, cfg, frame_stack)
        self.actor_input = self.goal_input()
        self.actor = GCActor(self.actor_input.num_features, space, cfg.actor_hidden, cfg.const_std)
        self.collect_encoders(self.actor_input)

    def losses(self, batch):
        batch = self.augmented(batch)
        # L = -E[ log pi(a | s, g) ],  g a later state of the trajectory
        log_prob = self.actor.log_prob(self.actor_input(batch["observations"], batch["actor_goals"]), batch["actions"])
        loss = -log_prob.mean()
        return loss, {"actor_loss": loss.detach(), "bc_log_prob": log_prob.mean().detach()}

    @torch.no_grad()
    def act(self, obs, goals=None, sample=True):
        return self.actor.act(self.actor_input(obs, goals), sample)
