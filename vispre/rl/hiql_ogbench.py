"""HIQL (Park, Ghosh, Eysenbach, Levine, NeurIPS 2023) as OGBench builds it (``impls/agents/hiql.py``), the
default ``hiql`` agent. (vispre's earlier variant, one encoder shared by every network and the goal fused
late, is ``hiql_shared`` in ``hiql.py``.)

Networks (pixels: each with its own impala_small encoder; states: none):

    phi(s, g)   = LengthNormalize(MLP([s; g]))        the sub-goal representation, ONE module shared by the
                                                      value, its target and the low-level actor; on pixels
                                                      its encoder reads the channel-stacked [s; g] image
    V_k(s, g)   = MLP_k(enc_V(s), phi(s, g)), k = 1, 2  Polyak target Vbar (enc_V and the heads; phi is not
                                                      averaged: the target reads the current phi)
    pi_l(a | enc_l(s), phi(s, w))                     low level, towards w = s_{t + subgoal_steps}
    pi_h(z | enc_h([s; g]))                           high level: a Gaussian over phi's 10-d space

Losses, summed into one Adam step: the value by OGBench's IVL expectile loss (``gcivl.ivl_value_loss``);
the low level by AWR with A = V(s', w) - V(s, w) (gradients reach phi only with ``low_actor_rep_grad``,
which OGBench sets on pixels); the high level by AWR on log N(phi(s, s_{t+k}); mu(s, g), I) with
A = V(s_{t+k}, g) - V(s, g), s_{t+k} clipped at the actor goal. Acting: the high level's mode,
renormalised to length sqrt(10), then the low level's mode (OGBench evaluates at temperature 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .gcivl import ivl_value_loss
from .iql import awr_weights
from .networks import ActionSpace, polyak_target
from .ogbench_layout import MAX_WEIGHT, Ensemble, GCActor, GoalConditionedAgent, OGBenchConfig, length_normalize, og_mlp
from .registry import register_agent
from .transitions import Transitions


@dataclass
class HIQLOGBenchConfig(OGBenchConfig):
    name: str = "hiql"
    expectile: float = 0.7
    low_alpha: float = 3.0
    high_alpha: float = 3.0
    subgoal_steps: int = 25  # OGBench's default; 10 on cube / scene / puzzle (hyperparameters.sh)
    rep_dim: int = 10
    low_actor_rep_grad: bool = False  # True on pixels (OGBench: essential there)


class SubgoalRep(nn.Module):
    """phi(s, g) = LengthNormalize(MLP(input(s, g))), the MLP of the value's widths and LayerNorm."""

    def __init__(self, goal_input: nn.Module, hidden: list[int], rep_dim: int, layer_norm: bool):
        super().__init__()
        self.input = goal_input
        self.mlp = og_mlp(goal_input.num_features, [*hidden, rep_dim], layer_norm=layer_norm)

    def forward(self, obs: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
        return length_normalize(self.mlp(self.input(obs, goals)))


class RepValue(nn.Module):
    """V_1, V_2 (enc_V(s), z) for a goal representation z -> [2, B]."""

    def __init__(self, state_input: nn.Module, rep_dim: int, hidden: list[int], layer_norm: bool):
        super().__init__()
        self.input = state_input
        self.heads = Ensemble(2, state_input.num_features + rep_dim, hidden, layer_norm)

    def forward(self, obs: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
        return self.heads(torch.cat([self.input(obs), rep], -1))


@register_agent("hiql", HIQLOGBenchConfig)
class HIQLOGBench(GoalConditionedAgent):
    image_keys = ("observations", "next_observations", "value_goals", "low_actor_goals", "high_actor_goals",
                  "high_actor_targets")

    def __init__(self, encoder, space: ActionSpace, cfg: HIQLOGBenchConfig, frame_stack: int = 1):
        super().__init__(encoder, space, cfg, frame_stack)
        self.phi = SubgoalRep(self.goal_input(), cfg.value_hidden, cfg.rep_dim, cfg.layer_norm)
        self.value_heads = RepValue(self.goal_input(goal=False), cfg.rep_dim, cfg.value_hidden, cfg.layer_norm)
        self.low_input = self.goal_input(goal=False)
        self.low_actor = GCActor(self.low_input.num_features + cfg.rep_dim, space, cfg.actor_hidden, cfg.const_std)
        self.high_input = self.goal_input()
        self.high_actor = GCActor(self.high_input.num_features, ActionSpace(False, cfg.rep_dim), cfg.actor_hidden,
                                  cfg.const_std)
        self.value_target = polyak_target(self.value_heads, cfg.tau)
        self.targets = [self.value_target]
        self.collect_encoders(self.phi.input, self.value_heads.input, self.low_input, self.high_input)

    def target_source(self, target):
        return self.value_heads

    def v(self, obs: torch.Tensor, goals: torch.Tensor, target: bool = False) -> torch.Tensor:
        """V_k(s, g) = heads_k(enc_V(s), phi(s, g)) [2, B]; the target reads the current phi (no gradient)."""
        if target:
            return self.value_target.module(obs, self.phi(obs, goals).detach())
        return self.value_heads(obs, self.phi(obs, goals))

    def extra_goals(self, data: Transitions, rows: np.ndarray, rng: np.random.Generator, batch: dict) -> None:
        """OGBench's HGCDataset: w = s_{min(t + k, last)}; high-level goals a later state (uniform, or geometric with
        actor_geometric) or, with probability actor_p_random, a random state; targets s_{min(t + k, goal)}
        (random goals: s_{min(t + k, last)})."""
        cfg, stack, k = self.cfg, self.frame_stack, self.cfg.subgoal_steps
        last = data.traj_last[rows]
        low = np.minimum(rows + k, last)
        future = data.future_rows(rows, rng, (1.0 - cfg.discount) if cfg.actor_geometric else None)
        pick_random = rng.random(len(rows)) < cfg.actor_p_random
        high_goals = np.where(pick_random, data.sample(len(rows), rng), future)
        high_targets = np.where(pick_random, low, np.minimum(rows + k, future))
        batch["low_actor_goals"] = data.stack(low, stack)
        batch["high_actor_goals"] = data.stack(high_goals, stack)
        batch["high_actor_targets"] = data.stack(high_targets, stack)

    def losses(self, batch):
        cfg = self.cfg
        batch = self.augmented(batch)
        obs, next_obs = batch["observations"], batch["next_observations"]
        value_loss, v = ivl_value_loss(self.v, lambda o, g: self.v(o, g, target=True), batch, cfg.discount,
                                       cfg.expectile)

        # low level: AWR towards w with A = V(s', w) - V(s, w) (online value)
        w = batch["low_actor_goals"]
        with torch.no_grad():
            low_adv = self.v(next_obs, w).mean(0) - self.v(obs, w).mean(0)
        rep = self.phi(obs, w)
        if not cfg.low_actor_rep_grad:
            rep = rep.detach()
        low_log_prob = self.low_actor.log_prob(torch.cat([self.low_input(obs), rep], -1), batch["actions"])
        low_loss = -(awr_weights(low_adv, cfg.low_alpha, MAX_WEIGHT) * low_log_prob).mean()

        # high level: AWR on the sub-goal representation phi(s, s_{t+k}) with A = V(s_{t+k}, g) - V(s, g)
        g, targets = batch["high_actor_goals"], batch["high_actor_targets"]
        with torch.no_grad():
            high_adv = self.v(targets, g).mean(0) - self.v(obs, g).mean(0)
            target_rep = self.phi(obs, targets)
        high_log_prob = self.high_actor.log_prob(self.high_input(obs, g), target_rep)
        high_loss = -(awr_weights(high_adv, cfg.high_alpha, MAX_WEIGHT) * high_log_prob).mean()

        metrics = {"value_loss": value_loss, "low_actor_loss": low_loss, "high_actor_loss": high_loss,
                   "v_mean": v.mean(), "low_adv": low_adv.mean(), "high_adv": high_adv.mean(),
                   "low_bc_log_prob": low_log_prob.mean()}
        return value_loss + low_loss + high_loss, {k: x.detach() for k, x in metrics.items()}

    @torch.no_grad()
    def act(self, obs, goals=None, sample=True):
        if goals is None:
            raise ValueError("HIQL is goal-conditioned: act() needs goal observations")
        z = self.high_actor.dist(self.high_input(obs, goals)).sample() if sample else \
            self.high_actor.mode(self.high_input(obs, goals))
        z = length_normalize(z)
        return self.low_actor.act(torch.cat([self.low_input(obs), z], -1), sample)

    @torch.no_grad()
    def value(self, obs, goals=None):
        return None if goals is None else self.v(obs, goals).mean(0)
