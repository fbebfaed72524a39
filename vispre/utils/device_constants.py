"""Small constant tensors on the training device, copied there once.

``torch.tensor(values, device="cuda")`` or ``x.new_tensor(values)`` inside a training step copies from pageable
host memory and then waits for the stream: the host stalls until the GPU has finished everything queued. A
constant used every step (normalisation means, hue offsets, an identity row) is made once per device and
dtype here and reused (read-only: never modify what this returns).
"""

from __future__ import annotations

import functools

import torch


def device_constant(values, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``torch.tensor(values, dtype=dtype)`` on ``device``, cached (``values``: numbers or nested sequences)."""
    return _cached(_frozen(values), torch.device(device), dtype)


def _frozen(values):
    return tuple(_frozen(v) for v in values) if isinstance(values, (list, tuple)) else values


@functools.cache
def _cached(values, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).to(device)
