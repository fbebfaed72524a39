"""bench/gpu.py and its FLOP helper (bench/flops.py): counts checked by hand, the --tiny run end to end on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from flops import count_flops, peak_tflops, vit_b16_forward_gflops  # noqa: E402


def test_linear_layer_flops_by_hand():
    """A [3, 7] @ [7, 5] linear layer: forward 2 * in * out * batch; backward twice that (grad input and grad
    weight) when the input needs a gradient, once (grad weight only) when it does not. The bias adds none."""
    layer = torch.nn.Linear(7, 5)
    forward = 2 * 7 * 5 * 3
    x = torch.randn(3, 7, requires_grad=True)
    assert count_flops(lambda: layer(x))[1] == forward
    assert count_flops(lambda: layer(x).sum().backward())[1] == 3 * forward
    assert count_flops(lambda: layer(x.detach()).sum().backward())[1] == 2 * forward


def test_cpu_attention_is_counted():
    """SDPA on CPU runs a kernel torch's registry lacks: counted here as on CUDA, QK^T and AV = 2 x 2bhs^2d."""
    b, h, s, d = 2, 3, 5, 4
    q = torch.randn(b, h, s, d)
    assert count_flops(F.scaled_dot_product_attention, q, q, q)[1] == 2 * (2 * b * h * s * s * d)


def test_vit_b16_forward_is_timms_35_1_gflops():
    assert vit_b16_forward_gflops() == pytest.approx(35.1, abs=0.05)  # timm: 17.6 GMACs, 2 FLOPs per MAC


def test_peak_table_by_device_name():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989  # SXM
    assert peak_tflops("NVIDIA H100 PCIe") == 756
    assert peak_tflops("NVIDIA H200") == 989
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert peak_tflops("NVIDIA L40S") == 362
    assert peak_tflops("NVIDIA L4") == 121
    assert peak_tflops("Some Future GPU") is None


def tiny_vit_step_flops() -> int:
    """FLOPs of one supervised step of the --tiny ViT (patch 8 at 32 px: 16 patches + cls = 17 tokens, width 64,
    2 blocks, 1000 classes) per image, by hand. Linear layers: backward = 2x forward; the patch embedding's
    input (the image) needs no gradient: 1x; attention backward recomputes the scores: 5 matmuls for 2."""
    n, d, depth, classes = 17, 64, 2, 1000
    blocks = depth * 12 * n * d * d  # qkv 3d^2 + proj d^2 + MLP 2 x 4d^2, multiply-adds
    attention = depth * 2 * n * n * d  # QK^T and AV over all heads
    patch = 16 * (8 * 8 * 3) * d
    head = d * classes
    forward = 2 * (blocks + attention + patch + head)
    backward = 2 * (2 * blocks + 2.5 * attention + patch + 2 * head)
    return int(forward + backward)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--json", str(out)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads(out.read_text()), result.stdout


@pytest.mark.slow
def test_tiny_rows_present_with_throughput_and_flops(tiny):
    figures, stdout = tiny
    rows = {r["row"]: r for r in figures["rows"]}
    expected = {"supervised", "dino", "ab_dino", "simclr", "ab_simclr", "clip", "icvf"}
    assert expected <= set(rows)
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["flops_per_step"] > 0 and r["steps"] >= 2
        assert 0 <= r["data_wait"] < 1
        assert r["mfu"] is None  # a CPU has no bf16 peak in the table
        assert f"{r['images_per_s']:.1f}" in stdout  # the printed table carries the same figures
    assert rows["supervised"]["flops_per_image"] == tiny_vit_step_flops()
    # more views, more FLOPs: DINO's 2 + 8 crops > SimCLR's 2 > the supervised 1; AB adds its bootstrap batch
    assert rows["dino"]["flops_per_image"] > rows["simclr"]["flops_per_image"] > rows["supervised"]["flops_per_image"]
    assert rows["ab_dino"]["flops_per_image"] > rows["dino"]["flops_per_image"]
    assert figures["vit_b16_forward_gflops"] == pytest.approx(35.1, abs=0.05)


@pytest.mark.slow
def test_tiny_ratio_columns_are_consistent(tiny):
    figures, _ = tiny
    rows = {r["row"]: r for r in figures["rows"]}
    base = rows["supervised"]["images_per_s"]
    for r in rows.values():
        assert r["vs_supervised"] == pytest.approx(r["images_per_s"] / base, rel=1e-9)
    assert rows["supervised"]["vs_supervised"] == 1.0
    for ab, x in [("ab_dino", "dino"), ("ab_simclr", "simclr")]:
        assert rows[ab]["ab_over_base"] == pytest.approx(rows[x]["images_per_s"] / rows[ab]["images_per_s"], rel=1e-9)
    assert rows["dino"]["ab_over_base"] is None and rows["supervised"]["ab_over_base"] is None


@pytest.mark.slow
def test_lightly_row_does_dinos_work(tmp_path):
    """lightly's DINO (only where lightly is installed) on the same backbone, head sizes and crops as vispre's
    DINO row: the same FLOPs per image within 1% (vispre's step adds a few small matmuls of its own)."""
    pytest.importorskip("lightly")
    out = tmp_path / "lightly.json"
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--rows", "dino", "lightly_dino",
                    "--json", str(out)], check=True, capture_output=True, timeout=300, env=env)
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["lightly_dino"]["flops_per_image"] == pytest.approx(rows["dino"]["flops_per_image"], rel=0.01)
    assert rows["lightly_dino"]["ab_over_base"] == pytest.approx(
        rows["dino"]["images_per_s"] / rows["lightly_dino"]["images_per_s"], rel=1e-9)
