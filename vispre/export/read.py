"""Reading an export folder back: the encoder (through timm's own ``local-dir:`` loader) and the extra
modules written beside it. Nothing here imports the training side (methods, pretraining): evaluation and
RL read exports through this file only."""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch

from ..models import Encoder
from ..models import icvf as _icvf  # noqa: F401  (registers ICVF's exportable builders: phi, value)
from ..models.exportable import ExportedModule, ExportSpec
from ..utils.errors import UserError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


class ExportError(UserError):
    """An export folder whose config.json and weights do not agree, or a file that cannot be read."""


def _shape(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def read_config(path: Path) -> dict:
    config_file = path / CONFIG
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{config_file}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ExportError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
    if not isinstance(config.get("architecture"), str):
        raise ExportError(f"{config_file}: architecture must be a timm model name, got {config.get('architecture')!r}")
    if not isinstance(config.get("model_args", {}), dict):
        raise ExportError(f"{config_file}: model_args must be a JSON object, got {config['model_args']!r}")
    return config


def check_export(path: str | Path, config: dict | None = None, weights: bool = True) -> None:
    """config.json against the weights, before loading them: the architecture config.json describes (built on
    the meta device: no memory, no init) must have exactly the file's tensor names and shapes, and its
    ``num_features``. timm itself would resample a patch-8 embedding into a patch-16 config without a word,
    and nothing reads ``num_features`` against the model. Errors name the file and the field."""
    path = Path(path)
    config_file = path / CONFIG
    config = read_config(path) if config is None else config
    described = f"architecture {config['architecture']!r} with model_args {config.get('model_args', {})}"
    try:
        with torch.device("meta"):
            model = timm.create_model(f"local-dir:{path}", pretrained=False)
    except Exception as e:
        raise ExportError(f"{config_file}: {described} does not build a timm model ({str(e).splitlines()[0]})") from e
    if "num_features" in config and config["num_features"] != model.num_features:
        raise ExportError(f"{config_file}: num_features is {config['num_features']!r} but {described} gives "
                          f"{model.num_features} features")
    if not weights:
        return
    from safetensors import safe_open

    file = path / WEIGHTS
    try:
        with safe_open(str(file), "pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors' errors (a truncated or corrupt header) do not name the file
        raise ExportError(f"{file}: cannot read the weights ({str(e).splitlines()[0]})") from e
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = [f"{k} is {_shape(found[k])} in the file, {_shape(v)} by config.json" for k, v in expected.items()
                if k in found and found[k] != v]
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if problems:
        raise ExportError(f"{file} does not match {config_file} ({described}): " + "; ".join(problems[:4]))


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
    config = read_config(path)
    check_export(path, config, weights=not random_init)
    model = timm.create_model(f"local-dir:{path}", pretrained=not random_init)
    if not random_init:
        bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ExportError(f"{path / WEIGHTS}: NaN or inf in {len(bad)} tensors ({', '.join(bad[:5])})")
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
