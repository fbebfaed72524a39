"""Shard writing from image folders, HF datasets, COCO captions and videos (``vispre shards write``)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vispre.commands import shards_write
from vispre.data.convert import write_shards
from vispre.data.shard_writer import check_key, read_sizes
from vispre.data.sources import CocoSource, HFSource, ImageFolderSource, Source, SourceError, VideoSource

# ---------------------------------------------------------------------------------- helpers


def read_shard(path: Path) -> list[dict[str, bytes]]:
    """Samples of a tar in order: {"__key__": key, ext: bytes}, split at the first dot like webdataset."""
    samples: list[dict] = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            if not samples or samples[-1]["__key__"] != key:
                samples.append({"__key__": key})
            samples[-1][ext] = tar.extractfile(member).read()
    return samples


def read_all(out: Path) -> list[dict[str, bytes]]:
    return [s for shard in sorted(out.glob("*.tar")) for s in read_shard(shard)]


def save_image(path: Path, size=(48, 32), mode="RGB", value=128, fmt=None) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 255 - value, 30)).save(path, format=fmt)
    return path.read_bytes()


def write(source: Source, out: Path, **kw) -> dict:
    kw.setdefault("progress", False)
    return write_shards(source, out, **kw)


@pytest.fixture
def plain_folder(tmp_path) -> Path:
    root = tmp_path / "plain"
    save_image(root / "a.jpg", (48, 32))
    save_image(root / "b.png", (40, 40), mode="L", value=7)
    save_image(root / "sub" / "c.webp", (33, 64))
    save_image(root / "sub" / "d.bmp", (32, 32))  # not kept as is: re-encoded to jpg
    save_image(root / "e.jpeg", (64, 40), mode="L")
    return root


@pytest.fixture
def class_folder(tmp_path) -> Path:
    root = tmp_path / "classes"
    for name, count in (("zebra", 2), ("ant", 3), ("cat", 1)):
        for i in range(count):
            save_image(root / name / ("deep" if i == 2 else "") / f"img {i}.png", (32 + i, 32), value=i * 40)
    return root


# ----------------------------------------------------------------------------- image folder


def test_plain_folder_counts_keys_and_original_bytes(plain_folder, tmp_path):
    out = tmp_path / "out"
    summary = write(ImageFolderSource(plain_folder), out, samples_per_shard=2)
    assert (summary["shards"], summary["samples"], summary["skipped"]) == (3, 5, 0)
    assert read_sizes(out) == {"shard-00000.tar": 2, "shard-00001.tar": 2, "shard-00002.tar": 1}
    assert [len(read_shard(p)) for p in sorted(out.glob("*.tar"))] == [2, 2, 1]
    samples = {s["__key__"]: s for s in read_all(out)}
    assert sorted(samples) == ["a", "b", "e", "sub_c", "sub_d"]
    assert {k: sorted(set(s) - {"__key__"}) for k, s in samples.items()} == {
        "a": ["jpg", "json"], "b": ["json", "png"], "e": ["jpg", "json"],
        "sub_c": ["json", "webp"], "sub_d": ["jpg", "json"]}
    assert samples["a"]["jpg"] == (plain_folder / "a.jpg").read_bytes()
    assert samples["b"]["png"] == (plain_folder / "b.png").read_bytes()
    assert samples["e"]["jpg"] == (plain_folder / "e.jpeg").read_bytes()
    assert Image.open(io.BytesIO(samples["sub_d"]["jpg"])).format == "JPEG"
    meta = json.loads(samples["sub_c"]["json"])
    assert (meta["width"], meta["height"], meta["path"]) == (33, 64, "sub/c.webp")
    assert "cls" not in samples["a"] and not (out / "classes.json").exists()


def test_class_folders_give_sorted_class_indices(class_folder, tmp_path):
    out = tmp_path / "out"
    source = ImageFolderSource(class_folder)
    assert source.format == "labelled"
    summary = write(source, out, samples_per_shard=4)
    assert summary["samples"] == 6 and read_sizes(out) == {"shard-00000.tar": 4, "shard-00001.tar": 2}
    assert json.loads((out / "classes.json").read_text()) == ["ant", "cat", "zebra"]
    for s in read_all(out):
        meta = json.loads(s["json"])
        folder = meta["path"].split("/")[0]
        classes = ["ant", "cat", "zebra"]
        assert int(s["cls"]) == classes.index(folder) == classes.index(meta["label_name"])
        check_key(s["__key__"])
    assert write(ImageFolderSource(class_folder, labels=False), tmp_path / "o2")["format"] == "image"


def test_unreadable_image_is_skipped_and_named(plain_folder, tmp_path):
    (plain_folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    summary = write(ImageFolderSource(plain_folder), tmp_path / "out", samples_per_shard=10)
    assert (summary["samples"], summary["skipped"]) == (5, 1)
    assert summary["skipped_inputs"][0]["path"] == str(plain_folder / "broken.jpg")
    assert read_sizes(tmp_path / "out") == {"shard-00000.tar": 5}


def test_parallel_output_is_byte_identical(class_folder, tmp_path):
    one = write(ImageFolderSource(class_folder), tmp_path / "w1", samples_per_shard=2, workers=1)
    two = write(ImageFolderSource(class_folder), tmp_path / "w2", samples_per_shard=2, workers=2)
    assert one["shards"] == two["shards"] == 3
    for shard in sorted((tmp_path / "w1").glob("*.tar")):
        assert shard.read_bytes() == (tmp_path / "w2" / shard.name).read_bytes()
    assert (tmp_path / "w1" / "sizes.json").read_text() == (tmp_path / "w2" / "sizes.json").read_text()


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no image files"):
        ImageFolderSource(tmp_path / "empty")
    with pytest.raises(SourceError, match="missing"):
        ImageFolderSource(tmp_path / "missing")


# ------------------------------------------------------------------------ atomic / failures


class FailingSource(Source):
    """Items 0..9; reading item ``fail_at`` raises, as a crash in the middle of a shard would."""

    def __init__(self, fail_at: int | None):
        super().__init__()
        self.items, self.fail_at = list(range(10)), fail_at

    def read_item(self, item):
        if item == self.fail_at:
            raise RuntimeError("killed")
        return {"__key__": f"s{item:02d}", "txt": str(item)}


def test_failed_shard_leaves_no_partial_tar_and_resume_completes(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="killed"):
        write(FailingSource(fail_at=5), out, samples_per_shard=4)
    assert sorted(p.name for p in out.iterdir()) == ["_info.json", "shard-00000.tar", "sizes.json"]
    assert read_sizes(out) == {"shard-00000.tar": 4}
    with pytest.raises(FileExistsError):
        write(FailingSource(fail_at=None), out, samples_per_shard=4)
    summary = write(FailingSource(fail_at=None), out, samples_per_shard=4, resume=True)
    assert (summary["shards"], summary["shards_written"], summary["samples"]) == (3, 2, 10)
    assert [s["__key__"] for s in read_all(out)] == [f"s{i:02d}" for i in range(10)]


def test_failed_shard_in_a_worker_leaves_no_partial_tar(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="killed"):
        write(FailingSource(fail_at=5), out, samples_per_shard=2, workers=2)
    names = {p.name for p in out.iterdir()}
    assert "shard-00002.tar" not in names and not [n for n in names if ".tmp" in n]
    # Shards other workers finished are whole; those recorded in sizes.json are among them.
    assert all(len(read_shard(out / n)) == 2 for n in names if n.endswith(".tar"))
    assert set(read_sizes(out)) <= names


# --------------------------------------------------------------------------- HF datasets


def make_hf_dataset(path: Path, n: int = 5) -> Path:
    import datasets

    features = datasets.Features({
        "image": datasets.Image(), "label": datasets.ClassLabel(names=["bird", "fish"]),
        "caption": datasets.Value("string"), "captions": datasets.Sequence(datasets.Value("string"))})
    images = [Image.new("RGB" if i % 2 else "L", (32 + i, 40), 20 * i) for i in range(n)]
    ds = datasets.Dataset.from_dict({
        "image": images, "label": [i % 2 for i in range(n)], "caption": [f"picture {i}" for i in range(n)],
        "captions": [[f"a {i}", f"b {i}"] for i in range(n)]}, features=features)
    ds.save_to_disk(str(path))
    return path


def test_hf_dataset_labels_captions_and_images(tmp_path):
    path = make_hf_dataset(tmp_path / "ds")
    out = tmp_path / "out"
    source = HFSource(str(path), label_column="label", caption_column="caption")
    summary = write(source, out, samples_per_shard=2, workers=2)
    assert summary["samples"] == 5 and list(read_sizes(out).values()) == [2, 2, 1]
    assert json.loads((out / "classes.json").read_text()) == ["bird", "fish"]
    samples = read_all(out)
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(5)]
    for i, s in enumerate(samples):
        assert set(s) == {"__key__", "png", "cls", "txt", "json"}  # datasets stores PIL images as PNG
        assert (int(s["cls"]), s["txt"].decode()) == (i % 2, f"picture {i}")
        assert Image.open(io.BytesIO(s["png"])).size == (32 + i, 40)
        assert json.loads(s["json"])["label_name"] == ["bird", "fish"][i % 2]


def test_hf_caption_lists_and_jpeg_encoding_of_pil_images(tmp_path):
    import datasets

    source = HFSource(str(make_hf_dataset(tmp_path / "ds", n=3)), caption_column="captions", quality=80)
    assert source.format == "caption"
    source.ds = source.ds.cast_column("image", datasets.Image())  # rows now hold decoded PIL images
    write(source, tmp_path / "out")
    samples = read_all(tmp_path / "out")
    assert [json.loads(s["json"])["captions"] for s in samples] == [[f"a {i}", f"b {i}"] for i in range(3)]
    assert all(Image.open(io.BytesIO(s["jpg"])).format == "JPEG" for s in samples)


def test_hf_hub_name_goes_through_load_dataset(tmp_path, monkeypatch):
    import datasets

    calls = []
    local = datasets.load_from_disk(str(make_hf_dataset(tmp_path / "ds", n=2)))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: calls.append((a, kw)) or local)
    assert len(HFSource("someone/tiny-images", config="default")) == 2
    assert calls == [(("someone/tiny-images", "default"), {"split": "train"})]


def test_hf_missing_column_names_it(tmp_path):
    path = make_hf_dataset(tmp_path / "ds", n=2)
    with pytest.raises(SourceError, match="'labels'.*columns"):
        HFSource(str(path), label_column="labels")


# ---------------------------------------------------------------------------- COCO captions


def test_coco_keeps_all_captions_per_image(tmp_path):
    images = tmp_path / "train2017"
    for i in (1, 2, 3):
        save_image(images / f"{i:012d}.jpg", (40 + i, 32))
    annotations = [(2, "two a"), (1, "one a"), (2, "two b"), (1, "one b"), (2, "two c"), (1, "one c")]
    coco = {"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in (3, 2, 1)],
            "annotations": [{"id": n, "image_id": i, "caption": c} for n, (i, c) in enumerate(annotations)]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    summary = write(CocoSource(tmp_path / "captions.json", images), tmp_path / "out", samples_per_shard=1)
    assert (summary["shards"], summary["samples"]) == (2, 2)  # image 3 has no caption
    samples = read_all(tmp_path / "out")
    assert [s["__key__"] for s in samples] == ["000000000001", "000000000002"]
    metas = [json.loads(s["json"]) for s in samples]
    assert [m["captions"] for m in metas] == [["one a", "one b", "one c"], ["two a", "two b", "two c"]]
    assert [(m["image_id"], m["width"]) for m in metas] == [(1, 41), (2, 42)]
    assert samples[0]["jpg"] == (images / "000000000001.jpg").read_bytes()


def test_coco_bad_json_is_a_clear_error(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SourceError, match="bad.json"):
        CocoSource(tmp_path / "bad.json", tmp_path)


# ------------------------------------------------------------------------------------ videos


def make_video(path: Path, frames: int = 20, fps: int = 10, size=(64, 48)) -> Path:
    """A 2 s mp4 whose frame i is a flat grey of level 10 + 12 i (so order can be checked)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            grey = np.full((size[1], size[0], 3), min(250, 10 + 12 * i), np.uint8)
            frame = av.VideoFrame.from_ndarray(grey, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def grey_levels(sample: dict) -> list[float]:
    frames = sorted(k for k in sample if k.endswith(".jpg"))
    return [float(np.asarray(Image.open(io.BytesIO(sample[k])).convert("L")).mean()) for k in frames]


def test_video_file_clips_indices_order_and_narration(tmp_path):
    video = make_video(tmp_path / "videos" / "P01.01.mp4")
    with open(tmp_path / "narr.csv", "w", newline="") as f:
        csv.writer(f).writerows([["video_id", "start_frame", "stop_frame", "narration"],
                                 ["P01.01", 4, 8, "open drawer"], ["other", 0, 99, "no"]])
    source = VideoSource(video.parent, frames_per_clip=4, frame_stride=2, clip_stride=5, size=24,
                         narrations=tmp_path / "narr.csv")
    summary = write(source, tmp_path / "out", samples_per_shard=2)
    assert (summary["format"], summary["samples"], summary["skipped"]) == ("clip", 3, 0)
    assert read_sizes(tmp_path / "out") == {"shard-00000.tar": 2, "shard-00001.tar": 1}
    samples = read_all(tmp_path / "out")
    assert [s["__key__"] for s in samples] == ["P01_01_000000", "P01_01_000005", "P01_01_000010"]
    metas = [json.loads(s["json"]) for s in samples]
    assert [m["frame_indices"] for m in metas] == [[0, 2, 4, 6], [5, 7, 9, 11], [10, 12, 14, 16]]
    assert [m["narration"] for m in metas] == ["", "open drawer", ""]
    assert {(m["video_id"], m["fps"]) for m in metas} == {("P01.01", 10.0)}
    for sample, meta in zip(samples, metas):
        assert sorted(k for k in sample if k != "__key__") == ["000.jpg", "001.jpg", "002.jpg", "003.jpg", "json"]
        assert Image.open(io.BytesIO(sample["000.jpg"])).size == (32, 24)
        levels = grey_levels(sample)
        assert levels == sorted(levels)
        assert levels == pytest.approx([10 + 12 * i for i in meta["frame_indices"]], abs=4)


def test_frame_folders_sorted_naturally_and_parallel_identical(tmp_path):
    root = tmp_path / "frames"
    for i in range(1, 11):  # frame1 .. frame10: a plain string sort would put frame10 second
        save_image(root / "P02_03" / f"frame{i}.png", (40, 30), mode="L", value=20 * i)
    make_video(root / "clips" / "short.mp4", frames=2)  # shorter than a clip: skipped
    kw = dict(frames_per_clip=3, clip_stride=3, fps=50.0)
    one = write(VideoSource(root, **kw), tmp_path / "w1", samples_per_shard=2, workers=1)
    two = write(VideoSource(root, **kw), tmp_path / "w2", samples_per_shard=2, workers=2)
    assert (two["samples"], two["skipped"]) == (one["samples"], one["skipped"])
    assert (one["samples"], one["skipped"]) == (3, 1) and one["skipped_inputs"][0]["path"].endswith("short.mp4")
    samples = read_all(tmp_path / "w1")
    metas = [json.loads(s["json"]) for s in samples]
    assert [m["frame_indices"] for m in metas] == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert {(m["video_id"], m["fps"], m["narration"]) for m in metas} == {("P02_03", 50.0, "")}
    assert grey_levels(samples[2]) == pytest.approx([140, 160, 180], abs=3)
    for shard in sorted((tmp_path / "w1").glob("*.tar")):
        assert shard.read_bytes() == (tmp_path / "w2" / shard.name).read_bytes()


def test_unreadable_video_is_skipped(tmp_path):
    make_video(tmp_path / "v" / "good.mp4")
    (tmp_path / "v" / "bad.mp4").write_bytes(b"garbage" * 10)
    summary = write(VideoSource(tmp_path / "v", frames_per_clip=10), tmp_path / "out")
    assert (summary["samples"], summary["skipped"]) == (2, 1)
    assert summary["skipped_inputs"][0]["path"].endswith("bad.mp4")


# --------------------------------------------------------------------------------------- CLI


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vispre")
    shards = parser.add_subparsers().add_parser("shards")
    shards_write.register(shards.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_and_prints_json_summary(class_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(["shards", "write", "folder", str(class_folder), str(out), "--samples-per-shard", "5",
                "--workers", "1", "--prefix", "eval", "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["shards"], summary["samples"], summary["format"]) == (2, 6, "labelled")
    assert read_sizes(out) == {"eval-00000.tar": 5, "eval-00001.tar": 1}
    assert cli(["shards", "write", "folder", str(class_folder), str(out), "--prefix", "eval"]) == 2
    assert "already has" in capsys.readouterr().err


def test_cli_help_and_human_summary(plain_folder, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli(["shards", "write", "video", "--help"])
    assert "--frames-per-clip" in capsys.readouterr().out
    (plain_folder / "broken.png").write_bytes(b"nope")
    assert cli(["shards", "write", "folder", str(plain_folder), str(tmp_path / "o"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "5 image samples" in text and "skipped 1 unreadable" in text and "broken.png" in text
