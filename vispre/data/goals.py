"""Goals and intents inside trajectories: the one goal sampler, for ICVF's (s, s', s+, z) samples and for
goal-conditioned offline RL (``vispre.rl.transitions``).

The mix of ICVF's released code (``GCSDataset``; Ghosh et al. 2023), for the outcome s+ and the
intent z independently:

    current state            p_current = 0.2     index t
    future, same trajectory  p_future  = 0.5     uniform: round(t u + last (1 - u)), u ~ U(0, 1) (the release)
                                                 uniform_after: the same from min(t + 1, last) (OGBench)
                                                 geometric: min(t + k, last), k ~ Geom(1 - discount) >= 1
    random                   p_random  = 0.3     any frame of another trajectory
    then s+ := z with probability p_same = 0.5 (ICVF; goal-conditioned RL sets 0)

where t indexes s (s' is frame t + 1, so t <= last - 1) and ``last`` is the trajectory's last
frame. Reaching is index identity: s+ is reached when its index is t (never for random goals).

Samples of a streamed clip are made where the clip is decoded (``ClipQuadruples``, in the loader
workers, from the sample's own generator: a resumed stream draws the same ones); a random goal
is a frame of *another clip in the batch*, chosen on the training device (``resolve_random``).
Every sample carries five frames, s, s', s+, z and ``r`` (a uniformly drawn frame of its own
clip, the pool random goals come from), and the goal kinds and indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .decode import DEFAULT_MAX_PIXELS
from .skips import SkipSample
from .transforms import CenterCrop

CURRENT, FUTURE, RANDOM = 0, 1, 2
FUTURES = ("uniform", "uniform_after", "geometric")
S, S_NEXT, GOAL, INTENT, POOL = range(5)  # frame slots of a sample


@dataclass
class GoalMix:
    p_current: float = 0.2
    p_future: float = 0.5
    p_random: float = 0.3
    future: str = "uniform"  # uniform (ICVF release) | uniform_after (OGBench actor goals) | geometric (OGBench)
    discount: float = 0.99  # geometric future offsets ~ Geom(1 - discount)
    p_same: float = 0.5  # s+ := z

    def check(self, where: str = "method.icvf") -> None:
        total = self.p_current + self.p_future + self.p_random
        if min(self.p_current, self.p_future, self.p_random) < 0 or abs(total - 1) > 1e-6:
            raise ValueError(f"{where}.p_current + p_future + p_random must be 1 (each >= 0), got {total}")
        if self.future not in FUTURES:
            raise ValueError(f"{where}.future must be one of {', '.join(FUTURES)}, got {self.future!r}")
        geometric = self.future == "geometric"
        if not 0 <= self.p_same <= 1 or not 0 <= self.discount < 1 or (geometric and not self.discount):
            raise ValueError(f"{where}.p_same must be in [0, 1] and discount in [0, 1) (> 0 for geometric futures)")


def future_indices(t: torch.Tensor, last: torch.Tensor, future: str, discount: float = 0.99,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """A later index of the same trajectory for every state ``t`` (``last``: its trajectory's last index)."""
    if future == "geometric":
        offset = torch.empty(t.shape, dtype=torch.float64).geometric_(1 - discount, generator=generator)
        return torch.minimum(t + offset.long(), last)
    start = t if future == "uniform" else torch.minimum(t + 1, last)
    v = torch.rand(t.shape, generator=generator, dtype=torch.float64)
    return torch.round(start * v + last * (1 - v)).long()


def draw_goals(t: torch.Tensor, last: torch.Tensor, mix: GoalMix, generator: torch.Generator | None = None):
    """Goal kinds and indices for states ``t`` of trajectories ending at ``last`` ([B] int64 each).

    Random goals get index -1: the caller picks them (another clip's frame, any dataset frame).
    """
    u = torch.rand(t.shape, generator=generator)
    kind = torch.where(u < mix.p_current, CURRENT, torch.where(u < mix.p_current + mix.p_future, FUTURE, RANDOM))
    future = future_indices(t, last, mix.future, mix.discount, generator)
    index = torch.where(kind == CURRENT, t, torch.where(kind == FUTURE, future, -1))
    return kind, index


def draw_samples(t: torch.Tensor, last: torch.Tensor, mix: GoalMix, generator=None) -> dict:
    """Outcome and intent for every state: kinds, indices and whether s+ was set to z."""
    z_kind, z_index = draw_goals(t, last, mix, generator)
    g_kind, g_index = draw_goals(t, last, mix, generator)
    same = torch.rand(t.shape, generator=generator) < mix.p_same
    return {"t": t, "g_kind": torch.where(same, z_kind, g_kind), "g_index": torch.where(same, z_index, g_index),
            "z_kind": z_kind, "z_index": z_index, "g_is_z": same}


class ClipQuadruples:
    """Loader transform for ``clip`` samples: one (s, s', s+, z) sample per clip, decoding 5 frames.

    Output: ``frames`` uint8 [5, 3, size, size] (slots S, S_NEXT, GOAL, INTENT, POOL; the GOAL /
    INTENT slot of a random goal holds zeros until ``resolve_random``), ``length``, and the
    scalars of ``draw_samples``.
    """

    def __init__(self, mix: GoalMix, size: int = 64, max_pixels: int = DEFAULT_MAX_PIXELS):
        mix.check()
        self.mix = mix
        self.frame = CenterCrop(size, crop_pct=1.0, max_pixels=max_pixels)

    def __call__(self, frames: list[bytes], generator: torch.Generator) -> dict:
        if len(frames) < 2:
            raise SkipSample("short_clip", f"a clip of {len(frames)} frame(s) has no transition")
        last = torch.tensor([len(frames) - 1])
        t = torch.randint(0, len(frames) - 1, (1,), generator=generator)
        sample = {k: v[0] for k, v in draw_samples(t, last, self.mix, generator).items()}
        pool = int(torch.randint(0, len(frames), (1,), generator=generator))
        indices = [int(t), int(t) + 1, int(sample["g_index"]), int(sample["z_index"]), pool]
        decoded: dict[int, torch.Tensor] = {}
        out = []
        for i in indices:
            if i >= 0 and i not in decoded:
                decoded[i] = self.frame.image(frames[i])
            out.append(decoded[i] if i >= 0 else None)
        blank = torch.zeros_like(out[S])
        sample["frames"] = torch.stack([f if f is not None else blank for f in out])
        sample["length"] = len(frames)
        return sample


def resolve_random(batch: dict, generator: torch.Generator | None = None, intent_same_clip: bool = False) -> dict:
    """Fill random goals and intents with the POOL frame of another sample of the batch, and add
    rewards and masks: r = 0 and mask = 0 where the goal is reached (index identity), else -1, 1.

    The other sample is sample (i + k) mod B, k uniform in 1..B-1, drawn separately for s+ and z
    (s+ follows z where it was set to z). ``intent_same_clip``: a random intent is the sample's own POOL
    frame instead (a uniform frame of its own clip: intents from the same video, as the video ICVF code
    samples them). Returns s, s_next, goal, intent uint8 [B, 3, H, W] and reward_g, mask_g, reward_z,
    mask_z float [B].
    """
    frames = batch["frames"]
    b = frames.shape[0]
    arange = torch.arange(b, device=frames.device)

    def other() -> torch.Tensor:
        shift = int(torch.randint(1, b, (1,), generator=generator)) if b > 1 else 0
        return frames[(arange + shift) % b, POOL]

    def fill(slot: int, kind: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        return torch.where((kind == RANDOM).view(-1, 1, 1, 1), pool, frames[:, slot])

    z_kind, g_kind = batch["z_kind"].to(frames.device), batch["g_kind"].to(frames.device)
    z_pool, g_pool = other(), other()
    if intent_same_clip:
        z_pool = frames[:, POOL]
    intent = fill(INTENT, z_kind, z_pool)
    same = batch["g_is_z"].to(frames.device).view(-1, 1, 1, 1)
    goal = torch.where(same, intent, fill(GOAL, g_kind, g_pool))
    t = batch["t"].to(frames.device)
    reached_g = (g_kind != RANDOM) & (batch["g_index"].to(frames.device) == t)
    reached_z = (z_kind != RANDOM) & (batch["z_index"].to(frames.device) == t)
    return {"s": frames[:, S], "s_next": frames[:, S_NEXT], "goal": goal, "intent": intent,
            "reward_g": reached_g.float() - 1, "mask_g": 1 - reached_g.float(),
            "reward_z": reached_z.float() - 1, "mask_z": 1 - reached_z.float()}
