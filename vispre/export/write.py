"""A pretraining checkpoint -> an encoder folder that plain timm loads, without vispre installed.

The folder holds what ``timm.create_model("local-dir:DIR", pretrained=True)`` reads (a timm with the
``local-dir:`` source; on older ones ``timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=
dict(file=DIR + "/model.safetensors"), **model_args)`` with config.json's architecture and model_args):

    config.json         architecture, num_classes=0, num_features, global_pool, model_args and a
                        pretrained_cfg with the input size, mean/std, interpolation and crop we trained with
    model.safetensors   the encoder's timm state dict only (no heads, no optimizer)
    README.md           a model card: recipe, method, data, steps, which copy, scores (vispre.model_card)
    export.json         vispre's provenance of the export (recipe, step, copy, extra modules)
    scores.json         scores added by ``vispre eval`` (``append_scores``)
    NAME.safetensors    extra modules a method chooses to export, each with NAME.json (see ``export``)
    open_clip_config.json + open_clip_model.safetensors
                        CLIP runs (and AB with base clip) only: both towers, as open_clip's
                        ``create_model_and_transforms("local-dir:DIR")`` loads them (vispre.export.open_clip_export)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from omegaconf import OmegaConf
from safetensors.torch import save_file, save_model
from timm.models._hub import save_config_for_hf  # timm exports it from this module only

from .. import __version__
from ..data import formats
from ..methods import Method, build_method
from ..models import Encoder, build_encoder
from ..models.exportable import ExportedModule
from ..pretrain.checkpoint import find_checkpoint, load_checkpoint, nonfinite_tensors, read_state
from ..pretrain.recipe import PretrainConfig, recipe_from_values
from ..utils.errors import UserError
from ..utils.io import swap_in_dir, write_json
from ..utils.typed_config import ConfigError
from ..views.photometric import IMAGENET_MEAN, IMAGENET_STD
from .card import (  # noqa: F401  (append_scores: public API)
    PROVENANCE,
    SCORES,
    append_scores,
    public,
    write_card,
    write_provenance,
)
from .open_clip_export import save_open_clip
from .read import CONFIG, WEIGHTS, load_encoder, load_module  # noqa: F401  (public API)

log = logging.getLogger("vispre.export")

WHICH = ("target", "online")
# file stems extra modules may not take: ours, and the weight files timm's local-dir loader looks for
RESERVED = ("model", "config", "export", "scores", "README", "pytorch_model", "open_clip_model",
            "open_clip_pytorch_model")
# pretrained_cfg keys that describe how to feed the model; timm's registry cfg also carries the
# *release's* tag, licence, paper and URLs, which do not describe our weights and are dropped.
INPUT_KEYS = ("input_size", "fixed_input_size", "min_input_size", "interpolation", "crop_pct", "crop_mode",
              "mean", "std", "num_classes", "pool_size", "first_conv", "classifier", "custom_load")


# -- from a run to a method with its weights ---------------------------------------------------------
def find_export_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory as given, or the newest checkpoint of a run (``RUN`` or ``RUN/checkpoints``)."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    for directory in (path / "checkpoints", path):
        found = find_checkpoint(directory) if directory.is_dir() else None
        if found is not None:
            return found
    raise FileNotFoundError(f"{path} is neither a vispre checkpoint (a directory with state.json) nor a run "
                            f"with checkpoints under {path / 'checkpoints'}")


def load_method(checkpoint: str | Path) -> tuple[Method, PretrainConfig, dict]:
    """Rebuild the method from the checkpoint's own resolved recipe and load its weights (strict)."""
    checkpoint = Path(checkpoint)
    state = read_state(checkpoint)  # its fields checked, errors naming state.json
    if "config" not in state:
        raise ValueError(f"{checkpoint / 'state.json'} has no 'config': cannot rebuild the model it holds")
    try:
        cfg = recipe_from_values(OmegaConf.to_container(OmegaConf.create(state["config"])))
    except ConfigError as e:
        raise ConfigError(f"{checkpoint / 'state.json'} config: {e}") from e
    # model.init (a foreign initialisation) is not applied: the checkpoint's weights replace it anyway
    method = build_method(cfg.method, build_encoder(cfg.model.name, **cfg.model.kwargs))
    load_checkpoint(checkpoint, method)
    return method.eval(), cfg, state


def input_config(cfg: PretrainConfig, data_format: str | None = None) -> dict:
    """The preprocessing the encoder saw in training, in timm's pretrained_cfg terms.

    Size: the largest (global) crop, a fixed eval size, or the side of clip / trajectory frames. vispre normalises
    with ImageNet mean/std (vispre.photometric) and resizes with torchvision's bilinear antialias.
    """
    data = cfg.data
    if (data_format or data.format) in formats.FRAME_FORMATS:  # video frames / offline-RL observations, whole frames
        size, crop_pct = data.frame_size, 1.0
    else:
        size, crop_pct = data.eval_size or max(v.size for v in data.views), data.crop_pct
    return {"input_size": (3, size, size), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
            "interpolation": "bilinear", "crop_pct": crop_pct, "crop_mode": "center"}


# -- the folder ----------------------------------------------------------------------------------------
def save_encoder(encoder: Encoder, directory: Path, data_config: dict) -> None:
    """config.json + model.safetensors as timm's own ``save_for_hf`` writes them; pretrained_cfg is then
    cut to the input keys."""
    config_file = directory / CONFIG
    save_config_for_hf(encoder.timm_model, str(config_file), data_config=data_config)
    config = json.loads(config_file.read_text())
    config["pretrained_cfg"] = {k: v for k, v in config["pretrained_cfg"].items() if k in INPUT_KEYS}
    # num_classes=0 stays at the top level only: transformers' TimmWrapperModel passes num_classes=0 itself and
    # fails on a second one in model_args ("got multiple values for keyword argument 'num_classes'")
    config.get("model_args", {}).pop("num_classes", None)
    config_file.write_text(json.dumps(config, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.timm_model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS), metadata={"format": "pt"})


def save_modules(modules: dict[str, ExportedModule], directory: Path, which: str) -> dict:
    """NAME.safetensors (weights) + NAME.json (the spec that rebuilds it, see vispre.models.exportable) per
    extra module; returns {NAME: description}."""
    described = {}
    for name, exported in modules.items():
        if not name.isidentifier() or name in RESERVED:
            raise ValueError(f"export_modules: module name {name!r} must be an identifier and not a reserved name")
        module = exported.module
        save_model(module, str(directory / f"{name}.safetensors"))
        described[name] = {
            **exported.spec.to_json(), "class": f"{type(module).__module__}.{type(module).__qualname__}",
            "which": which, "parameters": sum(p.numel() for p in module.parameters()),
            "tensors": {k: list(v.shape) for k, v in module.state_dict().items()}}
        write_json(directory / f"{name}.json", described[name])
    return described


def export(run_or_checkpoint: str | Path, out_dir: str | Path, which: str = "target", scores: dict | None = None,
           onnx: bool = False, dynamic_size: bool = False, license: str | None = None,
           datasets: list[str] | None = None) -> Path:
    """Write the encoder of a run's newest checkpoint (or of a given checkpoint) to ``out_dir``.

    ``which``: "target" (the EMA target copy, what DINO-style papers evaluate) or "online" (the
    student). ``scores``: {name: {"scores": {...}, "protocol": {...}}} to put on the card at once.
    ``onnx``: also write model.onnx (the pooled feature; see vispre.export_onnx), with ``dynamic_size`` any
    image height and width (checked in onnxruntime at two sizes). ``license`` (a Hub licence id such as
    "apache-2.0") and ``datasets`` (Hub dataset ids) go on the model card's metadata.

    Extra modules: a method's ``export_modules(which) -> dict[str, ExportedModule]`` (e.g. ICVF's phi and
    its whole value function); each is written as ``NAME.safetensors`` (its state dict) and ``NAME.json``
    (the spec that rebuilds it, class, which copy, parameter count, tensor shapes), and listed on the model
    card. Read one back with ``vispre.export.read.load_exported_module(out_dir, NAME)``.

    The folder is assembled under a temporary name and renamed into place; an existing export at
    ``out_dir`` is replaced (its scores belonged to other weights), anything else there is an error.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    out = Path(out_dir)
    _check_target(out)
    checkpoint = find_export_checkpoint(run_or_checkpoint)
    method, cfg, state = load_method(checkpoint)
    bad = nonfinite_tensors(method.state_dict())
    if bad:  # a diverged run's weights: exporting them would score a NaN encoder
        raise UserError(f"{checkpoint / 'model.safetensors'} holds NaN or inf in {len(bad)} tensors "
                        f"({', '.join(bad[:5])}): refusing to export it; export an earlier checkpoint")
    encoder = method.export_encoder(which)
    data_format = method.data_format(cfg.data)
    data_config = input_config(cfg, data_format)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_encoder(encoder, tmp, data_config)
        modules = save_modules(method.export_modules(which), tmp, which)
        open_clip = save_open_clip(method, which, tmp, data_config)  # CLIP runs: both towers, for open_clip
        if onnx:
            from .onnx_export import export_onnx

            export_onnx(encoder, tmp / "model.onnx", data_config["input_size"], dynamic_size=dynamic_size)
        provenance = {
            "vispre_version": __version__, "checkpoint": str(checkpoint.resolve()), "step": state.get("step"),
            "which": which, "recipe": cfg.name, "method": cfg.method.name,
            "base": cfg.method.base if cfg.method.name == "ab" else None, "architecture": encoder.name,
            "model_args": json.loads(json.dumps(encoder.model_args)), "steps_planned": cfg.train.steps,
            "data": {"spec": cfg.data.spec, "format": data_format}, "input": data_config,
            "modules": modules, "onnx": onnx, "onnx_dynamic_size": bool(onnx and dynamic_size),
            "open_clip": open_clip, "license": license, "datasets": list(datasets or []),
            "recipe_yaml": state["config"]}
        write_provenance(tmp, provenance)  # export.json names no local path; .local.json keeps them
        if scores:
            (tmp / SCORES).write_text(json.dumps(public(scores), indent=1))
        write_card(tmp)
        swap_in_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported the %s encoder of %s to %s", which, checkpoint, out)
    return out


def _check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / PROVENANCE).exists())):
        raise FileExistsError(f"{out} exists and is not a vispre export: choose an empty or new directory")


