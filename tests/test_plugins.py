"""A new method is one file: a toy method with its own config dataclass, registered here, trains through
``vispre pretrain`` (in this process, and in a fresh one that imports it through the recipe's ``plugins``)."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.shards import make_image_shards
from tests.test_methods import TINY_MODEL
from vispre.cli import main
from vispre.methods import Method, register
from vispre.pretrain.recipe import load_recipe
from vispre.views.photometric import Photometric

ROOT = Path(__file__).parents[1]


@dataclass
class ToyConfig:
    scale: float = 1.0  # the loss is scale * mean squared pooled feature


@register("toy_energy", config=ToyConfig)
class ToyEnergy(Method):
    """Shrinks the encoder's pooled features: L = scale * mean f(x)^2 (no target network)."""

    def __init__(self, encoder, toy: ToyConfig, augment: str = "none"):
        super().__init__()
        self.online = nn.ModuleDict({"encoder": encoder})
        self.cfg = toy

    def forward(self, batch):
        device = next(self.parameters()).device
        images = Photometric.preset("none")(batch["views"][0][:, 0].to(device))
        loss = self.cfg.scale * self.online["encoder"](images).pooled.square().mean()
        return loss, {"toy_loss": loss.detach(), "toy_scale": self.cfg.scale}

    def export_encoder(self, which: str = "target"):
        return self.online["encoder"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_image_shards(tmp_path_factory.mktemp("plugin") / "shards", [8] * 2)[0]


def recipe_args(shards, out, *extra):
    return [*TINY_MODEL, f"data.spec={shards}", "data.weights=null", "data.batch_size=4", "data.workers=0",
            "data.samples_per_epoch=16",
            "data.shuffle_buffer=4", "data.views=[{count: 1, size: 32}]", "method.name=toy_energy",
            "method.toy_energy.scale=2.5", "train.steps=2", "train.log_every=1", "train.diagnostics_every=0",
            "train.trackers=[]", "train.threads=1", f"train.output_dir={out}", *extra]


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_registered_method_gets_its_recipe_section():
    cfg = load_recipe(None, ["data.spec=x", "method.name=toy_energy", "method.toy_energy.scale=3"])
    assert isinstance(cfg.method.toy_energy, ToyConfig) and cfg.method.toy_energy.scale == 3.0
    with pytest.raises(ValueError, match="toy_energy.scle"):
        load_recipe(None, ["data.spec=x", "method.toy_energy.scle=3"])  # typed: a typo names the key


def test_toy_method_trains_two_steps_through_the_cli(tmp_path, shards):
    out = tmp_path / "run"
    assert main(["pretrain", str(ROOT / "recipes" / "demo" / "dino.yaml"), *recipe_args(shards, out)]) == 0
    logged = rows(out)
    assert [r["step"] for r in logged] == [1, 2]
    assert all(r["toy_scale"] == 2.5 and r["toy_loss"] > 0 for r in logged)
    assert (out / "checkpoints" / "checkpoint-00000002" / "model.safetensors").exists()
    assert "toy_energy:\n    scale: 2.5" in (out / "config.yaml").read_text()


def test_plugins_field_imports_the_method_in_a_fresh_process(tmp_path, shards):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "vispre", "pretrain", str(ROOT / "recipes" / "demo" / "dino.yaml"),
           "plugins=[tests.test_plugins]", *recipe_args(shards, out, "train.steps=1")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert rows(out)[0]["toy_scale"] == 2.5
    unknown = subprocess.run(cmd[:5] + cmd[6:], env=env, capture_output=True, text=True, timeout=300)
    assert unknown.returncode != 0 and "toy_energy" in unknown.stderr  # without the plugin: not a method
    assert torch.isfinite(torch.tensor(rows(out)[0]["toy_loss"]))
