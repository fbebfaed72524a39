"""Bad shards and bad samples: every good sample arrives, every bad one is counted, nothing hangs."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.shards import jpeg, make_image_shards
from vispre.data import DataConfig, build_loader
from vispre.data.shard_writer import update_sizes, write_shard


def png_with_size(width, height) -> bytes:
    """A real 8x8 PNG whose IHDR claims ``width`` x ``height`` (a decompression bomb's header)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = bytearray(data[12:29])  # b'IHDR' + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def encoded(mode, fmt, **kw) -> bytes:
    rs = np.random.RandomState(1)
    img = Image.fromarray((rs.rand(24, 30, 3) * 255).astype(np.uint8))
    if mode == "P":
        img = img.quantize(16)
    else:
        img = img.convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kw)
    return buffer.getvalue()


GOOD = {
    "rgb": jpeg(seed=3),
    "grey": encoded("L", "JPEG"),
    "cmyk": encoded("CMYK", "JPEG"),
    "png_alpha": encoded("RGBA", "PNG"),
    "palette": encoded("P", "PNG"),
    "grey_alpha": encoded("LA", "PNG"),
    "webp": encoded("RGB", "WEBP"),
}
BAD = {
    "zero_byte": (b"", "empty"),
    "garbage": (b"this is not an image" * 10, "decode"),
    "truncated_jpeg": (jpeg(seed=4, width=64, height=64)[:200], "decode"),
    "huge_header": (png_with_size(50_000, 50_000), "too_large"),
}


def test_corrupt_suite(tmp_path):
    samples = [{"__key__": f"good_{name}", "jpg" if name in ("rgb", "grey", "cmyk") else "png": data, "cls": i}
               for i, (name, data) in enumerate(GOOD.items())]
    samples += [{"__key__": f"bad_{name}", "jpg": data, "cls": 0} for name, (data, _) in BAD.items()]
    samples += [{"__key__": "bad_no_image", "cls": 1, "txt": "caption only"},
                {"__key__": "bad_no_cls", "jpg": jpeg(seed=5)},
                {"__key__": "bad_cls_text", "jpg": jpeg(seed=6), "cls": "cat"}]
    write_shard(tmp_path / "mixed-00000.tar", samples)

    # a truncated tar: the cut falls inside the data of the 4th sample's image
    whole = write_shard(tmp_path / "full.tar", [{"__key__": f"trunc{i}", "jpg": jpeg(seed=10 + i), "cls": i}
                                                for i in range(6)])
    raw = (tmp_path / "full.tar").read_bytes()
    (tmp_path / "full.tar").unlink()
    cut = raw.find(b"trunc3.jpg") + 512 + 300
    (tmp_path / "cut-00001.tar").write_bytes(raw[:cut])
    (tmp_path / "empty-00002.tar").write_bytes(b"")
    (tmp_path / "noise-00003.tar").write_bytes(bytes(range(256)) * 8)
    assert whole == 6

    loader = build_loader(DataConfig(spec=str(tmp_path), format="labelled", eval_size=16, resampled=False,
                                     batch_size=3, workers=2, max_pixels=10_000_000))
    batches = list(loader)
    seen = [k for b in batches for k in b["__key__"]]
    expected_good = [f"good_{n}" for n in GOOD] + ["trunc0", "trunc1", "trunc2"]
    assert sorted(seen) == sorted(expected_good)
    for b in batches:  # every good image became 3-channel RGB
        assert b["image"].shape[1:] == (3, 16, 16)

    reasons = loader.epochs[-1]["skipped"]["reasons"]
    assert reasons["empty"] == 1
    assert reasons["decode"] == 2  # garbage + truncated jpeg
    assert reasons["too_large"] == 1
    assert reasons["missing_key"] == 2  # no image, no cls
    assert reasons["bad_label"] == 1
    assert reasons["incomplete_sample"] == 1  # trunc3, cut in half
    assert reasons["truncated_shard"] >= 2  # the cut tar and the noise (empty tar is just empty)
    assert loader.epochs[-1]["skipped"]["samples"] == 8  # 7 bad samples in 'mixed' + trunc3
    assert loader.epochs[-1]["samples"] == len(expected_good)


def test_alpha_is_composited_on_white():
    from vispre.data.decode import decode_rgb

    buffer = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(buffer, "PNG")
    array, _ = decode_rgb(buffer.getvalue())
    assert array.shape == (4, 4, 3) and (array == 255).all()


def test_duplicate_member_is_counted_not_fatal(tmp_path):
    import tarfile

    with tarfile.open(tmp_path / "dup-00000.tar", "w") as tar:
        for name, data in [("a.jpg", jpeg(seed=1)), ("a.cls", b"1"), ("a.jpg", jpeg(seed=2)),
                           ("b.jpg", jpeg(seed=3)), ("b.cls", b"2")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    loader = build_loader(DataConfig(spec=str(tmp_path), format="labelled", eval_size=8, resampled=False,
                                     batch_size=4, workers=0))
    batches = list(loader)
    assert batches[0]["__key__"] == ["a", "b"] or sorted(batches[0]["__key__"]) == ["a", "b"]
    assert loader.epochs[-1]["skipped"]["reasons"] == {"duplicate_member": 1}


def test_missing_shard_is_counted(tmp_path):
    directory, keys = make_image_shards(tmp_path, [4, 4])
    spec = f"{directory}/shard-{{00000..00002}}.tar"  # the third does not exist
    loader = build_loader(DataConfig(spec=spec, format="labelled", eval_size=8, resampled=False, batch_size=4,
                                     workers=0))
    with pytest.raises(TypeError):  # sizes.json does not know the missing shard: length unknown
        len(loader)
    assert sorted(k for b in loader for k in b["__key__"]) == sorted(keys)
    assert loader.epochs[-1]["skipped"]["reasons"] == {"unreadable_shard": 1}


def test_resampled_source_of_only_bad_shards_fails_clearly(tmp_path):
    (tmp_path / "x-00000.tar").write_bytes(b"garbage")
    update_sizes(tmp_path, {"x-00000.tar": 3})
    loader = build_loader(DataConfig(spec=str(tmp_path), format="labelled", eval_size=8, resampled=True,
                                     samples_per_epoch=8, batch_size=4, workers=0))
    with pytest.raises(RuntimeError, match="shards in a row gave no samples"):
        list(loader)
