"""Image-text retrieval with a CLIP run's export (``kind: retrieval`` eval recipes): COCO captions' recall@K.

Every image and every caption is embedded (normalised; open_clip's loader, as in zero_shot.py) and ranked by
cosine similarity. image -> text recall@K: the share of images with one of their own captions among the K
nearest captions; text -> image recall@K: the share of captions whose image is among the K nearest images
(the protocol of CLIP's and ALIGN's COCO 5k tables). Data: a COCO captions json with its image folder, or
vispre caption shards (``vispre shards write coco``: KEY.jpg + KEY.json {"captions": [...]}).

    vispre eval eval/retrieval_coco.yaml --encoder EXPORT \\
        captions=/data/coco/annotations/captions_val2017.json images=/data/coco/val2017
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..utils.errors import UserError
from .probe_set import IndexedProbeSet
from .zero_shot import encode_images, encode_texts, format_scores, load_clip_export, resolve_device


@dataclass
class RetrievalRecipe:
    name: str = "retrieval"
    kind: str = "retrieval"
    format: str = "coco"  # coco: a captions json + image folder | shards: vispre caption shards
    captions: str = "???"  # coco: the captions json; shards: the shard spec
    images: str = ""  # coco: the folder the json's file_name entries are in
    limit: Optional[int] = None  # the first N images (by image id / shard order): quick runs
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    batch_size: int = 64
    workers: int = 2
    device: str = "auto"
    output_dir: Optional[str] = None  # default: ENCODER/eval/NAME


class CaptionSet(IndexedProbeSet):
    """Images with all their captions: ``item(i) -> (encoded bytes, i)`` (the label is the image's index, so
    the probe-set loader yields each batch's image indices); ``captions[i]`` lists image i's captions."""

    def __init__(self, items: list[tuple[str, object]], captions: list[list[str]], where: str):
        self.items, self.captions, self.source = items, captions, where  # items: (key, path or bytes)

    def __len__(self) -> int:
        return len(self.items)

    def item(self, index: int):
        from ..data.sources.base import read_bytes

        value = self.items[index][1]
        return (read_bytes(value) if isinstance(value, Path) else value), index

    def where(self, index: int) -> str:
        return f"{self.source} {self.items[index][0]}"

    def describe(self) -> str:
        return self.source

    def identity(self) -> dict:
        return {"source": self.source, "images": len(self.items), "captions": sum(map(len, self.captions))}


def coco_captions(json_path: str, image_dir: str, limit: int | None) -> CaptionSet:
    path, folder = Path(json_path), Path(image_dir)
    if not path.is_file():
        raise UserError(f"captions: no file {path}")
    if not folder.is_dir():
        raise UserError(f"images: no folder {folder} (the folder the captions json's file_name entries are in)")
    data = json.loads(path.read_text())
    grouped = defaultdict(list)
    for a in data.get("annotations", []):
        grouped[a["image_id"]].append(str(a["caption"]).strip())
    images = sorted((im for im in data.get("images", []) if grouped.get(im["id"])), key=lambda im: im["id"])
    images = images[:limit] if limit else images
    if not images:
        raise UserError(f"{path}: no image with a caption (images: id/file_name, annotations: image_id/caption)")
    return CaptionSet([(str(im["id"]), folder / im["file_name"]) for im in images],
                      [grouped[im["id"]] for im in images], str(path))


def shard_captions(spec: str, limit: int | None) -> CaptionSet:
    """Caption shards read once in order; images kept encoded in memory (evaluation sets are small)."""
    from ..data.skips import SkipCounter
    from ..data.tar import iter_shard
    from ..data.urls import open_url, parse_spec
    from .probe_data import IMAGE_EXTENSIONS

    items, captions, skips = [], [], SkipCounter()
    for url in (u for s in parse_spec(spec) for u in s.urls):
        for sample in iter_shard(url, open_url, skips):
            meta = json.loads(sample["json"]) if "json" in sample else {}
            found = [str(c) for c in meta.get("captions", [])]
            if not found and "txt" in sample:
                found = [line for line in sample["txt"].decode("utf-8").splitlines() if line.strip()]
            image = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
            if image is None or not found:
                continue
            items.append((sample["__key__"], image))
            captions.append(found)
            if limit and len(items) >= limit:
                return CaptionSet(items, captions, spec)
    if not items:
        raise UserError(f"captions: no sample with an image and captions in {spec} (vispre shards write coco)")
    return CaptionSet(items, captions, spec)


def recall_at_k(image_emb: torch.Tensor, text_emb: torch.Tensor, text_image: torch.Tensor, ks) -> dict:
    """{"i2t_r@K": %, "t2i_r@K": %}. ``text_image[j]`` is the image caption j belongs to."""
    sim = image_emb @ text_emb.T  # [N images, M captions]
    n, m = sim.shape
    scores = {}
    owns = text_image.view(1, -1) == torch.arange(n).view(-1, 1)  # [N, M]: caption j is image i's
    for k in ks:
        top = sim.topk(min(k, m), dim=1).indices  # each image's k nearest captions
        scores[f"i2t_r@{k}"] = 100.0 * owns.gather(1, top).any(dim=1).float().mean().item()
    for k in ks:
        top = sim.T.topk(min(k, n), dim=1).indices  # each caption's k nearest images
        scores[f"t2i_r@{k}"] = 100.0 * (top == text_image.view(-1, 1)).any(dim=1).float().mean().item()
    return scores


def retrieval(cfg: RetrievalRecipe, export: str | Path, out_dir: str | Path) -> dict:
    """Run the recipe on ``export``; writes and returns OUT/results.json's content."""
    from .report import RESULTS_FILE, write_json

    if cfg.format not in ("coco", "shards"):
        raise UserError(f"{cfg.name}: format must be coco (a captions json + images) or shards, got {cfg.format!r}")
    device = resolve_device(cfg.device)
    model, tokenizer, transform = load_clip_export(export, device)
    data = coco_captions(cfg.captions, cfg.images, cfg.limit) if cfg.format == "coco" else \
        shard_captions(cfg.captions, cfg.limit)
    images, order = encode_images(model, transform, data.batches(transform, cfg.batch_size, cfg.workers), device,
                                  len(data), desc="retrieval images")
    images = images[order.argsort()]  # rows in image order (the loader keeps it; this makes it certain)
    texts = [c for caps in data.captions for c in caps]
    text_image = torch.tensor([i for i, caps in enumerate(data.captions) for _ in caps])
    scores = recall_at_k(images, encode_texts(model, tokenizer, texts, device), text_image, cfg.ks)
    results = {"name": cfg.name, "kind": "retrieval", "scores": scores,
               "chance": {f"t2i_r@{k}": 100.0 * min(k, len(data)) / len(data) for k in cfg.ks},
               "protocol": {"task": "retrieval", "encoder": {"path": str(Path(export).resolve()), "random_init": False},
                            "data": data.identity(), "transform": transform.describe(),
                            "loader": "open_clip local-dir"}}
    results["table"] = format_scores(cfg.name, scores, f"{len(data)} images, {len(texts)} captions")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RESULTS_FILE, results)
    return results
