"""FLOPs of one training step, counted by torch, and the dense bf16 peak of the device: MFU's two halves.

Units: ``torch.utils.flop_counter.FlopCounterMode`` counts a multiply-add as 2 FLOPs (a [m, k] @ [k, n] matmul
is 2mkn), the convention of MFU papers; timm and fvcore print GMACs, half of it (ViT-B/16 at 224 px: 17.6
GMACs = 35.1 GFLOPs forward). It counts matmuls, convolutions and attention only (its registry): norms,
activations, the loss and the optimizer add no FLOPs, so a counted step is its forward + backward.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch's registry covers the CUDA attention kernels (flash, efficient, cudnn) but not the CPU flash kernel that
# SDPA runs on CPU; the same formulas apply (same q, k, v shapes), so a CPU count includes attention too.
# (FlopCounterMode hands these the tensors' shapes.)
CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets; matched as substrings of
# torch.cuda.get_device_name(), most specific first ("NVIDIA H100 80GB HBM3" is the SXM part).
PEAK_BF16_TFLOPS = [
    ("H100 PCIE", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100", 989.0),  # SXM
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
]


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a device by name; None when it is not in the table (MFU is then omitted)."""
    name = device_name.upper()
    for key, peak in PEAK_BF16_TFLOPS:
        if key in name:
            return peak
    return None


def count_flops(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` once under FlopCounterMode: (its result, FLOPs counted, 2 per multiply-add)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        result = fn(*args, **kwargs)
    return result, counter.get_total_flops()


def vit_b16_forward_gflops() -> float:
    """FLOPs counted for one ViT-B/16 forward at 224 px, batch 1, in GFLOPs (timm's count: 35.1). On the meta
    device: shapes only, no weights or compute, so it costs the same anywhere."""
    import timm

    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
        _, flops = count_flops(model, torch.zeros(1, 3, 224, 224))
    return flops / 1e9
