"""``hiql_shared``: vispre's HIQL variant with ONE encoder shared by every network and the goal fused late
(Park, Ghosh, Eysenbach, Levine, NeurIPS 2023; losses as OGBench's ``impls/agents/hiql.py``). The agent
named ``hiql`` is OGBench's own layout (``hiql_ogbench.py``: one encoder per network, phi on the
channel-stacked [s; g] image); this one stays for single-frame pretrained encoders on a CPU budget.

Goal-conditioned value V(s, phi(s, g)) learnt without actions or rewards (sparse goal reward,
r = 0 and m = 0 when s == g, else r = -1); a high-level policy proposes the sub-goal representation
phi(s, s_{t+k}), a low-level policy reaches it; both extracted by AWR. Differences from OGBench,
forced by a single-frame pretrained encoder: phi reads encoder features of s and g (late fusion)
instead of the channel-concatenated images, and one encoder is shared by all networks (trained by
the value loss and, with ``low_actor_rep_grad``, by the low-level actor through phi).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .agent import Agent, TDConfig
from .iql import awr_weights, expectile_loss, td_target
from .networks import ActionSpace, Policy, mlp, polyak_target
from .registry import register_agent
from .transitions import Transitions, goal_rewards


@dataclass
class HIQLConfig(TDConfig):
    name: str = "hiql_shared"
    subgoal_steps: int = 10
    rep_dim: int = 10
    high_beta: float = 3.0
    low_beta: float = 3.0
    low_actor_rep_grad: bool = True  # OGBench: essential on pixels
    p_current: float = 0.2  # value goals: current / future in trajectory (geometric) / random
    p_trajectory: float = 0.5
    p_random: float = 0.3


def length_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rescale to norm sqrt(d) (OGBench's LengthNormalize)."""
    return F.normalize(x, dim=-1) * math.sqrt(x.shape[-1])


class GoalValue(nn.Module):
    """V_1, V_2 (s, phi(s, g)) with phi(s, g) = LengthNormalize(MLP([f(s), f(g)])) and f the encoder."""

    def __init__(self, encoder: nn.Module, cfg: HIQLConfig):
        super().__init__()
        d = encoder.num_features
        self.encoder = encoder
        self.phi = mlp(2 * d, cfg.hidden, cfg.rep_dim, cfg.layer_norm)
        self.v1 = mlp(d + cfg.rep_dim, cfg.hidden, 1, cfg.layer_norm)
        self.v2 = mlp(d + cfg.rep_dim, cfg.hidden, 1, cfg.layer_norm)

    def rep(self, state_features: torch.Tensor, goal_features: torch.Tensor) -> torch.Tensor:
        return length_normalize(self.phi(torch.cat([state_features, goal_features], -1)))

    def forward(self, obs: torch.Tensor, goals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.encoder(obs)
        x = torch.cat([s, self.rep(s, self.encoder(goals))], -1)
        return self.v1(x).squeeze(-1), self.v2(x).squeeze(-1)


@register_agent("hiql_shared", HIQLConfig)
class HIQL(Agent):
    goal_conditioned = True

    def __init__(self, encoder, space: ActionSpace, cfg: HIQLConfig, frame_stack: int = 1):
        super().__init__(encoder, space, cfg, frame_stack)
        d = encoder.num_features
        self.value_net = GoalValue(encoder, cfg)
        self.low_actor = Policy(d + cfg.rep_dim, space, cfg.hidden)
        self.high_actor = mlp(2 * d, cfg.hidden, cfg.rep_dim)  # mean of N(z; mu(s, g), I) (OGBench const_std)
        self.value_target = polyak_target(self.value_net, cfg.tau)
        self.targets = [self.value_target]

    def target_source(self, target):
        return self.value_net

    def make_batch(self, data: Transitions, rows: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        cfg, stack = self.cfg, self.frame_stack
        batch = data.batch(rows, stack)
        value_goals = data.sample_goals(rows, rng, cfg.p_current, cfg.p_trajectory, cfg.p_random, cfg.discount)
        batch["rewards"], batch["masks"] = goal_rewards(rows, value_goals)
        last = data.traj_last[rows]
        low_goals = np.minimum(rows + cfg.subgoal_steps, last)  # w = s_{t+k}
        high_goals = data.future_rows(rows, rng)  # actor goals: uniform future state of the trajectory
        high_targets = np.minimum(rows + cfg.subgoal_steps, high_goals)
        for key, goal_rows in [("value_goals", value_goals), ("low_goals", low_goals),
                               ("high_goals", high_goals), ("high_targets", high_targets)]:
            batch[key] = data.stack(goal_rows, stack)
        return batch

    def losses(self, batch):
        cfg = self.cfg
        obs, next_obs, value_goals, low_goals, high_goals, high_targets = self.augment(
            batch["observations"], batch["next_observations"], batch["value_goals"], batch["low_goals"],
            batch["high_goals"], batch["high_targets"])
        rewards, masks = batch["rewards"], batch["masks"]

        # Value (action-free IQL): q = r + gamma*m*min_k Vbar_k(s', g), A = q - mean_k Vbar_k(s, g),
        # L_V = sum_k E[ |tau - 1(A < 0)| (r + gamma*m*Vbar_k(s', g) - V_k(s, g))^2 ]
        with torch.no_grad():
            nv1, nv2 = self.value_target.module(next_obs, value_goals)
            tv1, tv2 = self.value_target.module(obs, value_goals)
            advantage = td_target(rewards, masks, torch.min(nv1, nv2), cfg.discount) - (tv1 + tv2) / 2
        v1, v2 = self.value_net(obs, value_goals)
        value_loss = (expectile_loss(td_target(rewards, masks, nv1, cfg.discount) - v1, cfg.expectile, advantage)
                      + expectile_loss(td_target(rewards, masks, nv2, cfg.discount) - v2, cfg.expectile, advantage))

        s = self.encoder(obs)
        s_actor = s.detach()
        # Low level: L = -E[ min(exp(beta_l (V(s', w) - V(s, w))), w_max) log pi_l(a | s, phi(s, w)) ]
        with torch.no_grad():
            low_adv = _mean(self.value_net(next_obs, low_goals)) - _mean(self.value_net(obs, low_goals))
        low_rep = self.value_net.rep(s if cfg.low_actor_rep_grad else s_actor, self.encoder(low_goals))
        if not cfg.low_actor_rep_grad:
            low_rep = low_rep.detach()
        low_log_prob = self.low_actor.log_prob(torch.cat([s_actor, low_rep], -1), batch["actions"])
        low_loss = -(awr_weights(low_adv, cfg.low_beta, cfg.max_weight) * low_log_prob).mean()

        # High level: L = -E[ min(exp(beta_h (V(s_{t+k}, g) - V(s, g))), w_max) log N(phi(s, s_{t+k}); mu(s, g), I) ]
        with torch.no_grad():
            high_adv = _mean(self.value_net(high_targets, high_goals)) - _mean(self.value_net(obs, high_goals))
            target_rep = self.value_net.rep(s_actor, self.encoder(high_targets))
            g = self.encoder(high_goals)
        mu = self.high_actor(torch.cat([s_actor, g], -1))
        high_log_prob = -0.5 * (mu - target_rep).square().sum(-1)
        high_loss = -(awr_weights(high_adv, cfg.high_beta, cfg.max_weight) * high_log_prob).mean()

        metrics = {"value_loss": value_loss, "low_actor_loss": low_loss, "high_actor_loss": high_loss,
                   "v_mean": (v1 + v2).mean() / 2, "low_adv": low_adv.mean(), "high_adv": high_adv.mean()}
        return value_loss + low_loss + high_loss, {k: x.detach() for k, x in metrics.items()}

    @torch.no_grad()
    def act(self, obs, goals=None, sample=True):
        if goals is None:
            raise ValueError("HIQL is goal-conditioned: act() needs goal observations")
        s = self.encoder(obs)
        z = length_normalize(self.high_actor(torch.cat([s, self.encoder(goals)], -1)))  # the mode, renormalised
        return self.low_actor.act(torch.cat([s, z], -1), sample)

    @torch.no_grad()
    def value(self, obs, goals=None):
        return None if goals is None else _mean(self.value_net(obs, goals))


def _mean(pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return (pair[0] + pair[1]) / 2
