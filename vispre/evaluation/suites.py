"""Probe sets for the AB paper's suites that are not plain classification folders: Clevr/Count and
Clevr/Distance (VTAB's definitions on the CLEVR v1.0 release), COCO small-object classification
given a box, and EpicKitchens VISOR object classification given a box (the box of a mask).

* ``clevr``: ``ROOT/images/{train,val}/CLEVR_{split}_NNNNNN.png`` and
  ``ROOT/scenes/CLEVR_{split}_scenes.json`` ({"scenes": [{"image_filename", "objects": [{"pixel_coords":
  [x, y, depth]}, ...]}]}), as the CLEVR_v1.0 zip unpacks. ``clevr_task: count``: the number of objects
  minus 3 (3-10 objects, 8 classes); ``distance``: the depth of the closest object binned at 8, 8.5,
  9, 9.5 and 10 (6 classes), as VTAB's clevr(task="count_all") / (task="closest_object_distance").
* ``coco_boxes``: ``annotations`` is an instances json (instances_val2017.json), ``path`` its image
  folder (val2017/). One sample per non-crowd box whose area is below ``max_area`` (COCO's "small",
  32 x 32), the 80 categories in id order; the image is cropped to a square ``context`` times the
  box's longer side around its centre (edge-padded), so the probe sees the object and some context.
* ``visor``: ``path`` is the VISOR GroundTruth-SparseAnnotations folder: ``annotations/{split}/*.json``
  ({"video_annotations": [{"image": {"image_path": ...}, "annotations": [{"class_id", "segments":
  [[[x, y], ...]]}]}]}) and ``rgb_frames/{split}/...`` frames. One sample per annotated object (hands
  excluded, they are not objects: ``name`` in ``exclude``), its box the bounding box of its polygons,
  cropped as COCO's. Classes are the object ids present, in sorted order (``num_classes`` from
  the data). The layout follows the VISOR README; we have not read the real files here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .probe_set import IndexedProbeSet, file_digest

CLEVR_DISTANCE_BINS = [8.0, 8.5, 9.0, 9.5, 10.0]  # VTAB: thresholds [0, 8, 8.5, 9, 9.5, 10, 100]
SUITE_KINDS = ("clevr", "coco_boxes", "visor")


class ClevrProbeSet(IndexedProbeSet):
    def __init__(self, root: str, split: str, task: str, limit: int | None = None, seed: int = 0):
        if task not in ("count", "distance"):
            raise ValueError(f"clevr_task must be count or distance, got {task!r}")
        self.root, self.split, self.clevr_task = Path(root), split or "train", task
        self.scenes_file = self.root / "scenes" / f"CLEVR_{self.split}_scenes.json"
        if not self.scenes_file.is_file():
            raise FileNotFoundError(f"{self.scenes_file}: not the CLEVR_v1.0 layout (scenes/CLEVR_SPLIT_scenes.json)")
        scenes = json.loads(self.scenes_file.read_text())["scenes"]
        items = [(s["image_filename"], self.label(s["objects"])) for s in scenes]
        self.items = [items[i] for i in self.draw([label for _, label in items], limit, seed)]
        self.num_classes = 8 if task == "count" else len(CLEVR_DISTANCE_BINS) + 1

    def label(self, objects: list) -> int:
        if self.clevr_task == "count":
            if not 3 <= len(objects) <= 10:
                raise ValueError(f"{self.scenes_file}: a scene with {len(objects)} objects (CLEVR has 3-10)")
            return len(objects) - 3
        closest = min(o["pixel_coords"][2] for o in objects)
        return int(np.searchsorted(CLEVR_DISTANCE_BINS, closest, side="right"))

    def __len__(self) -> int:
        return len(self.items)

    def item(self, index: int):
        name, label = self.items[index]
        return (self.root / "images" / self.split / name).read_bytes(), label

    def where(self, index: int) -> str:
        return str(self.root / "images" / self.split / self.items[index][0])

    def describe(self) -> str:
        return f"clevr/{self.clevr_task} {self.split} ({self.root})"

    def identity(self) -> dict:
        return {"kind": "clevr", "task": self.clevr_task, "split": self.split, "path": str(self.root.resolve()),
                "samples": len(self.items), "scenes": file_digest([self.scenes_file]), **self.subset_identity()}


def box_crop(image: Image.Image, box: tuple[float, float, float, float], context: float) -> np.ndarray:
    """A square of side ``context`` x the box's longer side around its centre (at least 8 px), edge-padded
    where it leaves the image: uint8 HxWx3."""
    x, y, w, h = box
    side = max(8, int(round(context * max(w, h))))
    left, top = int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2))
    array = np.asarray(image.convert("RGB"))
    pad = max(0, -left, -top, left + side - array.shape[1], top + side - array.shape[0])
    if pad:
        array = np.pad(array, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return np.ascontiguousarray(array[top + pad:top + pad + side, left + pad:left + pad + side])


class BoxProbeSet(IndexedProbeSet):
    """Objects given by boxes on images: ``self.items`` = [(image path, (x, y, w, h), label)]."""

    context = 2.0

    def __len__(self) -> int:
        return len(self.items)

    def item(self, index: int):
        path, box, label = self.items[index]
        with Image.open(path) as image:
            return box_crop(image, box, self.context), label

    def where(self, index: int) -> str:
        path, box, _ = self.items[index]
        return f"{path} box {[round(v, 1) for v in box]}"


class CocoBoxProbeSet(BoxProbeSet):
    def __init__(self, images: str, annotations: str, max_area: float, context: float, limit: int | None = None,
                 seed: int = 0):
        self.images, self.annotations, self.max_area, self.context = Path(images), Path(annotations), max_area, context
        data = json.loads(self.annotations.read_text())
        categories = sorted(c["id"] for c in data["categories"])
        self.classes = [str(c) for c in categories]
        index = {c: i for i, c in enumerate(categories)}
        files = {im["id"]: im["file_name"] for im in data["images"]}
        items = [(self.images / files[a["image_id"]], tuple(a["bbox"]), index[a["category_id"]])
                 for a in data["annotations"] if not a.get("iscrowd") and a["area"] < max_area
                 and a["bbox"][2] >= 1 and a["bbox"][3] >= 1]
        self.items = [items[i] for i in self.draw([label for *_, label in items], limit, seed)]
        self.num_classes = len(categories)

    def describe(self) -> str:
        return f"coco boxes {self.annotations.name} (area < {self.max_area:g})"

    def identity(self) -> dict:
        return {"kind": "coco_boxes", "path": str(self.images.resolve()), "annotations": str(self.annotations),
                "content": file_digest([self.annotations]), "max_area": self.max_area, "context": self.context,
                "samples": len(self.items), "classes": self.num_classes, **self.subset_identity()}


class VisorBoxProbeSet(BoxProbeSet):
    def __init__(self, root: str, split: str, context: float, exclude: list[str], limit: int | None = None,
                 seed: int = 0):
        self.root, self.split, self.context = Path(root), split or "train", context
        self.files = sorted((self.root / "annotations" / self.split).glob("*.json"))
        if not self.files:
            raise FileNotFoundError(f"{self.root}/annotations/{self.split}/: no VISOR annotation json")
        frames = self.root / "rgb_frames" / self.split
        raw = []
        for file in self.files:
            for entry in json.loads(file.read_text())["video_annotations"]:
                image = self.frame(frames, entry["image"]["image_path"])
                for a in entry["annotations"]:
                    points = np.array([p for segment in a["segments"] for p in segment], dtype=np.float64)
                    if a.get("name") in exclude or len(points) < 3:
                        continue
                    (x0, y0), (x1, y1) = points.min(0), points.max(0)
                    if x1 - x0 >= 1 and y1 - y0 >= 1:
                        raw.append((image, (x0, y0, x1 - x0, y1 - y0), int(a["class_id"])))
        ids = sorted({c for *_, c in raw})
        self.classes, index = [str(c) for c in ids], {c: i for i, c in enumerate(ids)}
        items = [(p, box, index[c]) for p, box, c in raw]
        self.items = [items[i] for i in self.draw([label for *_, label in items], limit, seed)]
        self.num_classes = len(ids)

    @staticmethod
    def frame(frames: Path, image_path: str) -> Path:
        """VISOR names frames P01_01_frame_0000000140.jpg under rgb_frames/SPLIT/P01/ (or with the video folder)."""
        name = Path(image_path).name
        participant = name.split("_")[0]
        for candidate in (frames / image_path, frames / participant / name, frames / participant / image_path):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"VISOR frame {image_path}: not under {frames} (SPLIT/PARTICIPANT/NAME)")

    def describe(self) -> str:
        return f"visor {self.split} ({self.root})"

    def identity(self) -> dict:
        return {"kind": "visor", "split": self.split, "path": str(self.root.resolve()), "context": self.context,
                "content": file_digest(self.files), "samples": len(self.items), "classes": self.num_classes,
                **self.subset_identity()}


def build_suite_set(cfg, task: str, num_classes: int | None, seed: int = 0):
    if task != "single":
        raise ValueError(f"{cfg.kind} probe sets are single-label (task: single)")
    if cfg.kind == "clevr":
        return ClevrProbeSet(cfg.path, cfg.split, cfg.clevr_task, cfg.limit, seed)
    if cfg.kind == "coco_boxes":
        return CocoBoxProbeSet(cfg.path, cfg.annotations, cfg.max_area, cfg.context, cfg.limit, seed)
    if cfg.kind == "visor":
        return VisorBoxProbeSet(cfg.path, cfg.split, cfg.context, list(cfg.exclude), cfg.limit, seed)
    raise ValueError(f"unknown probe set kind {cfg.kind!r}")
