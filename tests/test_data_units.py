"""Units of the data layer: specs, sizes, boxes, reduced decode, configs, warnings, fsspec, CLI."""

import io
import json
import logging

import pytest
import torch
from PIL import Image

from tests.shards import jpeg, make_image_shards
from vispre.cli import main as cli
from vispre.data import DataConfig, build_loader
from vispre.data.decode import decode_rgb, jpeg_reduction
from vispre.data.skips import SkipCounter
from vispre.data.transforms import CropGroup, RandomViews
from vispre.data.urls import lookup_sizes, parse_spec
from vispre.utils.typed_config import ConfigError, load_config
from vispre.views.boxes import box_iou, sample_boxes


def test_spec_brace_directory_and_sources(tmp_path):
    directory, _ = make_image_shards(tmp_path / "a", [3, 4, 5])
    sources = parse_spec(f"{directory}/shard-{{00000..00001}}.tar::{directory}", weights=[2, 1])
    assert [len(s.urls) for s in sources] == [2, 3]
    assert [s.weight for s in sources] == [2.0, 1.0]
    assert [s.num_samples for s in sources] == [7, 12]
    with pytest.raises(ValueError, match="2 sources"):
        parse_spec(f"{directory}::{directory}", weights=[1.0])
    with pytest.raises(FileNotFoundError, match="no \\*.tar"):
        parse_spec(str(tmp_path / "a" / ".."))  # a directory without shards


def test_img2dataset_stats_give_sizes(tmp_path):
    for i, n in enumerate([10, 12]):
        (tmp_path / f"{i:05d}.tar").write_bytes(b"")
        (tmp_path / f"{i:05d}_stats.json").write_text(json.dumps({"successes": n, "count": n + 3}))
    assert lookup_sizes([str(tmp_path / "00000.tar"), str(tmp_path / "00001.tar")]) == {
        str(tmp_path / "00000.tar"): 10, str(tmp_path / "00001.tar"): 12}
    assert lookup_sizes([str(tmp_path / "00002.tar")]) is None


def test_boxes_stay_inside_and_follow_the_scale():
    generator = torch.Generator().manual_seed(0)
    boxes = sample_boxes(2000, 300, 200, scale=(0.2, 0.5), generator=generator)
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert area.min() > 0.19 and area.max() < 0.51
    assert abs(area.mean().item() - 0.35) < 0.01
    assert box_iou(boxes, boxes).allclose(torch.ones(2000))
    assert box_iou(torch.tensor([0, 0, 0.5, 1.0]), torch.tensor([0.5, 0, 1, 1.0])) == 0


def test_reduced_decode_picks_dct_factors_and_keeps_quality():
    import torchvision.transforms.v2.functional as TF
    from skimage import data

    assert [jpeg_reduction(512, 512, r) for r in (0.5, 1.9, 2.0, 3.9, 4.2, 100)] == [1, 1, 2, 2, 4, 8]
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, "JPEG", quality=90)  # 512 x 512
    full, scale_full = decode_rgb(buffer.getvalue())
    half, scale_half = decode_rgb(buffer.getvalue(), reduce=2.5)
    assert full.shape == (512, 512, 3) and half.shape == (256, 256, 3)
    assert (scale_full, scale_half) == (1.0, 0.5)
    full = torch.from_numpy(full).permute(2, 0, 1)
    for size, scale in [(64, 1.0), (64, 0.3), (96, 0.3), (128, 0.5)]:
        views = RandomViews([CropGroup(1, size, [scale, scale], [1.0, 1.0])], flip=False)
        out = views(buffer.getvalue(), torch.Generator().manual_seed(0))
        x0, y0, x1, y1 = (out["boxes"][0] * 512).round().long().tolist()  # the box really cropped
        reference = TF.resized_crop(full, y0, x0, y1 - y0, x1 - x0, [size, size], antialias=True)
        # DCT-domain downscaling is a box filter, torchvision's a triangle one: close, not equal
        assert (out["views"][0][0].float() - reference.float()).abs().mean() < 4.0


def test_config_errors_name_the_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("spec: /x\nbatch_sise: 3\n")
    with pytest.raises(ConfigError, match="batch_sise"):
        load_config(DataConfig, recipe)
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(DataConfig, overrides=["spec=/x", "batch_size=many"])
    assert load_config(DataConfig, overrides=["spec=/x", "views=[{count: 4, size: 32}]"]).views[0].count == 4


def test_skip_warnings_name_shard_and_key_and_are_rate_limited(caplog):
    counter = SkipCounter(warn_every_s=3600, first_warnings=2)
    with caplog.at_level(logging.WARNING, logger="vispre.data"):
        for i in range(50):
            counter.add("decode", "s3://bucket/shard-00007.tar", f"key{i}")
    assert len(caplog.records) == 2
    assert "shard-00007.tar" in caplog.records[0].getMessage() and "key0" in caplog.records[0].getMessage()
    assert counter.samples == 50 and counter.shards["s3://bucket/shard-00007.tar"] == 50


def test_fsspec_url_scheme(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    directory, keys = make_image_shards(tmp_path, [4, 5])
    memory = fsspec.filesystem("memory")
    for name in ("shard-00000.tar", "shard-00001.tar", "sizes.json"):
        memory.pipe(f"/bucket/{name}", (directory / name).read_bytes())
    spec = "memory://bucket/shard-{00000..00001}.tar"
    assert parse_spec(spec)[0].num_samples == 9
    loader = build_loader(DataConfig(spec=spec, format="labelled", eval_size=8, resampled=False, batch_size=4,
                                     workers=0))
    assert sorted(k for b in loader for k in b["__key__"]) == sorted(keys)


def test_cli_inspect_json_and_write_sizes(tmp_path, capsys):
    directory, _ = make_image_shards(tmp_path, [3, 4], write_sizes=False)
    bad = tmp_path / "bad"
    from vispre.data.shard_writer import write_shard

    write_shard(bad / "b-00000.tar", [{"__key__": "x", "jpg": b"junk"}, {"__key__": "y", "jpg": jpeg()}])
    assert cli(["shards", "inspect", f"{directory}::{bad}", "--json", "--decode"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["samples"], report["bad"]) == (9, 1)
    assert [s["samples"] for s in report["shards"]] == [3, 4, 2]
    assert report["shards"][2]["skipped"] == {"decode": 1}
    assert cli(["shards", "inspect", str(directory), "--write-sizes", "--json"]) == 0
    assert json.loads((directory / "sizes.json").read_text()) == {"shard-00000.tar": 3, "shard-00001.tar": 4}


def test_cli_help_explains_itself(capsys):
    for argv in (["--help"], ["shards", "--help"], ["shards", "write", "--help"], ["shards", "inspect", "--help"],
                 ["shards", "stream", "--help"]):
        with pytest.raises(SystemExit) as exit:
            cli(argv)
        assert exit.value.code == 0
        assert "usage: vispre" in capsys.readouterr().out
