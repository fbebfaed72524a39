"""Initialise an encoder from another project's checkpoint: timm, open_clip, DINO-style, vispre.

A checkpoint file (``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with
``torch.load(weights_only=True)``: nothing is unpickled) may nest its state dicts
(``{"teacher": {...}, "student": {...}}``, ``{"state_dict": ..., "state_dict_ema": ...}``); nested
dicts are flattened to dotted keys. The encoder's weights are the keys under one prefix, e.g.

    open_clip with a timm trunk   visual.trunk.
    DINO / DINOv2 checkpoints     teacher.backbone.  student.module.backbone.  backbone.  module.
    vispre checkpoints            target.module.encoder.timm_model.  online.encoder.timm_model.
                                  (before the online/target names: teacher.module... / student...)
    timm                          (none), or state_dict_ema. / state_dict.

Given no ``prefix``, the one under which most keys name a parameter of the model is taken; a tie
goes to the EMA / teacher copy. Keys outside the prefix (heads of the other method, text towers,
optimizer state) are ignored; a classifier head under it is dropped when the encoder has none.
timm's own ``checkpoint_filter_fn`` of the architecture then converts foreign layouts (DINOv2's
original keys, ...) and resamples ViT position / patch embeddings to the encoder's grid.

Public weights by name (``resolve_init``), where the environment allows downloads (and from the Hugging
Face cache without them)::

    model.init=hf-hub:timm/vit_small_patch16_224.augreg_in21k   a Hub repo (@REVISION optional): its
                                  model.safetensors, open_clip_model.safetensors or pytorch_model.bin
    model.init=timm:vit_small_patch16_224.augreg_in21k          timm's registered weights of a name (.TAG)
    model.init=timm                                             model.name's default pretrained weights

Offline (``HF_HUB_OFFLINE=1``) a file that is not in the cache is a one-line error, and nothing is fetched.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

log = logging.getLogger("vispre.models.init_weights")

EMA_WORDS = ("teacher", "ema", "target")
HUB_PREFIX, TIMM_PREFIX = "hf-hub:", "timm"
# the weight files a Hub repo may hold, in the order they are tried (timm's, open_clip's, older ones)
HUB_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def is_named_init(init: str) -> bool:
    """Whether ``model.init`` names public weights (``hf-hub:...``, ``timm``, ``timm:...``) rather than a file."""
    return init.startswith(HUB_PREFIX) or init == TIMM_PREFIX or init.startswith(TIMM_PREFIX + ":")


def resolve_init(init: str, model_name: str | None = None) -> Path:
    """The local checkpoint file of ``model.init``: a path as given, or public weights by name (see the module
    docstring) downloaded into (or read from) the Hugging Face cache. Raises UserError with one line when the
    weights cannot be had (offline and not cached, no such repo or tag)."""
    if not is_named_init(init):
        return Path(init)
    from ..utils.errors import UserError

    if init.startswith(HUB_PREFIX):
        repo, _, revision = init[len(HUB_PREFIX):].partition("@")
        return _hub_file(init, repo, revision or None, HUB_FILES)
    import timm

    name = init[len(TIMM_PREFIX) + 1:] or model_name
    if not name:
        raise UserError("model.init=timm: no model name (model.name) to take timm's pretrained weights of")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise UserError(f"model.init={init}: timm has no Hub weights registered for {name!r} "
                        "(timm.list_pretrained() lists them); give a checkpoint file instead")
    repo, _, revision = cfg.hf_hub_id.partition("@")
    first = (cfg.hf_hub_filename,) if getattr(cfg, "hf_hub_filename", None) else ()
    return _hub_file(init, repo, revision or None, first + HUB_FILES)


def _hub_file(init: str, repo: str, revision: str | None, filenames) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    from ..utils.errors import UserError

    if not repo or repo.count("/") != 1:
        raise UserError(f"model.init={init}: a Hub repo is ORG/NAME (hf-hub:timm/vit_small_patch16_224.augreg_in21k)")
    offline = False
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo, filename, revision=revision))
        except LocalEntryNotFoundError:  # not cached, and downloads are off or the Hub cannot be reached
            offline = True
        except RepositoryNotFoundError as e:
            raise UserError(f"model.init={init}: no Hub model repo {repo!r} (or it is private or gated: "
                            f"log in with 'hf auth login')") from e
        except EntryNotFoundError:  # the repo has no such file: try the next name
            continue
    if offline:
        why = "downloads are off (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise UserError(f"model.init={init}: {repo} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                        f"{why}; run once where downloads work, or set model.init to a local checkpoint file")
    raise UserError(f"model.init={init}: {repo} holds none of {', '.join(filenames)}")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors in a checkpoint file, nested dicts flattened to dotted keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.init: {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickles of arbitrary objects are refused by weights_only=True
        raise ValueError(f"model.init: {path} cannot be read with torch.load(weights_only=True) ({e}). "
                         "Save its state dict alone (or as .safetensors) from a trusted environment.") from e
    return dict(_flatten(data, ""))


def _flatten(data, prefix: str):
    if isinstance(data, torch.Tensor):
        yield prefix[:-1], data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from _flatten(value, f"{prefix}{key}.")
    # numbers, strings, lists (epochs, args, optimizer param groups) are not weights


def detect_prefix(keys, model_keys: set[str]) -> str | None:
    """The prefix P such that most ``P + model_key`` are in ``keys`` (None: no key matches at all)."""
    counts = Counter()
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts)):  # the shortest prefix that leaves a model key
            if ".".join(parts[i:]) in model_keys:
                counts["".join(p + "." for p in parts[:i])] += 1
                break
    if not counts:
        return None
    best = max(counts.values())
    tied = [p for p, c in counts.items() if c == best]
    return min(tied, key=lambda p: (not any(w in p.lower() for w in EMA_WORDS), len(p), p))


def encoder_state_dict(state: dict[str, torch.Tensor], model: nn.Module, prefix: str | None = None,
                       source: str = "state dict") -> tuple[dict[str, torch.Tensor], str]:
    """The keys of ``state`` that belong to ``model`` (a timm model), converted; and the prefix used."""
    if prefix is None:
        prefix = detect_prefix(state, set(model.state_dict()))
        if prefix is None:
            raise ValueError(f"model.init: no key of {source} names a parameter of {type(model).__name__} under any "
                           f"prefix (first keys: {sorted(state)[:5]}); set model.init_prefix")
    selected = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not selected:
        raise ValueError(f"model.init: no key of {source} starts with prefix {prefix!r} "
                       f"(first keys: {sorted(state)[:5]})")
    # timm's converter for this architecture: foreign layouts, position / patch embedding resampling
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        selected = filter_fn(selected, model)
    model_keys = set(model.state_dict())
    heads = _classifier_names(model)
    dropped = [k for k in selected if k not in model_keys and k.split(".")[0] in heads]
    for k in dropped:
        del selected[k]
    if dropped:
        log.info("model.init: dropped classifier weights %s (the encoder has no classifier)", dropped)
    return selected, prefix


def _classifier_names(model: nn.Module) -> set[str]:
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return {"head", "fc", *(n.split(".")[0] for n in names)} if getattr(model, "num_classes", 0) == 0 else set()


def load_init(model: nn.Module, path: str | Path, prefix: str | None = None) -> str:
    """Load the encoder weights of checkpoint ``path`` into ``model`` (a timm model), all or nothing.

    Every parameter and buffer of the model must be found with the right shape; a clear error names
    the file, the prefix and the first missing / unexpected / mis-shaped keys. Returns the prefix.
    """
    state, prefix = encoder_state_dict(read_state_dict(path), model, prefix, source=str(path))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in set(state) & set(expected)
                    if state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        problems = [f"{len(v)} {what} {v[:5]}{' ...' if len(v) > 5 else ''}"
                    for what, v in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("shape mismatches (file vs model)", shapes)) if v]
        raise ValueError(f"model.init: {path} (prefix {prefix!r}) does not fit {type(model).__name__}: "
                       + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    log.info("model.init: loaded %d tensors from %s (prefix %r)", len(state), path, prefix)
    return prefix


def init_encoder(encoder, path: str | Path, prefix: str | None = None) -> str:
    """``load_init`` into a vispre Encoder's timm model (``model.init`` / ``model.init_prefix``): a checkpoint
    file, or public weights by name (``resolve_init``: ``hf-hub:ORG/NAME``, ``timm``, ``timm:NAME.TAG``)."""
    return load_init(encoder.timm_model, resolve_init(str(path), encoder.name), prefix)
