"""The encoder's pooled feature as an ONNX graph (``vispre export --onnx``), checked with onnxruntime.

The graph maps ``pixel_values`` [B, 3, H, W] (normalised as config.json says) to ``features``
[B, num_features]; the batch axis is dynamic. By default the image size is fixed to the export's input
size (the TorchScript exporter: ViTs resample position embeddings per size in Python, which tracing turns
into constants). ``dynamic_size=True`` (``vispre export --onnx --dynamic-size``) exports with torch.export
(the dynamo exporter, which needs ``onnxscript``) so height and width are free too, for CNNs and for ViTs
built with ``dynamic_img_size`` (vispre's default); it is checked in onnxruntime at the input size and at
twice it.
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
                atol: float = 1e-4, dynamic_size: bool = False) -> Path:
    """Write ``path`` and, when onnxruntime is installed and ``check``, compare it with torch on a random
    batch of another batch size (an error if any feature differs by more than ``atol``); with ``dynamic_size``
    at two image sizes."""
    path = Path(path)
    module = PooledFeature(encoder.timm_model).eval()
    if dynamic_size:
        sizes = dynamic_sizes(input_size)
        _export_dynamic(module, path, sizes, max(opset, 18))
        if check:
            for size in sizes:
                error = check_onnx(module, path, size)
                if error is not None and error > atol:
                    raise RuntimeError(f"{path}: at {size[1]}x{size[2]} px onnxruntime features differ from torch by "
                                       f"{error:.2e} (> {atol})")
        return path
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


def dynamic_sizes(input_size) -> list[tuple[int, int, int]]:
    """The two input sizes a dynamic-size export is checked at: the export's own and twice it (a multiple of any
    patch size or stride that divides the first)."""
    channels, height, width = input_size
    return [(channels, height, width), (channels, 2 * height, 2 * width)]


def _export_dynamic(module: nn.Module, path: Path, sizes, opset: int) -> None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
    except ImportError as e:
        raise RuntimeError("--dynamic-size exports with torch.export, which needs onnxscript: "
                           "pip install 'vispre[onnx]'") from e
    with torch.no_grad():  # one input size only (a ViT built without dynamic_img_size): say so before exporting
        for size in sizes:
            try:
                module(torch.zeros(1, *size))
            except (RuntimeError, AssertionError, ValueError) as e:
                raise ValueError(f"--dynamic-size: the encoder does not run at {size[1]}x{size[2]} px ({e}); a ViT "
                                 "needs dynamic_img_size (model.kwargs) for free image sizes") from e
    free = torch.export.Dim.DYNAMIC
    example = torch.randn(2, *sizes[0])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), input_names=["pixel_values"], output_names=["features"],
                                    dynamic_shapes={"x": {0: free, 2: free, 3: free}}, opset_version=opset,
                                    dynamo=True, verbose=False)
    program.save(str(path))


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
