"""Shards written by the tools stream back in every format: captions, clips, labelled images."""

import json

import pytest

from tests.shards import jpeg
from vispre.data import DataConfig, build_loader
from vispre.data.convert import write_shards
from vispre.data.sources import CocoSource, VideoSource

av = pytest.importorskip("av")


def test_coco_captions_stream_with_all_captions(tmp_path):
    from tests.test_write import save_image

    images = tmp_path / "images"
    for i in range(1, 5):
        save_image(images / f"{i:012d}.jpg", (40, 30))
    annotations = [{"id": n, "image_id": 1 + n % 4, "caption": f"caption {n}"} for n in range(12)]
    (tmp_path / "c.json").write_text(json.dumps({"images": [{"id": i, "file_name": f"{i:012d}.jpg"}
                                                            for i in range(1, 5)], "annotations": annotations}))
    write_shards(CocoSource(tmp_path / "c.json", images), tmp_path / "out", samples_per_shard=2, progress=False)
    loader = build_loader(DataConfig(spec=str(tmp_path / "out"), format="caption", eval_size=16, resampled=False,
                                     batch_size=4, workers=0))
    (batch,) = list(loader)
    assert batch["image"].shape == (4, 3, 16, 16)
    by_key = dict(zip(batch["__key__"], batch["captions"]))
    assert by_key["000000000001"] == ["caption 0", "caption 4", "caption 8"]
    assert all(len(c) == 3 for c in by_key.values())


def test_video_clips_stream_as_ordered_frames(tmp_path):
    from tests.test_write import make_video

    video = make_video(tmp_path / "v" / "vid.mp4", frames=20)
    write_shards(VideoSource(video.parent, frames_per_clip=5, frame_stride=1, clip_stride=5), tmp_path / "out",
                 samples_per_shard=1, progress=False)
    loader = build_loader(DataConfig(spec=str(tmp_path / "out"), format="clip", frame_size=32, resampled=False,
                                     batch_size=2, workers=2, shuffle_buffer=0))
    batches = list(loader)
    assert sum(len(b["__key__"]) for b in batches) == 4
    for batch in batches:
        assert batch["frames"].shape[1:] == (5, 3, 32, 32)
        levels = batch["frames"].float().mean(dim=(2, 3, 4))  # frame i is grey level 10 + 12 i
        assert (levels[:, 1:] > levels[:, :-1]).all()
        for meta, row in zip(batch["json"], levels):
            expected = [10 + 12 * i for i in meta["frame_indices"]]
            assert row.tolist() == pytest.approx(expected, abs=5)


def test_labelled_eval_stream_centre_crops(tmp_path):
    from vispre.data.shard_writer import ShardWriter

    with ShardWriter(tmp_path, samples_per_shard=3) as writer:
        for i in range(7):
            writer.write({"__key__": f"k{i}", "jpg": jpeg(80, 40, seed=i), "cls": i % 3})
    loader = build_loader(DataConfig(spec=str(tmp_path), format="labelled", eval_size=24, resampled=False,
                                     batch_size=8, workers=0, shard_shuffle=False, shuffle_buffer=0))
    (batch,) = list(loader)
    assert batch["image"].shape == (7, 3, 24, 24)
    assert batch["cls"].tolist() == [i % 3 for i in range(7)]  # no shuffle: shard order kept
