"""The encoder's pooled feature as an ONNX graph (``vispre export --onnx``), checked with onnxruntime.

The graph maps ``pixel_values`` [B, 3, H, W] (normalised as config.json says) to ``features``
[B, num_features]; the batch axis is dynamic, the image size is fixed to the export's input size
(ViTs resample position embeddings per size in Python, which tracing turns into constants).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("vispre.export_onnx")


class PooledFeature(nn.Module):
    """timm's pre-logits feature, the tensor ``timm.create_model(..., num_classes=0)(x)`` returns."""

    def __init__(self, timm_model: nn.Module):
        super().__init__()
        self.model = timm_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def export_onnx(encoder, path: str | Path, input_size, opset: int = 17, check: bool = True,
                atol: float = 1e-4) -> Path:
    """Write ``path`` and, when onnxruntime is installed and ``check``, compare it with torch on a random
    batch of another batch size (an error if any feature differs by more than ``atol``)."""
    path = Path(path)
    module = PooledFeature(encoder.timm_model).eval()
    example = torch.randn(2, *input_size)
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter: the dynamo one needs onnxscript, not a vispre dependency
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (example,), str(path), input_names=["pixel_values"], output_names=["features"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "features": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    if check:
        error = check_onnx(module, path, input_size)
        if error is not None and error > atol:
            raise RuntimeError(f"{path}: onnxruntime features differ from torch by {error:.2e} (> {atol})")
    return path


def check_onnx(module: nn.Module, path: Path, input_size, batch: int = 3) -> float | None:
    """Max |onnxruntime - torch| on a random batch; None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        log.warning("onnxruntime is not installed: %s was not checked (pip install 'vispre[onnx]')", path)
        return None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module(x).numpy()
    got = session.run(["features"], {"pixel_values": x.numpy()})[0]
    error = float(abs(got - expected).max())
    log.info("%s: onnxruntime vs torch max abs difference %.2e", path, error)
    return error
