"""The training loop: two CPU ranks stay in sync; a run killed with SIGKILL resumes exactly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.shards import make_image_shards
from tests.test_distributed import accelerate_launch
from tests.test_methods import TINY_AB, TINY_MODEL

ROOT = Path(__file__).parents[1]


def overrides(spec, out, *extra):
    return [*TINY_MODEL, f"data.spec={spec}", "data.weights=null", "data.batch_size=8", "data.workers=1",
            "data.samples_per_epoch=48",
            "data.shuffle_buffer=8", "data.views=[{count: 2, size: 32, scale: [0.3, 1.0]}, {count: 2, size: 16}]",
            "method.name=ab", "method.dino.out_dim=32", "method.dino.hidden_dim=32", "method.dino.bottleneck_dim=16",
            *TINY_AB, "method.ab.bootstrap_batch_size=8", "train.log_every=1", "train.diagnostics_every=0",
            "train.trackers=[]", "train.threads=1", f"train.output_dir={out}", *extra]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_image_shards(tmp_path_factory.mktemp("train") / "shards", [12] * 8)[0]


@pytest.mark.slow
def test_two_ranks_stay_in_sync(tmp_path, shards):
    result = tmp_path / "ranks.json"
    accelerate_launch(ROOT / "tests" / "scripts" / "dist_train.py", result,
                      *overrides(shards, tmp_path / "run", "train.steps=8", "train.checkpoint_every_steps=4"))
    ranks = [json.loads(Path(f"{result}.rank{r}").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # DDP averaged the same gradients on both
    assert ranks[0]["target"] == ranks[1]["target"]  # EMA targets in sync too
    assert ranks[0]["step"] == 8 and ranks[0]["epoch"] == 2  # epochs of 48 / (8 bootstrap images x 2 ranks) = 3 steps
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-00000008" / "model.safetensors").exists()


def run_pretrain(out, shards, *extra, background=False):
    cmd = [sys.executable, "-m", "vispre", "pretrain", str(ROOT / "recipes" / "demo" / "dino.yaml"),
           *overrides(shards, out, *extra)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def curve(out) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}  # a later row for the same step wins (the resumed run)


@pytest.mark.slow
def test_sigkill_then_resume_continues_the_same_curve(tmp_path, shards):
    steps = ["train.steps=14", "train.checkpoint_every_steps=5"]
    run_pretrain(tmp_path / "whole", shards, *steps)
    reference = curve(tmp_path / "whole")

    out = tmp_path / "killed"
    process = run_pretrain(out, shards, *steps, background=True)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not (latest.exists() and latest.read_text().strip() == "checkpoint-00000005"):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "checkpoints" / "checkpoint-00000014").exists()

    run_pretrain(out, shards, *steps, "--resume")
    resumed = curve(out)
    assert sorted(resumed) == list(range(1, 15))
    for step in range(6, 15):  # the same data order, augmentation and weights: the same losses
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
