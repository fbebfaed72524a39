"""Behaviour cloning: maximise the likelihood of the dataset's actions (the sanity baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .agent import Agent, AgentConfig
from .networks import ActionSpace, Policy
from .registry import register_agent


@dataclass
class BCConfig(AgentConfig):
    name: str = "bc"


@register_agent("bc", BCConfig)
class BC(Agent):
    def __init__(self, encoder, space: ActionSpace, cfg: BCConfig, frame_stack: int = 1):
        super().__init__(encoder, space, cfg, frame_stack)
        self.policy = Policy(encoder.num_features, space, cfg.hidden)

    def losses(self, batch):
        (obs,) = self.augment(batch["observations"])
        # L_BC = -E[log pi(a | s)]; the encoder learns from this loss (there is no critic)
        log_prob = self.policy.log_prob(self.encoder(obs), batch["actions"])
        loss = -log_prob.mean()
        return loss, {"actor_loss": loss.detach()}

    @torch.no_grad()
    def act(self, obs, goals=None, sample=True):
        return self.policy.act(self.encoder(obs), sample)
