"""Implicit Q-Learning (Kostrikov, Nair, Levine, ICLR 2022) from pixels, discrete or continuous actions.

One encoder feeds twin Q, V and the policy (ours, for CPU budgets; OGBench/FQL give each network its
own encoder). The critic losses train the encoder; the policy reads stop-gradient features
(``actor_detach``). The target Q network (encoder included) is a Polyak copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .agent import Agent, TDConfig
from .networks import ActionSpace, Policy, TwinQ, mlp, polyak_target
from .registry import register_agent


@dataclass
class IQLConfig(TDConfig):
    name: str = "iql"
    beta: float = 10.0  # AWR inverse temperature (IQL's beta, OGBench's alpha)
    actor_detach: bool = True  # the policy reads stop-gradient features: the critic trains the encoder (ours)


def expectile_loss(diff: torch.Tensor, expectile: float, sign: torch.Tensor | None = None) -> torch.Tensor:
    """L2^tau(u) = |tau - 1(u < 0)| * u^2, averaged; ``sign`` (default ``diff``) picks the side (HIQL
    weights by the target network's advantage while regressing each head's own error)."""
    sign = diff if sign is None else sign
    weight = torch.where(sign < 0, 1.0 - expectile, expectile)
    return (weight * diff.square()).mean()


def td_target(rewards: torch.Tensor, masks: torch.Tensor, next_values: torch.Tensor, discount: float) -> torch.Tensor:
    """y = r + gamma * m * V(s'): masks (0 only at task completion) stop bootstrapping, trajectory ends do not."""
    return rewards + discount * masks * next_values


def awr_weights(advantages: torch.Tensor, beta: float, max_weight: float = 100.0) -> torch.Tensor:
    """w = min(exp(beta * A), max_weight)."""
    return torch.exp(beta * advantages).clamp(max=max_weight)


class Critic(nn.Module):
    """Encoder + twin Q: the part that has a Polyak target."""

    def __init__(self, encoder: nn.Module, space: ActionSpace, hidden, layer_norm: bool):
        super().__init__()
        self.encoder = encoder
        self.q = TwinQ(encoder.num_features, space, hidden, layer_norm)


@register_agent("iql", IQLConfig)
class IQL(Agent):
    uses_dataset_rewards = True

    def __init__(self, encoder, space: ActionSpace, cfg: IQLConfig, frame_stack: int = 1):
        super().__init__(encoder, space, cfg, frame_stack)
        self.critic = Critic(encoder, space, cfg.hidden, cfg.layer_norm)
        self.v = mlp(encoder.num_features, cfg.hidden, 1, cfg.layer_norm)
        self.policy = Policy(encoder.num_features, space, cfg.hidden)
        self.critic_target = polyak_target(self.critic, cfg.tau)
        self.targets = [self.critic_target]

    def target_source(self, target):
        return self.critic

    def losses(self, batch):
        cfg = self.cfg
        obs, next_obs = self.augment(batch["observations"], batch["next_observations"])
        actions = batch["actions"]
        features = self.encoder(obs)
        with torch.no_grad():
            target = self.critic_target.module
            q_target = torch.min(*target.q(target.encoder(obs), actions))
            next_v = self.v(self.encoder(next_obs)).squeeze(1)

        # L_V = E[ L2^tau( min_i Qbar_i(s, a) - V(s) ) ]
        v = self.v(features).squeeze(1)
        value_loss = expectile_loss(q_target - v, cfg.expectile)

        # L_Q = sum_i E[ (r + gamma * m * V(s') - Q_i(s, a))^2 ]
        y = td_target(batch["rewards"], batch["masks"], next_v, cfg.discount)
        q1, q2 = self.critic.q(features, actions)
        q_loss = (q1 - y).square().mean() + (q2 - y).square().mean()

        # L_pi = -E[ min(exp(beta * (Qbar(s, a) - V(s))), w_max) * log pi(a | s) ]
        weights = awr_weights(q_target - v.detach(), cfg.beta, cfg.max_weight)
        actor_features = features.detach() if cfg.actor_detach else features
        actor_loss = -(weights * self.policy.log_prob(actor_features, actions)).mean()

        metrics = {"value_loss": value_loss, "q_loss": q_loss, "actor_loss": actor_loss, "v_mean": v.mean(),
                   "adv_mean": (q_target - v).mean(), "weight_mean": weights.mean()}
        return value_loss + q_loss + actor_loss, {k: x.detach() for k, x in metrics.items()}

    @torch.no_grad()
    def act(self, obs, goals=None, sample=True):
        return self.policy.act(self.encoder(obs), sample)

    @torch.no_grad()
    def value(self, obs, goals=None):
        return self.v(self.encoder(obs)).squeeze(1)
