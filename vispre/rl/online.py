"""Online RL from pixels with offline-data mixing in the RLPD style (Ball et al. 2023), the learner ViVa
shapes (Dashora, Ghosh, Levine 2025; code ``Dashora7/rlpd_subgoals``).

* a replay buffer of the agent's own transitions (uint8 frames), filled from the first step;
* every update after ``start_training`` env steps draws ``(1 - offline_ratio) * B`` rows from the replay
  buffer and ``offline_ratio * B`` from an offline dataset (RLPD's symmetric sampling: 0.5), ``utd`` updates
  per env step;
* an optional reward shaper (``vispre.rl.viva.ValueShaper``) adds its term to every sampled batch's rewards
  after ``shaping_start`` steps (ViVa: on the combined batch, offline rows included), the value frozen;
* agents: :class:`DQN` (discrete: double DQN, epsilon-greedy, Polyak target; ours for MiniGrid) and
  :class:`SAC` (continuous: twin LayerNorm critics, tanh-Gaussian actor, learnt temperature, as RLPD's
  SAC with an ensemble of 2);
* progress (``metrics.jsonl``: episodes, evaluations, losses) and checkpoints (agent, optimizer, random
  streams and the replay buffer, ``vispre.rl.checkpoint``) from which a run resumes; an episode in progress
  at the checkpoint is not resumed: the resumed run starts a new one.

Environments: ``reset(episode) -> frame`` and ``step(action) -> (frame, reward, terminated, truncated,
success)``; :class:`ChainEnv` is the 1-D chain of the tests.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .agent import Agent, AgentConfig, to_torch
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, trim_metrics
from .cql import TanhGaussian, temperature_loss
from .networks import ActionSpace, TwinQ, mlp, polyak_target
from .registry import register_agent
from .transitions import Transitions

log = logging.getLogger(__name__)


# -- agents --------------------------------------------------------------------------------------------------
@dataclass
class DQNConfig(AgentConfig):
    name: str = "dqn"
    lr: float = 1e-4
    batch_size: int = 64
    discount: float = 0.99
    layer_norm: bool = True
    tau: float = 0.005
    double_q: bool = True
    huber: bool = True
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_decay_steps: int = 5000  # env steps of the linear epsilon decay


@register_agent("dqn", DQNConfig)
class DQN(Agent):
    """Double DQN (van Hasselt et al. 2016): y = r + gamma * m * Qbar(s', argmax_a Q(s', a)); epsilon-greedy."""

    uses_dataset_rewards = True

    def __init__(self, encoder, space: ActionSpace, cfg: DQNConfig, frame_stack: int = 1):
        super().__init__(encoder, space, cfg, frame_stack)
        if not space.discrete:
            raise ValueError("dqn needs discrete actions (use sac for a box)")
        self.critic = nn.ModuleDict({"encoder": encoder, "q": mlp(encoder.num_features, cfg.hidden, space.n,
                                                                  cfg.layer_norm)})
        self.critic_target = polyak_target(self.critic, cfg.tau)
        self.targets = [self.critic_target]

    def target_source(self, target):
        return self.critic

    def q_values(self, obs, module=None):
        m = module if module is not None else self.critic
        return m["q"](m["encoder"](obs))

    def losses(self, batch):
        cfg = self.cfg
        obs, next_obs = self.augment(batch["observations"], batch["next_observations"])
        with torch.no_grad():
            target = self.critic_target.module
            next_target = self.q_values(next_obs, target)
            if cfg.double_q:  # a* = argmax_a Q(s', a), valued by the target network
                best = self.q_values(next_obs).argmax(-1, keepdim=True)
                next_v = next_target.gather(1, best).squeeze(1)
            else:
                next_v = next_target.max(-1).values
            y = batch["rewards"] + cfg.discount * batch["masks"] * next_v
        q = self.q_values(obs).gather(1, batch["actions"].long().view(-1, 1)).squeeze(1)
        loss = F.smooth_l1_loss(q, y) if cfg.huber else F.mse_loss(q, y)
        return loss, {"q_loss": loss.detach(), "q": q.detach().mean(), "y": y.mean()}

    def epsilon(self, step: int) -> float:
        cfg = self.cfg
        frac = min(1.0, step / max(cfg.eps_decay_steps, 1))
        return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)

    @torch.no_grad()
    def act(self, obs, goals=None, sample=True):
        """Greedy; ``sample``: a uniformly random action with probability ``self.explore`` (set by the runner)."""
        greedy = self.q_values(obs).argmax(-1)
        if not sample:
            return greedy
        eps = getattr(self, "explore", 0.0)
        u = torch.rand(len(greedy), generator=self.generator)  # on the CPU: the same draws on any device
        rand = torch.randint(0, self.space.n, (len(greedy),), generator=self.generator)
        return torch.where(u.to(greedy.device) < eps, rand.to(greedy.device), greedy)

    @torch.no_grad()
    def value(self, obs, goals=None):
        return self.q_values(obs).max(-1).values


@dataclass
class SACConfig(AgentConfig):
    name: str = "sac"
    lr: float = 3e-4
    discount: float = 0.99
    layer_norm: bool = True  # RLPD's LayerNorm critics
    tau: float = 0.005
    init_temperature: float = 1.0
    target_entropy_factor: float = 0.5  # target entropy -factor * dim (RLPD: -dim / 2)
    backup_entropy: bool = True


@register_agent("sac", SACConfig)
class SAC(Agent):
    """SAC (Haarnoja et al. 2018): y = r + gamma * m * (min_i Qbar_i(s', a') - alpha log pi(a'|s')), a' ~ pi;
    L_pi = E[alpha log pi(a|s) - min_i Q_i(s, a)]; L_alpha = alpha (H - H_target)."""

    uses_dataset_rewards = True

    def __init__(self, encoder, space: ActionSpace, cfg: SACConfig, frame_stack: int = 1):
        super().__init__(encoder, space, cfg, frame_stack)
        if space.discrete:
            raise ValueError("sac here is for boxes (use dqn for discrete actions)")
        self.critic = nn.ModuleDict({"encoder": encoder,
                                     "q": TwinQ(encoder.num_features, space, cfg.hidden, cfg.layer_norm)})
        self.policy = TanhGaussian(encoder.num_features, space.n, cfg.hidden)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))
        self.target_entropy = -cfg.target_entropy_factor * space.n
        self.critic_target = polyak_target(self.critic, cfg.tau)
        self.targets = [self.critic_target]

    def target_source(self, target):
        return self.critic

    def losses(self, batch):
        cfg = self.cfg
        obs, next_obs = self.augment(batch["observations"], batch["next_observations"])
        features = self.encoder(obs)
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            target = self.critic_target.module
            nf = self.encoder(next_obs)
            a_next, logp_next = self.policy.sample(nf, self._device_generator(nf))
            next_q = torch.min(*target["q"](target["encoder"](next_obs), a_next))
            if cfg.backup_entropy:
                next_q = next_q - alpha * logp_next
            y = batch["rewards"] + cfg.discount * batch["masks"] * next_q
        q1, q2 = self.critic["q"](features, batch["actions"])
        critic_loss = (q1 - y).square().mean() + (q2 - y).square().mean()
        # the actor reads stop-gradient features (the critic trains the encoder) and frozen critic weights
        f = features.detach()
        a, logp = self.policy.sample(f, self._device_generator(f))
        frozen = {k: v.detach() for k, v in self.critic["q"].named_parameters()}
        q_pi = torch.min(*functional_call(self.critic["q"], frozen, (f, a)))
        actor_loss = (alpha * logp - q_pi).mean()
        temp_loss = temperature_loss(self.log_alpha, -logp, self.target_entropy)
        metrics = {"critic_loss": critic_loss, "actor_loss": actor_loss, "temperature": alpha,
                   "entropy": -logp.mean(), "q": q1.mean()}
        return critic_loss + actor_loss + temp_loss, {k: v.detach() for k, v in metrics.items()}

    @torch.no_grad()
    def act(self, obs, goals=None, sample=True):
        f = self.encoder(obs)
        return self.policy.sample(f, self._device_generator(f))[0] if sample else self.policy.mode(f)

    @torch.no_grad()
    def value(self, obs, goals=None):
        f = self.encoder(obs)
        return torch.min(*self.critic["q"](f, self.policy.mode(f)))


# -- data ----------------------------------------------------------------------------------------------------
class ReplayBuffer:
    """A ring of (s, a, r, m, s') with uint8 frames; ``state()`` / ``load()`` for checkpoints."""

    def __init__(self, capacity: int, frame_shape: tuple, action_shape: tuple = (), discrete: bool = True):
        self.capacity = capacity
        self.obs = np.zeros((capacity, *frame_shape), np.uint8)
        self.next_obs = np.zeros((capacity, *frame_shape), np.uint8)
        self.actions = np.zeros((capacity, *action_shape), np.int64 if discrete else np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.masks = np.zeros(capacity, np.float32)
        self.ptr = self.size = 0

    def add(self, obs, action, reward: float, mask: float, next_obs) -> None:
        i = self.ptr
        self.obs[i], self.actions[i], self.rewards[i], self.masks[i], self.next_obs[i] = \
            obs, action, reward, mask, next_obs
        self.ptr = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        rows = rng.integers(0, self.size, n)
        return {"observations": self.obs[rows][:, None], "next_observations": self.next_obs[rows][:, None],
                "actions": self.actions[rows], "rewards": self.rewards[rows], "masks": self.masks[rows]}

    def state(self) -> dict[str, np.ndarray]:
        n = self.size
        return {"replay.obs": self.obs[:n], "replay.next_obs": self.next_obs[:n], "replay.actions": self.actions[:n],
                "replay.rewards": self.rewards[:n], "replay.masks": self.masks[:n],
                "replay.counters": np.array([self.ptr, self.size], np.int64)}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        self.ptr, self.size = (int(x) for x in arrays["replay.counters"])
        n = self.size
        for key, dest in (("obs", self.obs), ("next_obs", self.next_obs), ("actions", self.actions),
                          ("rewards", self.rewards), ("masks", self.masks)):
            dest[:n] = arrays[f"replay.{key}"]


def offline_batch(data: Transitions, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    rows = data.sample(n, rng)
    b = data.batch(rows, 1)
    return {k: b[k] for k in ("observations", "next_observations", "actions", "rewards", "masks")}


def combine(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    parts = [p for p in parts if len(p["rewards"])]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# -- environments ---------------------------------------------------------------------------------------------
class ChainEnv:
    """A 1-D chain of ``n`` cells rendered as a [1, n, 3] frame (the agent's cell white); actions 0 left, 1
    right; start at cell 0, reward 1 and termination on reaching cell n - 1, time limit ``max_steps``."""

    def __init__(self, n: int = 6, max_steps: int = 20):
        self.n, self.max_steps = n, max_steps
        self.pos = self.t = 0

    def frame(self, pos: int | None = None) -> np.ndarray:
        f = np.zeros((1, self.n, 3), np.uint8)
        f[0, self.pos if pos is None else pos] = 255
        return f

    def goal_frame(self) -> np.ndarray:
        return self.frame(self.n - 1)

    def reset(self, episode: int = 0) -> np.ndarray:
        self.pos = self.t = 0
        return self.frame()

    def step(self, action):
        self.pos = int(np.clip(self.pos + (1 if int(action) == 1 else -1), 0, self.n - 1))
        self.t += 1
        success = self.pos == self.n - 1
        return self.frame(), float(success), success, self.t >= self.max_steps and not success, success


class FlatPixelEncoder(nn.Module):
    """Tiny frames [B, S, H, W, C] -> Linear(flatten / 255) + LayerNorm + ReLU: for frames too small for a CNN."""

    def __init__(self, frame_shape: tuple, num_features: int = 32, frame_stack: int = 1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(int(np.prod(frame_shape)) * frame_stack, num_features),
                                 nn.LayerNorm(num_features), nn.ReLU())
        self.num_features = num_features

    def forward(self, obs):
        return self.net(obs.flatten(1).float() / 255)


# -- the loop -------------------------------------------------------------------------------------------------
@dataclass
class OnlineConfig:
    env_steps: int = 20000
    start_training: int = 1000  # env steps of uniformly random actions before the first update
    utd: int = 1  # updates per env step (RLPD: 20 on states; ours 1 on CPU pixels)
    offline_ratio: float = 0.5  # share of each batch from the offline data (RLPD / ViVa: 0.5; 0 = none)
    replay_capacity: int = 100000
    shaping_start: int = 0  # env step from which the shaper's term is added (ViVa's code: 5000 for some tasks)
    eval_every: int = 2000
    eval_episodes: int = 10
    checkpoint_every: int = 0
    log_every: int = 500


def evaluate_online(agent: Agent, make_env: Callable, episodes: int, device, seed: int = 0) -> dict:
    """Greedy (DQN) / mean-action (SAC) episodes: success rate and mean return (the environment's reward)."""
    agent.eval()
    env = make_env()
    succ, rets = [], []
    for e in range(episodes):
        frame, ret, done = env.reset(10_000_000 + seed * 10_000 + e), 0.0, False
        success = False
        while not done:
            obs = torch.from_numpy(frame[None, None]).to(device)
            a = agent.act(obs, None, sample=False)[0].cpu().numpy()
            frame, r, term, trunc, success = env.step(a)
            ret += r
            done = term or trunc
        succ.append(bool(success))
        rets.append(ret)
    agent.train()
    return {"success": float(np.mean(succ)), "return": float(np.mean(rets))}


def run_online(agent: Agent, make_env: Callable, cfg: OnlineConfig, out_dir: str | Path, seed: int = 0,
               offline: Transitions | None = None, shaper=None, device="cpu", stop_at: int | None = None) -> dict:
    """Train ``agent`` (configured) online for ``cfg.env_steps``; resumes from ``out_dir``'s newest checkpoint.
    Returns {"curve": evaluations, "episodes": training episodes}.

    A checkpoint due at step k is written when the episode running at k ends (or at the last step): episode i
    starts from ``env.reset(i)``, so a resumed run (same agent, rng, replay buffer, episode count) continues
    exactly as the uninterrupted one. ``stop_at``: return after the first checkpoint at or after that step
    (an interruption, for tests)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = make_env()
    rng = np.random.default_rng(seed)
    frame = env.reset(0)
    buffer = ReplayBuffer(cfg.replay_capacity, frame.shape, () if agent.space.discrete else (agent.space.n,),
                          agent.space.discrete)
    step, episode, counters = 0, 0, {"curve": [], "episodes": []}
    found = latest_checkpoint(out)
    if found is not None:
        restored = load_checkpoint(found, agent)
        step, rng, counters = restored["step"], restored["rng"], restored["state"]
        buffer.load(restored["extra"])
        trim_metrics(out / "metrics.jsonl", step)
        episode = len(counters["episodes"])
        log.info("resumed from %s at env step %d", found, step)
    frame = env.reset(episode)
    ep_return, ep_len = 0.0, 0
    sums, count = {}, 0
    b = agent.cfg.batch_size
    n_off = int(round(b * cfg.offline_ratio)) if offline is not None else 0
    due = False
    with open(out / "metrics.jsonl", "a", buffering=1) as logf:
        while step < cfg.env_steps:
            step += 1
            obs = torch.from_numpy(frame[None, None]).to(device)
            if step <= cfg.start_training:
                action = (rng.integers(agent.space.n) if agent.space.discrete
                          else rng.uniform(-1, 1, agent.space.n).astype(np.float32))
            else:
                if hasattr(agent, "epsilon"):
                    agent.explore = agent.epsilon(step - cfg.start_training)
                action = agent.act(obs, None, sample=True)[0].cpu().numpy()
            next_frame, reward, terminated, truncated, success = env.step(action)
            # m = 0 only at task completion: a time limit still bootstraps
            buffer.add(frame, action, reward, 0.0 if terminated else 1.0, next_frame)
            ep_return += reward
            ep_len += 1
            frame = next_frame
            ended = terminated or truncated
            if ended:
                counters["episodes"].append({"env_step": step, "return": ep_return, "success": bool(success),
                                             "length": ep_len})
                logf.write(json.dumps({"episode": counters["episodes"][-1]}) + "\n")
                episode += 1
                frame, ep_return, ep_len = env.reset(episode), 0.0, 0
            if step > cfg.start_training:
                for _ in range(cfg.utd):
                    parts = [buffer.sample(b - n_off, rng)]
                    if n_off:
                        parts.append(offline_batch(offline, n_off, rng))
                    batch = combine(parts)
                    if shaper is not None and step >= cfg.shaping_start:
                        bonus = shaper.bonus(batch["observations"], batch["next_observations"])
                        batch["rewards"] = batch["rewards"] + bonus
                        sums["shaping"] = sums.get("shaping", 0.0) + float(bonus.mean())
                    for k, v in agent.update(to_torch(batch, device)).items():
                        sums[k] = sums.get(k, 0.0) + v
                    count += 1
            if count and step % cfg.log_every == 0:
                logf.write(json.dumps({"env_step": step, **{k: v / count for k, v in sums.items()}}) + "\n")
                sums, count = {}, 0
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.env_steps):
                point = {"env_step": step, **evaluate_online(agent, make_env, cfg.eval_episodes, device, seed)}
                recent = counters["episodes"][-20:]
                point["train_success"] = float(np.mean([e["success"] for e in recent])) if recent else 0.0
                counters["curve"].append(point)
                logf.write(json.dumps({"eval": point}) + "\n")
            due = due or bool(cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
            if (due and ended) or (cfg.checkpoint_every and step == cfg.env_steps):
                save_checkpoint(out, step, agent, rng, counters, extra=buffer.state(), keep=1)  # frames: big
                due = False
                if stop_at is not None and step >= stop_at:
                    break
    return counters
