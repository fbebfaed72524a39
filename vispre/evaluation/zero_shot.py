"""Zero-shot classification with a CLIP run's export (``kind: zero_shot`` eval recipes).

The export's open_clip folder (vispre.export.open_clip_export) is loaded the way an open_clip user loads
it, ``open_clip.create_model_and_transforms("local-dir:EXPORT")``; each class gets CLIP's prompt ensemble
(Radford et al. 2021, sec. 3.1.4): every template filled with the class name, the normalised text embeddings
averaged and normalised again. An image's class is the nearest class embedding (cosine); top-1 / top-5
accuracy in percent. Any labelled probe set works (shards with classes.json, class folders, CIFAR, HF).

    vispre eval eval/zero_shot_cifar10.yaml --encoder EXPORT data.path=/data/cifar

Image-text retrieval (COCO captions) is in retrieval.py and shares the loading and encoding below.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..utils.errors import UserError
from ..utils.progress import progress
from .probe_recipe import ProbeSetConfig

log = logging.getLogger("vispre.evaluation")

# CLIP's single default prompt; recipes list the ensembles (CLIP's CIFAR ones), or name open_clip's ImageNet
# metadata: classnames_file: open_clip:imagenet (its 1000 names), templates: [open_clip:imagenet] (CLIP's 80)
DEFAULT_TEMPLATES = ["a photo of a {}."]
OPEN_CLIP_IMAGENET = "open_clip:imagenet"


@dataclass
class ZeroShotRecipe:
    name: str = "zero_shot"
    kind: str = "zero_shot"
    data: ProbeSetConfig = field(default_factory=ProbeSetConfig)  # the labelled images (any probe-set kind)
    # class names in label order; empty: the data's own (class folder names, a HF ClassLabel, the shards'
    # classes.json), or classnames_file
    classnames: list[str] = field(default_factory=list)
    classnames_file: Optional[str] = None  # one name per line, in label order (or a JSON list); open_clip:imagenet
    # "{}" (or "{name}") is where the name goes; [open_clip:imagenet]: CLIP's 80 ImageNet templates
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    topk: list[int] = field(default_factory=lambda: [1, 5])
    batch_size: int = 64
    workers: int = 2
    device: str = "auto"  # auto (cuda when available) | cpu | cuda ...
    seed: int = 0  # data.limit's draw
    output_dir: Optional[str] = None  # default: ENCODER/eval/NAME


# -- the export as open_clip loads it ------------------------------------------------------------------------
def load_clip_export(export: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer, EvalTransform) of an open_clip-format export; the transform is open_clip's own eval
    preprocess (shorter side to the input size, centre crop, its mean / std) on vispre's uint8 loader."""
    import open_clip

    from .transform import EvalTransform

    export = Path(export)
    if not (export / "open_clip_config.json").is_file():
        raise UserError(f"{export}: no open_clip_config.json; zero-shot and retrieval need the export of a CLIP "
                        "run (method.name=clip, or ab with method.base=clip), which has both towers")
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{export}", device=torch.device(device))
    tokenizer = open_clip.get_tokenizer(f"local-dir:{export}")
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", 224)
    size = size if isinstance(size, int) else max(size)
    transform = EvalTransform(size, crop_pct=1.0, interpolation=cfg.get("interpolation", "bicubic"),
                              mean=cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)),
                              std=cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
    return model.eval(), tokenizer, transform


def resolve_device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], device, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings [len(texts), D]."""
    out = [model.encode_text(tokenizer(texts[i:i + batch_size]).to(device), normalize=True).float().cpu()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def encode_images(model, transform, batches, device, total: int | None = None, desc: str = "images"):
    """(L2-normalised image embeddings [N, D], targets) over ``batches`` of (uint8 images, targets)."""
    embeddings, targets = [], []
    with progress(total=total, desc=desc, unit="img") as bar:
        for images, target in batches:
            embeddings.append(model.encode_image(transform.normalize(images.to(device)), normalize=True).float().cpu())
            targets.append(target)
            bar.update(len(images))
    return torch.cat(embeddings), torch.cat(targets)


# -- the metric ----------------------------------------------------------------------------------------------
def fill(template, name: str) -> str:
    """A template string (``{}`` or ``{name}``), or one of open_clip's template functions."""
    return template(name) if callable(template) else template.format(name, name=name)


def templates_of(cfg: ZeroShotRecipe) -> list:
    if list(cfg.templates) == [OPEN_CLIP_IMAGENET]:
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return list(OPENAI_IMAGENET_TEMPLATES)
    return list(cfg.templates)


def class_embeddings(encode, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """CLIP's prompt ensemble: for each class, the mean of its normalised template embeddings, normalised
    [C, D]. ``encode(texts) -> [len(texts), D]`` embeds (and may or may not normalise) a list of texts."""
    texts = [fill(t, name) for name in classnames for t in templates]
    emb = torch.nn.functional.normalize(encode(texts).float(), dim=-1).view(len(classnames), len(templates), -1)
    return torch.nn.functional.normalize(emb.mean(dim=1), dim=-1)


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks) -> dict[str, float]:
    """{"top1": %, "top5": %}: the share of rows whose target is among the k highest logits (k capped at the
    number of classes)."""
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = ranked == targets.view(-1, 1)
    return {f"top{k}": 100.0 * hit[:, :k].any(dim=1).float().mean().item() for k in ks}


# -- the class names -----------------------------------------------------------------------------------------
def classnames_of(cfg: ZeroShotRecipe, source) -> list[str]:
    """The recipe's names, else its file's, else the data's own, else classes.json beside the shards."""
    if cfg.classnames:
        return [str(n) for n in cfg.classnames]
    if cfg.classnames_file == OPEN_CLIP_IMAGENET:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    if cfg.classnames_file:
        path = Path(cfg.classnames_file)
        if not path.is_file():
            raise UserError(f"classnames_file: no file {path}")
        text = path.read_text(encoding="utf-8")
        return [str(n) for n in json.loads(text)] if text.lstrip().startswith("[") else \
            [line.strip() for line in text.splitlines() if line.strip()]
    if getattr(source, "classes", None):
        return list(source.classes)
    if cfg.data.kind == "shards":
        spec = Path(cfg.data.path.split("::")[0])
        for folder in (spec, spec.parent):
            if (folder / "classes.json").is_file():
                return [str(n) for n in json.loads((folder / "classes.json").read_text())]
    raise UserError(f"{cfg.name}: the data has no class names; give classnames: [...] or classnames_file: FILE "
                    "(one name per line, in label order)")


def check_recipe(cfg: ZeroShotRecipe) -> None:
    from ..utils.checks import Checks

    c = Checks()
    if not cfg.templates or (list(cfg.templates) != [OPEN_CLIP_IMAGENET] and any("{" not in t for t in cfg.templates)):
        c.fail("templates", "every template needs {} (or {name}) where the class name goes")
    for k in cfg.topk:
        c.at_least("topk", k, 1)
    c.at_least("batch_size", cfg.batch_size, 1)
    c.at_least("workers", cfg.workers, 0)
    c.raise_if_any(cfg.name)


def zero_shot(cfg: ZeroShotRecipe, export: str | Path, out_dir: str | Path) -> dict:
    """Run the recipe on ``export``; writes and returns OUT/results.json's content."""
    from .probe_data import build_probe_set
    from .report import RESULTS_FILE, write_json

    check_recipe(cfg)
    device = resolve_device(cfg.device)
    model, tokenizer, transform = load_clip_export(export, device)
    source = build_probe_set(cfg.data, "single", None, cfg.seed)
    names = classnames_of(cfg, source)
    templates = templates_of(cfg)
    classifier = class_embeddings(lambda texts: encode_texts(model, tokenizer, texts, device), names, templates)
    total = source.count() if hasattr(source, "count") else None
    images, targets = encode_images(model, transform, source.batches(transform, cfg.batch_size, cfg.workers),
                                    device, total, desc="zero-shot images")
    if int(targets.max()) >= len(names) or int(targets.min()) < 0:
        raise UserError(f"{cfg.name}: a label ({int(targets.max())}) has no class name ({len(names)} names)")
    scores = topk_accuracy(images @ classifier.T, targets, cfg.topk)
    counts = torch.bincount(targets, minlength=len(names)).float()
    results = {"name": cfg.name, "kind": "zero_shot", "scores": scores,
               "chance": {"top1": 100.0 * counts.max().item() / counts.sum().item()},
               "protocol": {"task": "zero_shot", "encoder": {"path": str(Path(export).resolve()), "random_init": False},
                            "data": source.identity() if hasattr(source, "identity") else {}, "samples": len(targets),
                            "classes": len(names), "classnames": names, "templates": [fill(t, "{}") for t in templates],
                            "transform": transform.describe(), "loader": "open_clip local-dir"}}
    results["table"] = format_scores(cfg.name, scores, f"{len(targets)} images, {len(names)} classes, "
                                     f"{len(templates)} templates")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RESULTS_FILE, results)
    return results


def format_scores(name: str, scores: dict, what: str) -> str:
    return f"{name} ({what}): " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
