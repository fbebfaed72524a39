"""The gradients at the optimizer step: padding rescale, the method's hook, clipping, and whether to apply them.

Everything stays on the device (no host sync): the answer is a 0-dim bool tensor that the fused optimizer
(``found_inf``) and the target update (momentum 1) read in their kernels (``vispre.pretrain.loop``).
"""

from __future__ import annotations

import torch


def usable_gradients(acc, model: torch.nn.Module, real: int, bad: torch.Tensor, grad_accum: int,
                     clip_grad: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """After DDP averaged the gradients over ranks: (a device bool, False when a loss or gradient is
    non-finite on any rank: the step is skipped; the gradient norm before clipping when ``clip_grad`` > 0).

    ``real``: this rank's real (not padding) batches in the step; ``bad``: a device bool, a loss was
    non-finite. When some ranks fed padding batches (zero gradient), the average is rescaled to one over the
    real batches: DDP divides by every rank, which would shrink the step by the padding fraction for most of
    a finite epoch's tail. Then the method's ``before_optimizer_step`` and the clipping."""
    total = acc.num_processes * grad_accum
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if acc.num_processes > 1:  # every rank must agree, and count the real batches of all
        flags = torch.stack([torch.full((), float(real), device=acc.device, dtype=torch.float64),
                             bad.to(torch.float64)])  # torch.full: no host-to-device copy
        torch.distributed.all_reduce(flags)
        real_all, bad = flags[0], flags[1] > 0
        scale = torch.where((real_all > 0) & (real_all < total), total / real_all.clamp_min(1), 1.0)
        if grads:
            torch._foreach_mul_(grads, scale.to(grads[0].dtype))
    elif 0 < real < total and grads:
        torch._foreach_mul_(grads, total / real)
    acc.unwrap_model(model).before_optimizer_step()
    grad_norm = None
    if clip_grad > 0:
        grad_norm = acc.clip_grad_norm_(model.parameters(), clip_grad)
    grad_norm = _whole(grad_norm)
    ok = ~bad
    if acc.scaler is None:  # fp16: the GradScaler skips inf gradients and lowers its scale itself
        norm = grad_norm
        if norm is None:
            kept = [p.grad for p in model.parameters() if p.grad is not None]
            norm = _whole(torch.nn.utils.get_total_norm(kept)) if kept else None
        if norm is not None:  # non-finite iff some gradient is (a finite fp32 gradient's norm is finite)
            ok = ok & torch.isfinite(norm)
    return ok, grad_norm


def _whole(norm: torch.Tensor | None) -> torch.Tensor | None:
    """A norm of FSDP2-sharded gradients is a DTensor (each rank's partial sum): its value, reduced over the
    ranks (a collective every rank reaches; on the device), so that it mixes with plain tensors."""
    from torch.distributed.tensor import DTensor

    return norm.full_tensor() if isinstance(norm, DTensor) else norm

