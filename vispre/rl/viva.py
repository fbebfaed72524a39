"""ViVa (Dashora, Ghosh, Levine 2025, "Video-Trained Value Functions for Guiding Online RL from Diverse Data";
code ``Dashora7/rlpd_subgoals``, ``Dashora7/icvf_subgoals``): a video-trained ICVF value V(s, s+, z),
fine-tuned on environment data, frozen, shapes the reward of an online RL agent.

* :func:`finetune_value`: the whole value function of an ICVF export (encoder and V(s, s+, z)) trained
  further with ICVF's own loss on a mix of sources (video and environment trajectories), written back as
  an export of the same layout (``load_encoder`` / ``load_exported_module(DIR, "value")`` read it);
* :class:`FrozenValue`: V(s, g, g) = mean_k V_k(s, g, g) on frames, frozen (ViVa's ``icvf_value_fn``);
* :class:`ValueShaper`: the shaped reward, ``c`` a recipe field:

      value      r + c * V(s', g, g)                           (ViVa's form; c = 0.001 in its code)
      potential  r + c * (gamma * V(s', g, g) - V(s, g, g))    (potential-based, Ng et al. 1999; ViVa's code
                                                                 has the gamma = 1 variant, c = 0.1)

  for the task's goal image g;
* :class:`MiniGridGoalTask`: a sparse-reward MiniGrid goal-reaching task on one layout (reward 1 on
  reaching the goal), whose goal image is the frame with the agent on the goal.

The online learner is ``vispre.rl.online`` (RLPD-style 50/50 offline / online batches).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file, save_model
from torch import nn

from ..export.read import load_encoder, load_exported_module
from ..models import icvf as _icvf_builders  # noqa: F401  (registers icvf_value / icvf_phi for load_exported_module)
from ..utils.io import swap_in_dir, write_json
from ..views.shift import shift_frames
from .encoders import _normalisation
from .task_data import DatasetMix, TaskSource
from .transitions import Transitions

log = logging.getLogger(__name__)


# -- the value on frames -------------------------------------------------------------------------------------
class FrozenValue(nn.Module):
    """Frames -> encoder outputs -> V(s, s+, z) of an export's whole value function (``value`` module).

    ``random_init``: the same architecture, randomly initialised (the random-value control). ``trainable``:
    left trainable (fine-tuning); else frozen in eval mode."""

    def __init__(self, export_dir: str | Path, random_init: bool = False, trainable: bool = False,
                 input_size: int = 0):
        super().__init__()
        self.backbone = load_encoder(export_dir, random_init=random_init)
        exported = load_exported_module(export_dir, "value", random_init=random_init)
        self.value, self.reads = exported.module, exported.spec.reads
        self.spec = exported.spec
        mean, std, fixed = _normalisation(self.backbone)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.input_size = (input_size, input_size) if input_size else fixed
        if not trainable:
            self.requires_grad_(False).eval()

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [N, H, W, C] -> what the value reads (``Encoder(x).pooled`` or ``.tokens``)."""
        x = frames.permute(0, 3, 1, 2).float().div(255)
        if self.input_size is not None and tuple(x.shape[-2:]) != tuple(self.input_size):
            x = nn.functional.interpolate(x, size=self.input_size, mode="bilinear", antialias=True,
                                          align_corners=False)
        return getattr(self.backbone((x - self.mean) / self.std), self.reads)

    def forward(self, s: torch.Tensor, g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """V_k(s, s+, z) [k, N] on encoder features."""
        return self.value(s, g, z)

    @torch.no_grad()
    def goal_value(self, frames: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """V(s, g, g) = mean_k V_k(s, g, g) [N]; goal: one frame [H, W, C]."""
        f = self.features(frames)
        g = self.features(goal[None]).expand(len(f), *f.shape[1:])
        return self.value(f, g, g).mean(0)


class ValueShaper:
    """The shaping term added to sampled rewards (frozen value; V(s, g, g) cached per distinct frame)."""

    FORMS = ("value", "potential")

    def __init__(self, value: FrozenValue, goal_frame: np.ndarray, coefficient: float, form: str = "value",
                 discount: float = 0.99, device="cpu", cache: bool = True):
        if form not in self.FORMS:
            raise ValueError(f"shaping form must be one of {self.FORMS}, got {form!r}")
        self.value, self.c, self.form = value.to(device), coefficient, form
        self.discount, self.device = discount, device
        self.goal = torch.from_numpy(np.ascontiguousarray(goal_frame)).to(device)
        self.cache: dict[bytes, float] | None = {} if cache else None

    def values(self, frames: np.ndarray) -> np.ndarray:
        """V(s, g, g) [N] for frames [N, H, W, C] (or stacks [N, S, H, W, C]: the newest frame)."""
        if frames.ndim == 5:
            frames = frames[:, -1]
        if self.cache is None:
            return self.value.goal_value(torch.from_numpy(frames).to(self.device), self.goal).cpu().numpy()
        keys = [hashlib.blake2b(f.tobytes(), digest_size=16).digest() for f in frames]
        missing = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if missing:
            where = {k: i for i, k in enumerate(keys)}
            new = self.value.goal_value(torch.from_numpy(frames[[where[k] for k in missing]]).to(self.device),
                                        self.goal).cpu().numpy()
            self.cache.update(zip(missing, new.tolist()))
        return np.array([self.cache[k] for k in keys], np.float32)

    def bonus(self, obs: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        if self.form == "value":  # c * V(s', g, g)
            return (self.c * self.values(next_obs)).astype(np.float32)
        # c * (gamma * V(s', g, g) - V(s, g, g))
        return (self.c * (self.discount * self.values(next_obs) - self.values(obs))).astype(np.float32)


# -- fine-tuning the whole value function ---------------------------------------------------------------------
@dataclass
class ValueFinetuneConfig:
    steps: int = 0  # 0 = use the export as it is
    batch_size: int = 64
    lr: float = 5e-5  # the ICVF release's vision optimiser: Adam lr 5e-5, eps 3.125e-4
    eps: float = 3.125e-4
    discount: float = 0.99
    expectile: float = 0.9
    tau: float = 0.005
    p_current: float = 0.2  # goal / intent mix of the ICVF release (GCSDataset)
    p_trajectory: float = 0.5
    p_random: float = 0.3
    p_samegoal: float = 0.5
    crop_pad: int = 0  # random shift of each of s, s', s+, z on its own (the Ego4D ICVF code: 16 px at 128 px)
    sources: list[str] = field(default_factory=list)  # .npz files (OGBench layout; video files need no actions)
    weights: list[float] = field(default_factory=list)  # their mixing weights ([] = equal)


def load_frames(path: str | Path) -> Transitions:
    """An OGBench-layout file, or a video file (observations + terminals, no actions: zeros stand in)."""
    with np.load(path) as z:
        if "actions" in z.files:
            return Transitions.from_file(path)
        obs, terminals = z["observations"], z["terminals"].astype(np.float32)
    return Transitions.from_layout({"observations": obs, "actions": np.zeros(len(obs), np.int64),
                                    "terminals": terminals, "valids": 1.0 - terminals})


def icvf_loss(net: FrozenValue, target: FrozenValue, frames: dict[str, torch.Tensor], rewards: dict,
              discount: float, expectile: float) -> tuple[torch.Tensor, dict]:
    """ICVF's loss (Ghosh et al. 2023, the release's ``icvf_loss``):

        A   = r_z + gamma m_z min_k Vbar_k(s', z, z) - mean_k Vbar_k(s, z, z)
        y_k = r_g + gamma m_g Vbar_k(s', s+, z)
        L   = sum_k mean_b |alpha - 1(A < 0)| (y_k - V_k(s, s+, z))^2
    """
    with torch.no_grad():
        t = {k: target.features(v) for k, v in frames.items()}
        adv = rewards["r_z"] + discount * rewards["m_z"] * target(t["next"], t["z"], t["z"]).min(0).values \
            - target(t["s"], t["z"], t["z"]).mean(0)
        y = rewards["r_g"] + discount * rewards["m_g"] * target(t["next"], t["g"], t["z"])  # [k, B]
    f = {k: net.features(frames[k]) for k in ("s", "g", "z")}
    v = net(f["s"], f["g"], f["z"])
    weight = torch.where(adv >= 0, expectile, 1 - expectile)
    loss = (weight * (y - v).square()).mean(1).sum()
    return loss, {"icvf_loss": loss.detach(), "v": v.mean().detach(), "adv_positive": (adv >= 0).float().mean()}


def sample_quadruples(data: Transitions, n: int, rng: np.random.Generator, cfg: ValueFinetuneConfig) -> tuple:
    """(s, s', s+, z) rows and the rewards r = 1(s = target) - 1, m = 1 - 1(s = target) for both targets."""
    rows = data.sample(n, rng)
    kw = {"p_current": cfg.p_current, "p_trajectory": cfg.p_trajectory, "p_random": cfg.p_random, "discount": None}
    goals, intents = data.sample_goals(rows, rng, **kw), data.sample_goals(rows, rng, **kw)
    same = rng.random(n) < cfg.p_samegoal
    goals = np.where(same, intents, goals)
    frames = {"s": data.observations[rows], "next": data.next_stack(rows, 1)[:, 0],
              "g": data.observations[goals], "z": data.observations[intents]}
    hit_g, hit_z = (rows == goals).astype(np.float32), (rows == intents).astype(np.float32)
    rewards = {"r_g": hit_g - 1, "m_g": 1 - hit_g, "r_z": hit_z - 1, "m_z": 1 - hit_z}
    return frames, rewards


def finetune_value(export_dir: str | Path, out_dir: str | Path, cfg: ValueFinetuneConfig, seed: int = 0,
                   device="cpu") -> Path:
    """Fine-tune the export's encoder and whole value function on ``cfg.sources``; write the result to
    ``out_dir`` as an export (the original's files, new ``model.safetensors`` and ``value.safetensors``)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = FrozenValue(export_dir, trainable=True).to(device).train()
    target = copy.deepcopy(net).requires_grad_(False).eval()
    datas = [load_frames(p) for p in cfg.sources]
    mix = DatasetMix([TaskSource(str(i), d, np.zeros(d.num_rows, np.float32), i) for i, d in enumerate(datas)],
                     cfg.weights or [1.0] * len(datas))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, eps=cfg.eps)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for step in range(1, cfg.steps + 1):
        parts = [sample_quadruples(d, k, rng, cfg) for d, k in zip(datas, mix.counts(cfg.batch_size)) if k > 0]
        frames = {k: torch.from_numpy(np.concatenate([p[0][k] for p in parts])).to(device) for k in parts[0][0]}
        rewards = {k: torch.from_numpy(np.concatenate([p[1][k] for p in parts])).to(device) for k in parts[0][1]}
        if cfg.crop_pad:
            frames = {k: shift_frames(v.cpu()[:, None], cfg.crop_pad, generator)[:, 0].to(device)
                      for k, v in frames.items()}
        loss, metrics = icvf_loss(net, target, frames, rewards, cfg.discount, cfg.expectile)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # Vbar <- tau V + (1 - tau) Vbar
            for p, q in zip(target.parameters(), net.parameters()):
                p.lerp_(q, cfg.tau)
        if step % 100 == 0 or step == cfg.steps:
            history.append({"step": step, **{k: float(v) for k, v in metrics.items()}})
            check_value_range(history[-1], cfg)
    return write_value_export(export_dir, out_dir, target, {"finetune": vars(cfg), "history": history})


def check_value_range(point: dict, cfg: ValueFinetuneConfig) -> None:
    """With rewards in {-1, 0}, every value lies in [-1 / (1 - gamma), 0]. A mean V far outside it, or not
    finite, means TD diverged (e.g. lr 3e-4 with tau 0.05 took MiniGrid's V from -6 to -4000 in 300 steps):
    stop rather than shape rewards with it."""
    v, bound = point["v"], 1.0 / (1.0 - cfg.discount)
    if not math.isfinite(v) or v < -1.5 * bound or v > 0.5 * bound:
        raise ValueError(f"value fine-tuning diverged at step {point['step']}: mean V = {v:.4g}, outside "
                         f"[-1 / (1 - gamma), 0] = [{-bound:.4g}, 0]; lower value_finetune.lr or value_finetune.tau")


def write_value_export(export_dir: str | Path, out_dir: str | Path, value: FrozenValue, info: dict) -> Path:
    """The original export's files with the (target) weights of ``value``, assembled under a temporary name
    and renamed into place."""
    src, out = Path(export_dir), Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    state = {k: v.detach().cpu().contiguous() for k, v in value.backbone.timm_model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    save_model(value.value, str(tmp / "value.safetensors"))
    (tmp / "phi.safetensors").unlink(missing_ok=True)  # phi was the original's: drop it with its spec
    (tmp / "phi.json").unlink(missing_ok=True)
    write_json(tmp / "viva_finetune.json", {"from": str(src.resolve()), **info})
    return swap_in_dir(tmp, out)


# -- a sparse-reward MiniGrid goal-reaching task ---------------------------------------------------------------
class MiniGridGoalTask:
    """One MiniGrid layout; reward 1 and termination on reaching the goal, 0 otherwise; the environment's start
    (``random_start``: a random reachable start cell per episode, seeded by the episode index)."""

    def __init__(self, task: str = "simple_crossing", layout_seed: int = 0, max_steps: int = 100,
                 random_start: bool = False):
        from ..envs import minigrid

        self.mg, self.task = minigrid, minigrid.get_task(task)
        self.env = minigrid.make_env(self.task)
        self.layout_seed, self.max_steps, self.random_start = layout_seed, max_steps, random_start
        self.layout = minigrid.reset(self.env, layout_seed)
        self.t = 0

    def goal_frame(self) -> np.ndarray:
        pos, heading = tuple(self.env.agent_pos), int(self.env.agent_dir)
        self.mg.place_agent(self.env, *self.layout.goal, 0)
        frame = self.mg.render(self.env, self.task)
        self.mg.place_agent(self.env, *pos, heading)
        return frame

    def reset(self, episode: int = 0) -> np.ndarray:
        self.mg.reset(self.env, self.layout_seed)
        if self.random_start:
            rng = np.random.default_rng(episode)
            cells = [c for c in self.layout.cells() if c != self.layout.goal]
            x, y = cells[rng.integers(len(cells))]
            self.mg.place_agent(self.env, x, y, int(rng.integers(4)))
        self.t = 0
        return self.mg.render(self.env, self.task)

    def step(self, action):
        _, reward, terminated, _, _ = self.env.step(int(action))
        self.t += 1
        success = bool(terminated and reward > 0)
        frame = self.mg.render(self.env, self.task)
        return frame, float(success), bool(terminated), self.t >= self.max_steps and not terminated, success


def summarise(curves: dict[str, list[list[dict]]]) -> dict:
    """Per arm: mean and std over seeds of greedy success and return at each evaluation step, and of the
    training episodes' success rate (the last 20 episodes, exploration on) where the curve has it."""
    out = {}
    for arm, runs in curves.items():
        steps = [p["env_step"] for p in runs[0]]
        keys = [k for k in ("success", "return", "train_success") if all(k in p for r in runs for p in r)]
        out[arm] = {"env_step": steps,
                    **{f"{k}_{stat}": [float(fn([r[i][k] for r in runs])) for i in range(len(steps))]
                       for k in keys for stat, fn in (("mean", np.mean), ("std", np.std))}}
    return out


def dump(path: Path, value) -> None:
    write_json(path, json.loads(json.dumps(value, default=float)))
