"""The open_clip folder of a CLIP run (``method.name: clip``, or ``ab`` with ``base: clip``): both towers.

Written beside the timm files of the same export, so one folder loads three ways::

    open_clip_config.json         {"model_cfg": ..., "preprocess_cfg": ...}: a CustomTextCLIP whose image tower
                                  is open_clip's TimmModel (trunk = the exported timm encoder, head = vispre's
                                  image projection) and whose text tower is vispre's open_clip TextTransformer
    open_clip_model.safetensors   visual.trunk.* (the encoder), visual.head.proj.weight, text.*, logit_scale

    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:DIR")
    tokenizer = open_clip.get_tokenizer("local-dir:DIR")

``encode_image`` / ``encode_text`` then give vispre's image and text embeddings (normalise them, as CLIP's
loss does, or pass ``normalize=True``); ``logit_scale`` is the trained temperature, clamped at the recipe's
``max_logit_scale`` as in training. open_clip's own preprocess resizes the shorter side to the export's input
size and centre-crops (crop_pct 1; the timm config keeps vispre's crop_pct).

open_clip 3.3.0 (the newest on PyPI) builds a timm trunk from its architecture name only. An encoder with
non-default timm arguments (a custom width, depth, patch size, or a ViT at another resolution than its
default) is written with ``vision_cfg.timm_model_kwargs``, which only later open_clip versions read; the
export records that in export.json (``open_clip.requires``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import timm
import torch
from open_clip.model import CLIPTextCfg
from safetensors.torch import save_file
from timm.models._hub import get_model_args  # timm exports it from this module only

from ..utils.io import write_json

log = logging.getLogger("vispre.export")

CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
# the text config fields always written; others only when they differ from open_clip's defaults
TEXT_KEYS = ("context_length", "vocab_size", "width", "heads", "layers")
# arguments the exported encoder was built with that do not change its weights or its pooled feature
IGNORED_ARGS = ("num_classes", "dynamic_img_size")


def clip_of(method):
    """The CLIP method inside ``method`` (itself, or AB's base), or None."""
    from ..methods.clip import CLIP

    for candidate in (method, getattr(method, "base", None)):
        if isinstance(candidate, CLIP):
            return candidate
    return None


def custom_timm_args(timm_model: torch.nn.Module, name: str, input_size) -> dict:
    """The arguments ``timm.create_model(name, **args)`` needs beyond the defaults to rebuild ``timm_model`` (its
    weights and pooled feature), for a loader that builds by name. Fixed-size trunks (ViTs) whose default size
    is not the export's ``input_size`` need ``img_size``."""
    ours = {k: v for k, v in get_model_args(timm_model, {}).items() if k not in IGNORED_ARGS}
    try:
        with torch.device("meta"):  # no memory, no init cost: only the recorded arguments are compared
            default_model = timm.create_model(name, pretrained=False, num_classes=0)
    except Exception:  # an architecture whose init does not run on the meta device
        default_model = timm.create_model(name, pretrained=False, num_classes=0)
    defaults = get_model_args(default_model, {})
    custom = {k: v for k, v in ours.items() if _plain(defaults.get(k)) != _plain(v)}
    default_size = tuple(default_model.pretrained_cfg.get("input_size", ())[1:])
    if getattr(timm_model, "patch_embed", None) is not None and default_size != tuple(input_size[1:]):
        custom["img_size"] = list(input_size[1:])
    if custom and get_model_args(timm_model, {}).get("dynamic_img_size"):
        custom["dynamic_img_size"] = True
    return {k: _plain(v) for k, v in custom.items()}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def text_config(cfg: CLIPTextCfg) -> dict:
    defaults = CLIPTextCfg()
    values = dataclasses.asdict(cfg)
    return {k: v for k, v in values.items() if k in TEXT_KEYS or v != getattr(defaults, k)}


def save_open_clip(method, which: str, directory: Path, data_config: dict) -> dict | None:
    """Write the open_clip files of ``method``'s ``which`` network into ``directory``; returns what export.json
    records (None: the method has no text tower)."""
    clip = clip_of(method)
    if clip is None:
        return None
    net = clip.net(which)
    encoder, proj, text = net["encoder"], net["proj"], net["text"]
    size = list(data_config["input_size"][1:])
    kwargs = custom_timm_args(encoder.timm_model, encoder.name, data_config["input_size"])
    vision_cfg = {"image_size": size[0] if size[0] == size[1] else size, "timm_model_name": encoder.name,
                  "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "linear",
                  "timm_proj_bias": proj.bias is not None, "timm_drop": 0.0}
    if kwargs:
        vision_cfg["timm_model_kwargs"] = kwargs
    model_cfg = {"embed_dim": clip.cfg.embed_dim, "custom_text": True, "quick_gelu": False,
                 "vision_cfg": vision_cfg, "text_cfg": text_config(text.text_cfg)}
    preprocess_cfg = {"size": vision_cfg["image_size"], "mean": list(data_config["mean"]),
                      "std": list(data_config["std"]), "interpolation": data_config["interpolation"],
                      "resize_mode": "shortest"}
    write_json(directory / CONFIG, {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})

    scale = net["logit_scale"].value.detach().float().clamp(max=math.log(clip.cfg.max_logit_scale))
    state = {f"visual.trunk.{k}": v for k, v in encoder.timm_model.state_dict().items()}
    state.update({f"visual.head.proj.{k}": v for k, v in proj.state_dict().items()})
    state.update({f"text.{k}": v for k, v in text.transformer.state_dict().items()})
    state["logit_scale"] = scale.reshape(())
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(directory / WEIGHTS),
              metadata={"format": "pt"})
    requires = "open_clip_torch > 3.3.0 (vision_cfg.timm_model_kwargs)" if kwargs else "open_clip_torch >= 2.24"
    if kwargs:
        log.warning("open_clip export: the encoder has non-default timm arguments %s, which open_clip 3.3.0 cannot "
                    "pass to timm; open_clip versions after it read them (vision_cfg.timm_model_kwargs)", kwargs)
    return {"config": CONFIG, "weights": WEIGHTS, "embed_dim": clip.cfg.embed_dim, "text": clip.cfg.text,
            "timm_model_kwargs": kwargs, "requires": requires}
