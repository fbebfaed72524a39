"""Heads on encoder features shared by the agents: MLPs, twin Q, V, and discrete / Gaussian policies."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.utils.model_ema import ModelEmaV3
from torch import nn
from torch.distributions import Categorical, Independent, Normal


@dataclass(frozen=True)
class ActionSpace:
    """``discrete``: n actions 0..n-1 (int); else an n-dim box in [-1, 1] (OGBench's convention)."""

    discrete: bool
    n: int


def mlp(in_dim: int, hidden: list[int] | tuple[int, ...], out_dim: int, layer_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), *([nn.LayerNorm(width)] if layer_norm else []), nn.GELU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class TwinQ(nn.Module):
    """Q_1, Q_2 (Fujimoto et al.'s clipped double Q). Discrete: one output per action; continuous: Q(s, a)."""

    def __init__(self, in_dim: int, space: ActionSpace, hidden, layer_norm: bool = True):
        super().__init__()
        self.space = space
        q_in, q_out = (in_dim, space.n) if space.discrete else (in_dim + space.n, 1)
        self.q1, self.q2 = mlp(q_in, hidden, q_out, layer_norm), mlp(q_in, hidden, q_out, layer_norm)

    def forward(self, features: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.space.discrete:
            index = actions.long().view(-1, 1)
            return self.q1(features).gather(1, index).squeeze(1), self.q2(features).gather(1, index).squeeze(1)
        x = torch.cat([features, actions.float()], 1)
        return self.q1(x).squeeze(1), self.q2(x).squeeze(1)


class Policy(nn.Module):
    """pi(a | features): Categorical over discrete actions, or a Gaussian with tanh-squashed mean and a
    state-independent log-std (CORL's IQL policy) for boxes in [-1, 1]."""

    def __init__(self, in_dim: int, space: ActionSpace, hidden, layer_norm: bool = False):
        super().__init__()
        self.space = space
        self.net = mlp(in_dim, hidden, space.n, layer_norm)
        if not space.discrete:
            self.log_std = nn.Parameter(torch.zeros(space.n))

    def dist(self, features: torch.Tensor, temperature: float = 1.0):
        out = self.net(features)
        if self.space.discrete:
            return Categorical(logits=out / max(temperature, 1e-6))
        std = self.log_std.clamp(-5.0, 2.0).exp() * temperature
        return Independent(Normal(torch.tanh(out), std.expand_as(out)), 1)

    def log_prob(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.dist(features).log_prob(actions.long() if self.space.discrete else actions.float())

    def act(self, features: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """A sampled action, or the mode (argmax / mean) when ``sample`` is False."""
        dist = self.dist(features)
        if sample:
            action = dist.sample()
            return action if self.space.discrete else action.clamp(-1, 1)
        return dist.logits.argmax(-1) if self.space.discrete else dist.mean


def polyak_target(module: nn.Module, tau: float) -> ModelEmaV3:
    """A target copy updated by ``.update(module)`` as theta_bar <- tau * theta + (1 - tau) * theta_bar."""
    return ModelEmaV3(module, decay=1.0 - tau)
