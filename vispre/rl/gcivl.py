"""Goal-conditioned implicit V-learning (GCIVL) as OGBench builds it (``impls/agents/gcivl.py``).

An action-free value V(s, g) (two heads on one encoder reading [s; g], a Polyak target) learnt by IQL's
expectile regression with the trick OGBench calls IVL: the expectile side is chosen by the *target*
network's advantage while each head regresses its own target,

    q     = r + gamma * m * min_k Vbar_k(s', g),   A = q - mean_k Vbar_k(s, g)
    L_V   = sum_k E[ |tau - 1(A < 0)| (r + gamma * m * Vbar_k(s', g) - V_k(s, g))^2 ]

and an actor extracted by AWR on the one-step value improvement of the online value,

    L_pi  = -E[ min(exp(alpha (mean_k V_k(s', g) - mean_k V_k(s, g))), 100) log pi(a | s, g) ]

with actor goals a uniformly drawn later state of the trajectory. Defaults: expectile 0.9, alpha 10
(OGBench's setting for every dataset in hyperparameters.sh).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .iql import awr_weights, expectile_loss, td_target
from .networks import ActionSpace, polyak_target
from .ogbench_layout import MAX_WEIGHT, Ensemble, GCActor, GoalConditionedAgent, OGBenchConfig
from .registry import register_agent


@dataclass
class GCIVLConfig(OGBenchConfig):
    name: str = "gcivl"
    expectile: float = 0.9
    alpha: float = 10.0  # AWR temperature


class GoalValue(nn.Module):
    """V_1, V_2 (s, g): two MLPs on one encoder reading [s; g] -> [2, B]."""

    def __init__(self, goal_input: nn.Module, hidden: list[int], layer_norm: bool, heads: int = 2):
        super().__init__()
        self.input = goal_input
        self.heads = Ensemble(heads, goal_input.num_features, hidden, layer_norm)

    def forward(self, obs: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
        return self.heads(self.input(obs, goals))


def ivl_value_loss(value: nn.Module, target: nn.Module, batch: dict, discount: float, expectile: float):
    """OGBench's IVL loss (see the module docstring); (loss, V_k(s, g) [2, B])."""
    with torch.no_grad():
        next_t = target(batch["next_observations"], batch["value_goals"])  # [2, B]
        now_t = target(batch["observations"], batch["value_goals"])
        advantage = td_target(batch["rewards"], batch["masks"], next_t.min(0).values, discount) - now_t.mean(0)
    v = value(batch["observations"], batch["value_goals"])
    loss = sum(expectile_loss(td_target(batch["rewards"], batch["masks"], next_t[k], discount) - v[k], expectile,
                              advantage) for k in range(v.shape[0]))
    return loss, v


@register_agent("gcivl", GCIVLConfig)
class GCIVL(GoalConditionedAgent):
    def __init__(self, encoder, space: ActionSpace, cfg: GCIVLConfig, frame_stack: int = 1):
        super().__init__(encoder, space, cfg, frame_stack)
        self.value_net = GoalValue(self.goal_input(), cfg.value_hidden, cfg.layer_norm)
        self.actor_input = self.goal_input()
        self.actor = GCActor(self.actor_input.num_features, space, cfg.actor_hidden, cfg.const_std)
        self.value_target = polyak_target(self.value_net, cfg.tau)
        self.targets = [self.value_target]
        self.collect_encoders(self.value_net.input, self.actor_input)

    def target_source(self, target):
        return self.value_net

    def losses(self, batch):
        cfg = self.cfg
        batch = self.augmented(batch)
        value_loss, v = ivl_value_loss(self.value_net, self.value_target.module, batch, cfg.discount, cfg.expectile)
        obs, goals = batch["observations"], batch["actor_goals"]
        with torch.no_grad():
            advantage = self.value_net(batch["next_observations"], goals).mean(0) - self.value_net(obs, goals).mean(0)
            weights = awr_weights(advantage, cfg.alpha, MAX_WEIGHT)
        log_prob = self.actor.log_prob(self.actor_input(obs, goals), batch["actions"])
        actor_loss = -(weights * log_prob).mean()
        metrics = {"value_loss": value_loss, "actor_loss": actor_loss, "v_mean": v.mean(), "adv": advantage.mean(),
                   "bc_log_prob": log_prob.mean()}
        return value_loss + actor_loss, {k: x.detach() for k, x in metrics.items()}

    @torch.no_grad()
    def act(self, obs, goals=None, sample=True):
        return self.actor.act(self.actor_input(obs, goals), sample)

    @torch.no_grad()
    def value(self, obs, goals=None):
        return None if goals is None else self.value_net(obs, goals).mean(0)
