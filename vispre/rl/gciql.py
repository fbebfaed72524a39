"""Goal-conditioned implicit Q-learning (GCIQL) as OGBench builds it (``impls/agents/gciql.py``).

Three networks, each with its own encoder reading [s; g]: V(s, g), twin Q(s, a, g) with a Polyak target, and
the actor. With value goals g (current / future / random) and actor goals g' (a later state):

    L_V   = E[ |tau - 1(u < 0)| u^2 ],  u = min_k Qbar_k(s, a, g) - V(s, g)          (target critic)
    L_Q   = sum_k E[ (r + gamma * m * V(s', g) - Q_k(s, a, g))^2 ]                    (online value, no gradient)
    actor (``actor_loss``):
      ddpgbc  L_pi = -E[ Q(s, mu(s, g'), g') ] / stopgrad(E|Q|) - alpha * E[ log pi(a | s, g') ]
              with Q = min_k of the ONLINE critic (its parameters held fixed: the gradient reaches the action)
      awr     L_pi = -E[ min(exp(alpha (min_k Q_k(s, a, g') - V(s, g'))), 100) log pi(a | s, g') ]
              with the advantage from the ONLINE critic and value

Defaults: expectile 0.9, DDPG+BC with alpha 0.3 (OGBench's get_config; hyperparameters.sh uses alpha 1.0 on
cube / scene / puzzle and 0.3 on mazes; discrete actions need ``actor_loss: awr``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .iql import awr_weights, expectile_loss, td_target
from .networks import ActionSpace, polyak_target
from .ogbench_layout import (
    MAX_WEIGHT,
    Ensemble,
    GCActor,
    GoalConditionedAgent,
    OGBenchConfig,
    action_input,
    frozen_call,
)
from .registry import register_agent


@dataclass
class GCIQLConfig(OGBenchConfig):
    name: str = "gciql"
    expectile: float = 0.9
    actor_loss: str = "ddpgbc"  # ddpgbc (continuous actions) | awr
    alpha: float = 0.3  # BC coefficient (ddpgbc) or AWR temperature (awr)


class GoalCritic(nn.Module):
    """Q_1, Q_2 (s, a, g) -> [2, B] (``heads`` = 1: V(s, g) -> [1, B]); one encoder reading [s; g]."""

    def __init__(self, goal_input: nn.Module, space: ActionSpace | None, hidden: list[int], layer_norm: bool,
                 heads: int = 2):
        super().__init__()
        self.input, self.space = goal_input, space
        self.heads = Ensemble(heads, goal_input.num_features + (space.n if space else 0), hidden, layer_norm)

    def forward(self, obs: torch.Tensor, goals: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        x = self.input(obs, goals)
        if self.space is not None:
            x = torch.cat([x, action_input(self.space, actions)], -1)
        return self.heads(x)


@register_agent("gciql", GCIQLConfig)
class GCIQL(GoalConditionedAgent):
    def __init__(self, encoder, space: ActionSpace, cfg: GCIQLConfig, frame_stack: int = 1):
        super().__init__(encoder, space, cfg, frame_stack)
        if cfg.actor_loss not in ("ddpgbc", "awr"):
            raise ValueError(f"agent.actor_loss must be ddpgbc or awr, got {cfg.actor_loss!r}")
        if cfg.actor_loss == "ddpgbc" and space.discrete:
            raise ValueError("GCIQL's DDPG+BC actor needs continuous actions: set agent.actor_loss=awr")
        self.value_net = GoalCritic(self.goal_input(), None, cfg.value_hidden, cfg.layer_norm, heads=1)
        self.critic = GoalCritic(self.goal_input(), space, cfg.value_hidden, cfg.layer_norm)
        self.actor_input = self.goal_input()
        self.actor = GCActor(self.actor_input.num_features, space, cfg.actor_hidden, cfg.const_std)
        self.critic_target = polyak_target(self.critic, cfg.tau)
        self.targets = [self.critic_target]
        self.collect_encoders(self.value_net.input, self.critic.input, self.actor_input)

    def target_source(self, target):
        return self.critic

    def losses(self, batch):
        cfg = self.cfg
        batch = self.augmented(batch)
        obs, actions, value_goals = batch["observations"], batch["actions"], batch["value_goals"]
        with torch.no_grad():
            q_target = self.critic_target.module(obs, value_goals, actions).min(0).values
            next_v = self.value_net(batch["next_observations"], value_goals)[0]
        v = self.value_net(obs, value_goals)[0]
        value_loss = expectile_loss(q_target - v, cfg.expectile)
        q = td_target(batch["rewards"], batch["masks"], next_v, cfg.discount)
        q1, q2 = self.critic(obs, value_goals, actions)
        critic_loss = ((q1 - q).square() + (q2 - q).square()).mean()

        goals = batch["actor_goals"]
        x = self.actor_input(obs, goals)
        log_prob = self.actor.log_prob(x, actions)
        if cfg.actor_loss == "ddpgbc":
            dist = self.actor.dist(x)
            pi = (dist.mean if cfg.const_std else dist.rsample()).clamp(-1, 1)
            q_pi = frozen_call(self.critic, obs, goals, pi).min(0).values
            q_loss = -q_pi.mean() / (q_pi.abs().mean().detach() + 1e-6)
            actor_loss = q_loss - cfg.alpha * log_prob.mean()
            extra = {"actor_q_loss": q_loss, "q_pi_mean": q_pi.mean()}
        else:
            with torch.no_grad():
                advantage = self.critic(obs, goals, actions).min(0).values - self.value_net(obs, goals)[0]
                weights = awr_weights(advantage, cfg.alpha, MAX_WEIGHT)
            actor_loss = -(weights * log_prob).mean()
            extra = {"adv": advantage.mean()}
        metrics = {"value_loss": value_loss, "critic_loss": critic_loss, "actor_loss": actor_loss,
                   "v_mean": v.mean(), "q_mean": q.mean(), "bc_log_prob": log_prob.mean(), **extra}
        return value_loss + critic_loss + actor_loss, {k: t.detach() for k, t in metrics.items()}

    @torch.no_grad()
    def act(self, obs, goals=None, sample=True):
        return self.actor.act(self.actor_input(obs, goals), sample)

    @torch.no_grad()
    def value(self, obs, goals=None):
        return None if goals is None else self.value_net(obs, goals)[0]
