"""Reading an export folder back: the encoder (through timm's own ``local-dir:`` loader) and the extra
modules written beside it. Nothing here imports the training side (methods, pretraining): evaluation and
RL read exports through this file only."""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch

from ..models import Encoder
from ..models.exportable import ExportedModule, ExportSpec

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def load_encoder(path: str | Path, random_init: bool = False) -> Encoder:
    """An exported folder as a vispre Encoder (in eval mode), through timm's own ``local-dir:`` loader.

    ``random_init=True`` builds the same architecture from config.json without loading the weights
    (the "random encoder" baseline; seed with ``torch.manual_seed`` first for a fixed draw).
    """
    path = Path(path)
    config_file = path / CONFIG
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not an exported encoder: no {CONFIG} (make one with 'vispre export')")
    if not random_init and not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"{path} has no {WEIGHTS}: cannot load the exported weights")
    config = json.loads(config_file.read_text())
    model = timm.create_model(f"local-dir:{path}", pretrained=not random_init)
    # Encoder's model_args are the rebuild recipe without num_classes (Encoder always passes 0)
    model_args = {k: v for k, v in config.get("model_args", {}).items() if k != "num_classes"}
    pretrained_cfg = dict(model.pretrained_cfg)  # what the export says, not what Encoder would infer
    encoder = Encoder(config["architecture"], timm_model=model, **model_args)
    encoder.model_args = model_args  # Encoder's own dynamic_img_size argument would otherwise drop out
    model.pretrained_cfg = pretrained_cfg
    return encoder.eval()


def load_module(path: str | Path, name: str, module: torch.nn.Module) -> torch.nn.Module:
    """Load an extra exported module (``NAME.safetensors``) into ``module`` built by the caller (strict)."""
    from safetensors.torch import load_model

    file = Path(path) / f"{name}.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist: the export has no module {name!r}")
    missing, unexpected = load_model(module, str(file), strict=False)
    if missing or unexpected:
        raise KeyError(f"{file} does not match {type(module).__name__}: missing {sorted(missing)[:10]}, "
                       f"unexpected {sorted(unexpected)[:10]}")
    return module


def load_exported_module(path: str | Path, name: str, random_init: bool = False) -> ExportedModule:
    """An extra module of an export, rebuilt from ``NAME.json``'s spec and loaded from ``NAME.safetensors``
    (``random_init``: left as built, the same architecture's random draw). ``.spec.reads`` says which output of
    ``Encoder(x)`` it reads, ``.spec.out_dim`` its width."""
    path = Path(path)
    described = path / f"{name}.json"
    if not described.is_file():
        raise FileNotFoundError(f"{described} does not exist: the export at {path} has no module {name!r}")
    try:
        data = json.loads(described.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{described}: not valid JSON ({e})") from e
    spec = ExportSpec.from_json({k: data[k] for k in ("builder", "kwargs", "reads", "out_dim") if k in data},
                                str(described))
    module = spec.build()
    if not random_init:
        module = load_module(path, name, module)
    return ExportedModule(module.eval(), spec)
