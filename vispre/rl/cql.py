"""Conservative Q-Learning (Kumar et al. 2020) as V-PTR's stages 2-3 use it (Bhateja et al. 2023, code
``DreekFire/V-PTR``: ``cql_encodersep_parallel``), discrete or continuous actions, conditioned on the task.

What follows V-PTR's launch script and learner:

* CQL alpha 5, discount 0.96, twin critics reduced by their minimum, Polyak targets;
* max-Q backup: y = r + gamma * m * max_a min_i Qbar_i(s', a) (continuous: the max over 4 actions drawn from
  pi(. | s'); discrete: the exact max over all actions);
* the regulariser logsumexp over (policy actions, importance-corrected, and uniform actions), minus
  Q(s, a_data) ("min_q_version 3"; discrete: the exact logsumexp over all actions);
* the Monte-Carlo lower bound (``bound_q_with_mc``, as Cal-QL): the Q values of the policy's actions inside
  the logsumexp are raised to at least the dataset's return-to-go G(s), so the regulariser never pushes Q
  below a return the data achieved (discrete: every action's Q inside the logsumexp);
* separate critic and actor encoders, both initialised from the given encoder (the ICVF export);
* random crop (pad 4) and colour jitter on observations and next observations (V-PTR's ranges; our jitter's
  brightness is a factor in [0.8, 1.2], V-PTR's TF-style one an offset in [-0.2, 0.2]);
* task conditioning: a one-hot task id, or a fixed per-task embedding (e.g. an instruction's open_clip text
  embedding, :func:`instruction_embeddings`) concatenated to the encoder's features, for critic and actor;
* a SAC actor with a learnt temperature (V-PTR's ``target_entropy_factor``), critic lr 3e-4, actor lr 1e-4.

V-PTR's sparse reward convention (rewards, masks and Monte-Carlo returns of a demonstration dataset) is
:func:`sparse_task_rewards` in ``vispre.rl.task_data``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..views.photometric import Photometric
from .agent import Agent, AgentConfig
from .networks import ActionSpace, TwinQ, mlp, polyak_target
from .registry import register_agent

NUM_CQL_SAMPLES = 4  # V-PTR's NUM_CQL_REPEAT: actions per state for the regulariser and the max-Q backup


@dataclass
class CQLConfig(AgentConfig):
    name: str = "cql"
    discount: float = 0.96  # V-PTR's launch script
    lr: float = 3e-4  # critic (encoder and Q heads) and temperature
    actor_lr: float = 1e-4  # actor encoder and policy
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # V-PTR: (1024, 1024, 1024) on ResNet-50
    layer_norm: bool = True
    tau: float = 0.005
    cql_alpha: float = 5.0
    max_q_backup: bool = True
    bound_q_with_mc: bool = True
    cql_samples: int = NUM_CQL_SAMPLES  # continuous actions only
    target_entropy_factor: float = 1.0  # target entropy: -factor * dim (continuous), factor * 0.5 log n (discrete)
    init_temperature: float = 1.0
    num_tasks: int = 1  # width of the one-hot task id (ignored with task_embeddings)
    task_embeddings: str = ""  # .npy [num_tasks, D]: per-task embeddings instead of one-hot ('' = one-hot)
    # V-PTR's colour_transform: brightness 0.2, contrast 0.1, saturation 0.1, hue 0.03, p 0.8, random order
    colour_jitter: bool = True
    augment_pad: int = 4


def instruction_embeddings(instructions: list[str], model: str = "ViT-B-32", pretrained: str = "openai",
                           out: str | Path | None = None) -> np.ndarray:
    """[T, D] L2-normalised open_clip text-tower embeddings of the tasks' instructions (optional: needs the
    ``open_clip_torch`` package and its weights); saved to ``out`` (.npy) for ``task_embeddings``."""
    try:
        import open_clip
    except ImportError as e:
        raise ImportError("language task conditioning needs open_clip: pip install open_clip_torch") from e
    clip, _, _ = open_clip.create_model_and_transforms(model, pretrained=pretrained)
    tokens = open_clip.get_tokenizer(model)(instructions)
    with torch.no_grad():
        emb = F.normalize(clip.encode_text(tokens).float(), dim=-1).numpy()
    if out is not None:
        np.save(out, emb)
    return emb


# -- the loss terms, as functions (tested by hand) -----------------------------------------------------------
def max_q_target(rewards, masks, next_q, discount: float) -> torch.Tensor:
    """y = r + gamma * m * max_j min_i Qbar_i(s', a_j); next_q: [2, B, J] target Q at J next actions."""
    return rewards + discount * masks * next_q.min(0).values.max(-1).values


def bellman_loss(q_data: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean_i mean_b (Q_i(s, a) - y)^2 over the critics (V-PTR's ((qs - target_q)**2).mean()); q_data: [2, B]."""
    return (q_data - y).square().mean()


def cql_regulariser(q_data: torch.Tensor, q_pi: torch.Tensor, log_pi: torch.Tensor | None,
                    q_rand: torch.Tensor | None = None, log_rand: float = 0.0,
                    mc: torch.Tensor | None = None) -> torch.Tensor:
    """mean_i mean_b [ logsumexp_j( max(Q_i(s, a_j^pi), G(s)) - log pi(a_j^pi | s) ; Q_i(s, a_j^u) - log u )
    - Q_i(s, a) ].

    q_pi [2, B, J] Q at the policy's actions (discrete: at every action, with log_pi None and no uniform
    actions: the exact logsumexp_a Q(s, a)); log_pi [B, J]; q_rand [2, B, J] at uniform actions of density u
    (log_rand = log u); mc [B] the Monte-Carlo lower bound (None: no bound)."""
    if mc is not None:
        q_pi = torch.maximum(q_pi, mc[None, :, None])
    cat = q_pi if log_pi is None else q_pi - log_pi[None]
    if q_rand is not None:
        cat = torch.cat([cat, q_rand - log_rand], -1)
    return (torch.logsumexp(cat, -1) - q_data).mean()


def discrete_actor_loss(log_probs: torch.Tensor, q: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """E_s sum_a pi(a|s) (alpha log pi(a|s) - min_i Q_i(s, a)): SAC's actor, exact expectation; q [B, n] detached."""
    return (log_probs.exp() * (temperature * log_probs - q)).sum(-1).mean()


def temperature_loss(log_alpha: torch.Tensor, entropy: torch.Tensor, target: float) -> torch.Tensor:
    """L(alpha) = alpha * (H(pi) - H_target), H detached: alpha grows when the policy is below its target entropy."""
    return (log_alpha.exp() * (entropy.detach() - target)).mean()


# -- networks ------------------------------------------------------------------------------------------------
class TanhGaussian(nn.Module):
    """SAC's policy: a = tanh(mu + sigma * eps), log pi with the tanh correction (actions in [-1, 1])."""

    def __init__(self, in_dim: int, n: int, hidden):
        super().__init__()
        self.net = mlp(in_dim, hidden, 2 * n)

    def sample(self, x: torch.Tensor, generator: torch.Generator | None, num: int = 0):
        """(actions, log pi): [B, A], [B] (num = 0) or [B, num, A], [B, num]."""
        mu, log_std = self.net(x).chunk(2, -1)
        log_std = log_std.clamp(-5.0, 2.0)
        if num:
            mu, log_std = mu[:, None].expand(-1, num, -1), log_std[:, None].expand(-1, num, -1)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device) if generator is not None \
            else torch.randn_like(mu)
        pre = mu + log_std.exp() * eps
        action = torch.tanh(pre)
        log_prob = (-0.5 * eps.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - pre - F.softplus(-2 * pre))).sum(-1)
        return action, log_prob

    def mode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x).chunk(2, -1)[0])


class TaskCritic(nn.Module):
    """Critic encoder + twin Q on [features, task condition]: the part with a Polyak target."""

    def __init__(self, encoder: nn.Module, space: ActionSpace, cond_dim: int, hidden, layer_norm: bool):
        super().__init__()
        self.encoder = encoder
        self.q = TwinQ(encoder.num_features + cond_dim, space, hidden, layer_norm)

    def all_q(self, x: torch.Tensor) -> torch.Tensor:
        """Discrete: [2, B, n]."""
        return torch.stack([self.q.q1(x), self.q.q2(x)])

    def q_at(self, x: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """[2, B] Q at given actions."""
        return torch.stack(self.q(x, actions))

    def q_many(self, x: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Continuous: x [B, D], actions [B, J, A] -> [2, B, J]."""
        b, j = actions.shape[:2]
        xs = x[:, None].expand(-1, j, -1).reshape(b * j, -1)
        return self.q_at(xs, actions.reshape(b * j, -1)).reshape(2, b, j)


@register_agent("cql", CQLConfig)
class CQL(Agent):
    uses_dataset_rewards = True

    def __init__(self, encoder, space: ActionSpace, cfg: CQLConfig, frame_stack: int = 1):
        super().__init__(encoder, space, cfg, frame_stack)
        if cfg.task_embeddings:
            table = torch.from_numpy(np.load(cfg.task_embeddings)).float()
        else:
            table = torch.eye(max(cfg.num_tasks, 1))
        self.register_buffer("task_table", table)  # [T, D]: row t is task t's condition
        cond = table.shape[1]
        self.actor_encoder = copy.deepcopy(encoder)  # V-PTR: a policy encoder of its own, same initialisation
        self.critic = TaskCritic(encoder, space, cond, cfg.hidden, cfg.layer_norm)
        feat = self.actor_encoder.num_features + cond
        self.policy = mlp(feat, cfg.hidden, space.n) if space.discrete else \
            TanhGaussian(feat, space.n, cfg.hidden)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))
        self.target_entropy = (cfg.target_entropy_factor * 0.5 * math.log(space.n) if space.discrete
                               else -cfg.target_entropy_factor * space.n)
        self.critic_target = polyak_target(self.critic, cfg.tau)
        self.targets = [self.critic_target]
        self.jitter = Photometric(jitter_p=0.8, brightness=0.2, contrast=0.1, saturation=0.1, hue=0.03,
                                  grey_p=0.0, mean=None, std=None, order="random") if cfg.colour_jitter else None
        self.eval_task = 0  # the task act() conditions on when none is given (rollouts)

    def target_source(self, target):
        return self.critic

    def configure(self, encoder_lr: float = 0.0, train_encoder: bool = True, seed: int = 0) -> CQL:
        """Adam: critic encoder (encoder_lr, 0 = lr) and Q heads at lr; actor encoder and policy at actor_lr;
        the temperature at lr. The actor's loss reaches the critic only through actions (see losses)."""
        self.generator.manual_seed(seed)
        cfg = self.cfg
        self.encoder.requires_grad_(train_encoder)
        self.actor_encoder.requires_grad_(train_encoder)
        groups = [{"params": list(self.critic.q.parameters()), "lr": cfg.lr},
                  {"params": list(self.policy.parameters()), "lr": cfg.actor_lr},
                  {"params": [self.log_alpha], "lr": cfg.lr}]
        if train_encoder and any(True for _ in self.encoder.parameters()):
            groups += [{"params": list(self.encoder.parameters()), "lr": encoder_lr or cfg.lr},
                       {"params": list(self.actor_encoder.parameters()), "lr": cfg.actor_lr}]
        self.optimizer = torch.optim.Adam(groups)
        return self

    # ----- inputs
    def condition(self, tasks: torch.Tensor) -> torch.Tensor:
        return self.task_table[tasks.long()]

    def augment(self, *stacks: torch.Tensor) -> list[torch.Tensor]:
        """Random crop (shift, pad 4) then colour jitter, each stack on its own (V-PTR augments the next
        observation too); features ([B, S, D]) pass through."""
        stacks = super().augment(*stacks)
        if self.jitter is None or stacks[0].ndim != 5:
            return list(stacks)
        out = []
        for s in stacks:
            b, n, h, w, c = s.shape
            x = s.permute(0, 1, 4, 2, 3).reshape(b * n, c, h, w)
            y = self.jitter(x, generator=self._device_generator(x)).mul_(255)  # float 0..255: the encoder /255s
            out.append(y.reshape(b, n, c, h, w).permute(0, 1, 3, 4, 2))
        return out

    # ----- one step
    def losses(self, batch):
        cfg, disc = self.cfg, self.space.discrete
        obs, next_obs = self.augment(batch["observations"], batch["next_observations"])
        actions = batch["actions"]
        # a batch without task ids (a single-task dataset) is task 0; without returns, no Monte-Carlo bound
        tasks = batch["task"] if "task" in batch else torch.zeros(len(actions), dtype=torch.long, device=actions.device)
        cond = self.condition(tasks)
        mc = batch.get("mc_returns") if cfg.bound_q_with_mc else None
        x = torch.cat([self.critic.encoder(obs), cond], 1)
        xa = torch.cat([self.actor_encoder(obs), cond], 1)
        alpha = self.log_alpha.exp().detach()

        with torch.no_grad():
            target = self.critic_target.module
            xt = torch.cat([target.encoder(next_obs), cond], 1)
            gen = self._device_generator(xt)
            needs_pi = not (disc and cfg.max_q_backup)  # the discrete max-Q backup needs no next action
            xa_next = torch.cat([self.actor_encoder(next_obs), cond], 1) if needs_pi else None
            if disc:
                next_q = target.all_q(xt)  # [2, B, n]
                if not cfg.max_q_backup:  # E_{a'~pi}[min_i Qbar_i(s', a')]
                    p = F.softmax(self.policy(xa_next), -1)
                    next_q = (next_q.min(0).values * p).sum(-1, keepdim=True)[None].expand(2, -1, -1)
            else:
                j = cfg.cql_samples if cfg.max_q_backup else 1
                a_next, _ = self.policy.sample(xa_next, gen, j)
                next_q = target.q_many(xt, a_next)  # [2, B, J]
            # y = r + gamma * m * max_j min_i Qbar_i(s', a'_j)
            y = max_q_target(batch["rewards"], batch["masks"], next_q, cfg.discount)

        # L_Q = mean_i (Q_i(s, a) - y)^2 + alpha_cql * (logsumexp_a max(Q_i(s, a), G) - Q_i(s, a_data))
        q_data = self.critic.q_at(x, actions)
        td = bellman_loss(q_data, y)
        if disc:
            q_all = self.critic.all_q(x)
            cql = cql_regulariser(q_data, q_all, None, mc=mc)
        else:
            j = cfg.cql_samples
            with torch.no_grad():
                a_pi, log_pi = self.policy.sample(xa.detach(), gen, j)
            u = torch.rand((len(x), j, self.space.n), generator=self._device_generator(x), device=x.device) * 2 - 1
            cql = cql_regulariser(q_data, self.critic.q_many(x, a_pi), log_pi, self.critic.q_many(x, u),
                                  self.space.n * math.log(0.5), mc)
        critic_loss = td + cfg.cql_alpha * cql

        # L_pi = E[alpha log pi(a|s) - min_i Q_i(s, a)], a ~ pi (the critic's weights frozen in this term)
        if disc:
            log_p = F.log_softmax(self.policy(xa), -1)
            actor_loss = discrete_actor_loss(log_p, q_all.detach().min(0).values, alpha)
            entropy = -(log_p.exp() * log_p).sum(-1)
        else:
            a, log_pi_a = self.policy.sample(xa, gen)
            frozen = {k: v.detach() for k, v in self.critic.q.named_parameters()}
            q_pi = torch.stack(functional_call(self.critic.q, frozen, (x.detach(), a)))
            actor_loss = (alpha * log_pi_a - q_pi.min(0).values).mean()
            entropy = -log_pi_a
        temp_loss = temperature_loss(self.log_alpha, entropy, self.target_entropy)

        metrics = {"critic_loss": critic_loss, "td_loss": td, "cql_loss": cql, "actor_loss": actor_loss,
                   "temperature": alpha, "entropy": entropy.mean(), "q_data": q_data.mean(), "y": y.mean()}
        return critic_loss + actor_loss + temp_loss, {k: v.detach() for k, v in metrics.items()}

    # ----- interface
    def _tasks(self, obs: torch.Tensor, tasks) -> torch.Tensor:
        if tasks is None:
            tasks = self.eval_task
        return torch.as_tensor(tasks, device=obs.device).long().expand(len(obs))

    @torch.no_grad()
    def act(self, obs, goals=None, sample=True, tasks=None):
        xa = torch.cat([self.actor_encoder(obs), self.condition(self._tasks(obs, tasks))], 1)
        if self.space.discrete:
            logits = self.policy(xa)
            return torch.distributions.Categorical(logits=logits).sample() if sample else logits.argmax(-1)
        return self.policy.sample(xa, None)[0] if sample else self.policy.mode(xa)

    @torch.no_grad()
    def value(self, obs, goals=None, tasks=None):
        """V(s) = E_{a~pi} min_i Q_i(s, a) (discrete); continuous: min_i Q_i(s, mode of pi)."""
        cond = self.condition(self._tasks(obs, tasks))
        x = torch.cat([self.critic.encoder(obs), cond], 1)
        xa = torch.cat([self.actor_encoder(obs), cond], 1)
        if self.space.discrete:
            return (self.critic.all_q(x).min(0).values * F.softmax(self.policy(xa), -1)).sum(-1)
        return self.critic.q_at(x, self.policy.mode(xa)).min(0).values
