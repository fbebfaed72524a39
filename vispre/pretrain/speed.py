"""The GPU path's switches, set up once by the trainer (README "GPU path"; recipe fields under ``train``).

* the optimizer: AdamW with fused kernels where torch has them for the training device (CUDA, and the CPU
  since torch 2.4): one kernel for all parameters, and it can skip a step on the device (``found_inf``), so a
  non-finite step is skipped without the host reading a flag (``vispre.pretrain.loop``);
* ``train.compile``: ``torch.compile`` of the online and target encoders and AB's action decoders (in place:
  ``Module.compile`` keeps the parameter names, so checkpoints and exports are unchanged);
* ``train.channels_last``: NHWC weights for CNN encoders on CUDA (cuDNN's fast layout; ViTs only have
  their patch embedding as a convolution, so they keep NCHW);
* timm's fused attention (``F.scaled_dot_product_attention``) on, unless ``TIMM_FUSED_ATTN=0`` says not;
* DDP options from ``train.ddp``.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

log = logging.getLogger("vispre.train")


def fused_supported(device: torch.device) -> bool:
    """Whether torch has fused AdamW kernels for ``device`` (the device the parameters will live on)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return torch.device(device).type in _get_fused_kernels_supported_devices()


def build_optimizer(groups: list[dict], device: torch.device, setting: str, **adamw) -> torch.optim.AdamW:
    """AdamW, fused on ``device`` when ``setting`` is auto (where supported) or true (an error where not);
    else torch's default (foreach on accelerators)."""
    fused = setting == "true" or (setting == "auto" and fused_supported(device))
    if fused and not fused_supported(device):
        raise ValueError(f"train.fused_adamw=true: torch has no fused AdamW for device {torch.device(device).type}")
    return torch.optim.AdamW(groups, fused=True, **adamw) if fused else torch.optim.AdamW(groups, **adamw)


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Fused Adam(W) honours ``optimizer.found_inf`` (1: no update, the step count unchanged) on the device."""
    return all(group.get("fused") for group in optimizer.param_groups)


def fused_attention() -> bool:
    """Turn timm's fused attention (SDPA) on before the encoder is built (its Attention reads the flag at
    construction); ``TIMM_FUSED_ATTN=0`` in the environment is the user's choice and kept. Returns the state."""
    from timm.layers import set_fused_attn, use_fused_attn

    if not use_fused_attn() and os.environ.get("TIMM_FUSED_ATTN") != "0":
        set_fused_attn(True)
    return use_fused_attn()


def is_cnn(encoder: nn.Module) -> bool:
    """A convolutional encoder: convolutions beyond a single patch embedding (a ViT has exactly one)."""
    return sum(isinstance(m, nn.Conv2d) for m in encoder.modules()) > 1


def use_channels_last(setting: str, encoder: nn.Module, device: torch.device) -> bool:
    """auto: CNN encoders on CUDA; true / false: as told."""
    if setting == "auto":
        return torch.device(device).type == "cuda" and is_cnn(encoder)
    return setting == "true"


COMPILED_MODULES = ("ab_decoder",)  # besides the encoders: AB's action decoder (its Q head's candidate max)


def compile_encoders(method: nn.Module, backend: str = "inductor", mode: str | None = None) -> list[str]:
    """``torch.compile`` every encoder the method runs (online and target) and AB's action decoders, in place;
    returns their names. One graph per crop size (``dynamic=False``: 2 sizes for multi-crop, each compiled
    once; the first two steps compile, with and without gradient)."""
    names = []
    for name, module in method.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last == "encoder" and hasattr(module, "timm_model") or last in COMPILED_MODULES:
            module.compile(backend=backend, mode=mode, dynamic=False)
            names.append(name)
    return names


def ddp_kwargs(ddp) -> dict:
    """accelerate's DistributedDataParallelKwargs from ``train.ddp``."""
    return {"find_unused_parameters": ddp.find_unused_parameters, "static_graph": ddp.static_graph,
            "gradient_as_bucket_view": ddp.gradient_as_bucket_view}
