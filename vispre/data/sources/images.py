"""Image sources: image folders, Hugging Face datasets, COCO captions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL import Image

from vispre.data.formats import IMAGE_EXTS

from .base import (
    Source,
    SourceError,
    Unreadable,
    encode_jpeg,
    image_entry,
    read_bytes,
    read_json,
    unique_keys,
)

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- image folder


def _visible(rel: Path) -> bool:
    return not any(part.startswith(".") for part in rel.parts)


class ImageFolderSource(Source):
    """Images under ``root`` (recursive). Class sub-folders (``labels=None``: when the root holds
    sub-folders and no images itself) give ``labelled`` samples with ``cls`` = index of the folder
    name in sorted order, and ``classes.json`` (the names in index order)."""

    def __init__(self, root: str | Path, labels: bool | None = None, quality: int = 95):
        super().__init__()
        self.root, self.quality = Path(root), quality
        if not self.root.is_dir():
            raise SourceError(f"image folder {self.root} does not exist or is not a directory")
        files = sorted(
            (p.relative_to(self.root) for p in self.root.rglob("*")
             if p.suffix.lower().lstrip(".") in IMAGE_EXTS and p.is_file()),
            key=lambda rel: rel.as_posix(),
        )
        files = [rel for rel in files if _visible(rel)]
        if not files:
            raise SourceError(f"no image files ({', '.join(IMAGE_EXTS)}) under {self.root}")
        dirs = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        at_root = [rel for rel in files if len(rel.parts) == 1]
        self.labelled = bool(dirs) and not at_root if labels is None else labels
        self.classes: list[str] = dirs if self.labelled else []
        if self.labelled:
            if at_root:
                log.warning("ignoring %d images directly in %s (not in a class folder)", len(at_root), self.root)
            files = [rel for rel in files if len(rel.parts) > 1]
            self.format = "labelled"
        index = {name: i for i, name in enumerate(self.classes)}
        keys = unique_keys([rel.with_suffix("").as_posix() for rel in files])
        self.items = [
            (rel.as_posix(), key, index[rel.parts[0]] if self.labelled else -1)
            for rel, key in zip(files, keys)
        ]

    def read_item(self, item) -> dict:
        rel, key, label = item
        ext, data, img = image_entry(read_bytes(self.root / rel), str(self.root / rel), self.quality)
        meta: dict[str, Any] = {"path": rel, "width": img.width, "height": img.height}
        sample: dict[str, Any] = {"__key__": key, ext: data}
        if label >= 0:
            sample["cls"] = label
            meta["label_name"] = self.classes[label]
        sample["json"] = meta
        return sample

    def extra_files(self) -> dict[str, Any]:
        return {"classes.json": self.classes} if self.labelled else {}


# ----------------------------------------------------------------------- Hugging Face datasets


def load_hf(name_or_path: str, split: str | None = None, config: str | None = None):
    """A ``datasets.Dataset``: from ``save_to_disk`` output when the path exists, else by hub name."""
    import datasets  # imported here: slow, and only this source needs it

    if Path(name_or_path).exists():
        try:
            ds = datasets.load_from_disk(name_or_path)
        except FileNotFoundError as err:
            raise SourceError(f"{name_or_path} is not a dataset saved with save_to_disk: {err}") from None
    else:
        ds = datasets.load_dataset(name_or_path, config, split=split or "train")
    if isinstance(ds, datasets.DatasetDict):
        split = split or ("train" if "train" in ds else None)
        if split not in ds:
            raise SourceError(f"{name_or_path}: choose a split with --split, one of {sorted(ds)}")
        ds = ds[split]
    return ds


def hf_image_bytes(value: Any, where: str) -> bytes | Image.Image:
    """Encoded bytes (``{"bytes": ...}``, raw bytes, ``{"path": ...}``) or a PIL image."""
    if isinstance(value, Image.Image) or isinstance(value, bytes):
        return value
    if isinstance(value, dict) and value.get("bytes"):
        return value["bytes"]
    if isinstance(value, dict) and value.get("path"):
        return read_bytes(Path(value["path"]))
    raise Unreadable(where, f"no image in {type(value).__name__} value")


class HFSource(Source):
    """Rows of a Hugging Face dataset: image column -> jpg/png/webp, label column -> ``cls``,
    caption column -> ``txt`` (a string) or json ``captions`` (a list of strings, the first also as ``txt``
    for loaders that read one caption, such as open_clip's)."""

    def __init__(self, name_or_path: str, split: str | None = None, config: str | None = None,
                 image_column: str = "image", label_column: str | None = None,
                 caption_column: str | None = None, quality: int = 95):
        super().__init__()
        import datasets

        self.name, self.quality = name_or_path, quality
        ds = load_hf(name_or_path, split, config)
        for column in (image_column, label_column, caption_column):
            if column is not None and column not in ds.column_names:
                raise SourceError(f"column {column!r} not in dataset {name_or_path} (columns: {ds.column_names})")
        if isinstance(ds.features[image_column], datasets.Image):
            # Undecoded: stored JPEG/PNG bytes are written as they are, not decoded and re-encoded.
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        label_feature = ds.features.get(label_column) if label_column else None
        self.classes = list(label_feature.names) if isinstance(label_feature, datasets.ClassLabel) else []
        self.ds, self.columns = ds, (image_column, label_column, caption_column)
        self.format = "labelled" if label_column else "caption" if caption_column else "image"
        self.items = range(len(ds))  # a range slices to a range: cheap to send to workers

    def read_item(self, index: int) -> dict:
        image_column, label_column, caption_column = self.columns
        row, where = self.ds[index], f"{self.name}[{index}].{image_column}"
        value = hf_image_bytes(row[image_column], where)
        if isinstance(value, Image.Image):
            ext, data, img = "jpg", encode_jpeg(value, self.quality), value
        else:
            ext, data, img = image_entry(value, where, self.quality)
        meta: dict[str, Any] = {"index": index, "width": img.width, "height": img.height}
        sample: dict[str, Any] = {"__key__": f"{index:09d}", ext: data}
        if label_column:
            if row[label_column] is None:
                raise Unreadable(f"{self.name}[{index}].{label_column}", "no label")
            sample["cls"] = int(row[label_column])
            if self.classes:
                meta["label_name"] = self.classes[sample["cls"]]
        caption = row[caption_column] if caption_column else None
        if isinstance(caption, str):
            sample["txt"] = caption
        elif caption is not None:
            meta["captions"] = [str(c) for c in caption]
            if meta["captions"]:
                sample["txt"] = meta["captions"][0]
        sample["json"] = meta
        return sample

    def extra_files(self) -> dict[str, Any]:
        return {"classes.json": self.classes} if self.classes else {}


# ---------------------------------------------------------------------------- COCO captions


class CocoSource(Source):
    """COCO captions json + image folder -> ``caption`` samples, one per image with all of its
    captions (in file order) in the json, and the first of them as ``KEY.txt``: the one caption that
    single-caption loaders (open_clip's ``get_wds_dataset``, which skips samples without txt) read.
    vispre itself reads the json's list. Images without any caption are left out."""

    format = "caption"

    def __init__(self, captions_json: str | Path, image_dir: str | Path, quality: int = 95):
        super().__init__()
        self.image_dir, self.quality = Path(image_dir), quality
        coco = read_json(captions_json, "COCO captions")
        if not isinstance(coco, dict) or not {"images", "annotations"} <= coco.keys():
            raise SourceError(f"{captions_json}: a COCO captions json needs 'images' and 'annotations'")
        if not self.image_dir.is_dir():
            raise SourceError(f"COCO image folder {self.image_dir} does not exist")
        captions: dict[Any, list[str]] = {}
        try:
            for ann in coco["annotations"]:
                captions.setdefault(ann["image_id"], []).append(ann["caption"])
            images = sorted(((im["id"], im["file_name"]) for im in coco["images"]), key=lambda im: im[0])
        except (KeyError, TypeError) as err:
            raise SourceError(f"{captions_json}: annotation or image entry without {err}") from None
        with_captions = [(iid, name) for iid, name in images if iid in captions]
        if len(with_captions) < len(images):
            log.warning("%s: %d images have no caption and are left out", captions_json,
                        len(images) - len(with_captions))
        keys = unique_keys([Path(name).stem for _, name in with_captions])
        self.items = [(name, key, iid, captions[iid]) for (iid, name), key in zip(with_captions, keys)]

    def read_item(self, item) -> dict:
        name, key, image_id, captions = item
        path = self.image_dir / name
        ext, data, img = image_entry(read_bytes(path), str(path), self.quality)
        meta = {"captions": list(captions), "image_id": image_id, "file_name": name,
                "width": img.width, "height": img.height}
        return {"__key__": key, ext: data, "json": meta, "txt": captions[0]}


