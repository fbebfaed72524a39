"""Seeds that are pure functions of their parts: the same (seed, step, rank, purpose) gives the same numbers
in every process and Python run (unlike ``hash``), which is what exact resumption relies on."""

from __future__ import annotations

import hashlib

import torch


def stable_seed(*parts) -> int:
    """A 63-bit seed from any printable parts."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


def step_generator(device, *parts) -> torch.Generator:
    """A generator seeded from (seed, step, rank, ...): augmentation is a pure function of the step,
    so a resumed run draws the same crops' colours and candidate boxes as an uninterrupted one."""
    return torch.Generator(device=device).manual_seed(stable_seed(*parts))
