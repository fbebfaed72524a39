"""``vispre shards write {folder,hf,coco,video} INPUT OUT_DIR``: turn user data into shards.

The caller wires it in with::

    shards = sub.add_parser("shards"); ss = shards.add_subparsers(); shards_write.register(ss)

and runs ``args.func(args)``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

DESCRIPTION = """\
Write WebDataset shards (PREFIX-00000.tar, ...) and sizes.json from a folder of images, a
Hugging Face dataset, COCO captions or videos. Each shard is written whole by one worker and
appears only once complete; the output is identical whatever --workers is. Unreadable inputs
are skipped and listed in the summary."""

SOURCES = {
    "folder": ("a folder of images (recursive); class sub-folders give labelled samples",
               "INPUT is the image folder. If it holds sub-folders and no images itself, each "
               "sub-folder is a class: samples get cls = index of the folder name in sorted "
               "order, and classes.json lists the names. jpg/png/webp bytes are kept as they are."),
    "hf": ("a Hugging Face dataset (save_to_disk folder, or a hub name when online)",
           "INPUT is a folder written by Dataset.save_to_disk, or a dataset name for "
           "datasets.load_dataset. Stored jpg/png/webp bytes are kept; decoded images are "
           "encoded to JPEG."),
    "coco": ("COCO-style captions json + image folder -> one sample per image, all captions",
             "INPUT is the captions json (images: id/file_name, annotations: image_id/caption)."),
    "video": ("video files and/or folders of frames -> clips of frames",
              "INPUT is a video file or a folder searched recursively for video files "
              "(mp4/avi/mkv/webm/mov) and frame folders (a folder of *.jpg/*.png frames per "
              "video, sorted naturally). Each clip is a sample KEY.000.jpg, KEY.001.jpg, ... "
              "with json {video_id, frame_indices, fps, narration}."),
}


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``write`` (with one sub-command per source kind) to ``subparsers``."""
    write = subparsers.add_parser("write", help="write shards from images, a HF dataset, COCO or videos",
                                  description=DESCRIPTION)
    write.set_defaults(func=run)
    kinds = write.add_subparsers(dest="source_kind", metavar="{folder,hf,coco,video}", required=True)
    common = _common_options()
    for kind, (summary, details) in SOURCES.items():
        parser = kinds.add_parser(kind, parents=[common], help=summary, description=f"{summary}. {details}")
        parser.add_argument("input", metavar="INPUT", help="the input (see above)")
        parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the shards to")
        OPTIONS[kind](parser.add_argument_group(f"{kind} options"))
        parser.set_defaults(func=run)
    return write


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("output")
    group.add_argument("--samples-per-shard", type=int, default=1000, metavar="N",
                       help="samples per shard (the last one may hold fewer, and a shard also "
                            "fewer when inputs in it were unreadable; default: %(default)s)")
    group.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), metavar="N",
                       help="processes writing shards in parallel (default: %(default)s)")
    group.add_argument("--prefix", default="shard", help="shard file names: PREFIX-00000.tar (default: %(default)s)")
    group.add_argument("--resume", action="store_true",
                       help="keep shards already in OUT_DIR (listed in sizes.json), write the rest")
    group.add_argument("--quality", type=int, metavar="Q",
                       help="JPEG quality when (re-)encoding (default: 90 for video frames, else 95)")
    group.add_argument("--json", action="store_true", help="print the summary as JSON")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    return common


def _folder_options(group) -> None:
    labels = group.add_mutually_exclusive_group()
    labels.add_argument("--labels", dest="labels", action="store_const", const=True, default=None,
                        help="sub-folders are classes (default: when INPUT has no images itself)")
    labels.add_argument("--no-labels", dest="labels", action="store_const", const=False,
                        help="plain image samples even when INPUT has sub-folders")


def _hf_options(group) -> None:
    group.add_argument("--split", help="split to write (default: train)")
    group.add_argument("--config", help="dataset configuration name (load_dataset)")
    group.add_argument("--image-column", default="image", help="column with the images (default: %(default)s)")
    group.add_argument("--label-column", help="integer class column -> cls")
    group.add_argument("--caption-column",
                       help="caption column: a string -> txt, a list of strings -> json captions")


def _coco_options(group) -> None:
    group.add_argument("--image-dir", required=True, help="folder the json's file_name entries are in")


def _video_options(group) -> None:
    group.add_argument("--frames-per-clip", type=int, default=16, metavar="N",
                       help="frames in each clip (default: %(default)s)")
    group.add_argument("--frame-stride", type=int, default=1, metavar="N",
                       help="source frames between consecutive clip frames (default: %(default)s)")
    group.add_argument("--clip-stride", type=int, metavar="N",
                       help="source frames between clip starts (default: the clip span, no overlap)")
    group.add_argument("--size", type=int, metavar="PX",
                       help="resize frames so the shorter side is SIZE (default: keep)")
    group.add_argument("--narrations", metavar="FILE",
                       help="CSV or JSON with video_id,start_frame,stop_frame,narration "
                            "(EpicKitchens style); a clip gets the one covering its first frame")
    group.add_argument("--fps", type=float, help="frame rate recorded for frame folders")


OPTIONS = {"folder": _folder_options, "hf": _hf_options, "coco": _coco_options, "video": _video_options}


def make_source(args: argparse.Namespace):
    from vispre.data import sources

    kind, quality = args.source_kind, args.quality
    if kind == "folder":
        return sources.ImageFolderSource(args.input, labels=args.labels, quality=quality or 95)
    if kind == "hf":
        return sources.HFSource(args.input, split=args.split, config=args.config,
                                image_column=args.image_column, label_column=args.label_column,
                                caption_column=args.caption_column, quality=quality or 95)
    if kind == "coco":
        return sources.CocoSource(args.input, args.image_dir, quality=quality or 95)
    return sources.VideoSource(args.input, frames_per_clip=args.frames_per_clip,
                               frame_stride=args.frame_stride, clip_stride=args.clip_stride,
                               size=args.size, quality=quality or 90, narrations=args.narrations,
                               fps=args.fps)


def run(args: argparse.Namespace) -> int:
    from vispre.data.convert import write_shards
    from vispre.data.sources import SourceError

    try:
        source = make_source(args)
        summary = write_shards(source, args.out_dir, samples_per_shard=args.samples_per_shard,
                               workers=args.workers, prefix=args.prefix,
                               progress=not args.no_progress, resume=args.resume)
    except (SourceError, FileExistsError, ValueError) as err:
        print(f"vispre shards write: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


def format_summary(summary: dict[str, Any], max_listed: int = 20) -> str:
    lines = [f"wrote {summary['shards_written']} of {summary['shards']} shards "
             f"({summary['samples']:,} {summary['format']} samples, {_human(summary['bytes'])}) "
             f"to {summary['out_dir']} in {summary['seconds']:.1f} s"]
    if summary["skipped"]:
        lines.append(f"skipped {summary['skipped']} unreadable inputs:")
        lines += [f"  {s['path']}: {s['reason']}" for s in summary["skipped_inputs"][:max_listed]]
        if summary["skipped"] > max_listed:
            lines.append(f"  ... and {summary['skipped'] - max_listed} more (--json lists all)")
    return "\n".join(lines)


def _human(n: float) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
