"""Methods: every method's loss falls in a short run (AB's equations: tests/test_ab.py)."""

import json

import pytest
import torch

from tests.shards import make_image_shards
from vispre.methods import build_method
from vispre.methods.dino import pairwise_cross_entropy
from vispre.models import build_encoder
from vispre.pretrain.loop import pretrain
from vispre.pretrain.recipe import load_recipe

TINY_MODEL = ["model.name=vit_tiny_patch16_224", "model.kwargs={img_size: 32, patch_size: 8, embed_dim: 64, "
              "depth: 2, num_heads: 2}"]


TINY_AB = ["method.ab.decoder_width=32", "method.ab.decoder_heads=2", "method.ab.decoder_depth=1", "method.ab.dim=16",
           "method.ab.head_hidden_dim=32", "method.ab.bootstrap_batch_size=4",
           "method.ab.bootstrap_views=[{count: 4, size: 32, scale: [0.05, 1.0]}]"]


def tiny_recipe(tmp_path, spec, *overrides):
    return load_recipe(None, [
        *TINY_MODEL, f"data.spec={spec}", "data.batch_size=16", "data.workers=0", "data.samples_per_epoch=64",
        "data.shuffle_buffer=16", "data.views=[{count: 2, size: 32, scale: [0.3, 1.0]}, {count: 2, size: 16, "
        "scale: [0.1, 0.3]}]", "method.dino.out_dim=64", "method.dino.hidden_dim=64", "method.dino.bottleneck_dim=32",
        "method.simclr.proj_hidden_dim=64", "method.simclr.proj_dim=32", "method.clip.text=tiny",
        "method.clip.embed_dim=32", *TINY_AB, "optim.lr=2e-3",
        "optim.warmup_fraction=0.1", "train.steps=24", "train.log_every=4", "train.checkpoint_every_steps=1000",
        "train.diagnostics_every=0", "train.trackers=[]", f"train.output_dir={tmp_path / 'run'}", *overrides])


def fake_batch(b=4, groups=((2, 32), (2, 16)), seed=0):
    g = torch.Generator().manual_seed(seed)
    from vispre.views.boxes import candidate_boxes

    views = [torch.randint(0, 256, (b, n, 3, s, s), dtype=torch.uint8, generator=g) for n, s in groups]
    n_views = sum(n for n, _ in groups)
    boxes, flips = candidate_boxes(b, n_views, [0.1, 1.0], generator=g)
    return {"views": views, "boxes": boxes, "flips": flips, "valid": torch.ones(b, dtype=torch.bool)}


def build(cfg):
    return build_method(cfg.method, build_encoder(cfg.model.name, **cfg.model.kwargs))


def test_pairwise_cross_entropy_by_hand():
    log_q = torch.log_softmax(torch.randn(3, 4, 5), -1)
    p = torch.softmax(torch.randn(3, 2, 5), -1)
    mask = torch.arange(4)[:, None] != torch.arange(2)[None]
    pairs = [(v, g) for v in range(4) for g in range(2) if v != g]
    expected = torch.stack([-(p[:, g] * log_q[:, v]).sum(-1).mean() for v, g in pairs]).mean()
    assert torch.allclose(pairwise_cross_entropy(log_q, p, mask), expected)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    directory, _ = make_image_shards(tmp_path_factory.mktemp("data") / "shards", [16] * 4)
    return directory


def losses(out, key="loss"):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if key == "dino_kl":  # DINO's cross-entropy in excess of its target's entropy (what the student controls)
        return [r["dino_loss"] - r["teacher_entropy"] for r in rows]
    return [r[key] for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dino", "ab_dino", "simclr", "ab_simclr", "clip", "ab_clip", "ab_supervised"])
def test_loss_falls(tmp_path, shards, method):
    overrides = {
        "dino": ["method.name=dino"],
        "ab_dino": ["method.name=ab", "method.base=dino"],
        "simclr": ["method.name=simclr", "method.augment=simclr"],
        "ab_simclr": ["method.name=ab", "method.base=simclr", "method.augment=simclr"],
        "clip": ["method.name=clip", "method.augment=none"],
        "ab_clip": ["method.name=ab", "method.base=clip", "method.augment=none"],
        "ab_supervised": ["method.name=ab", "method.base=classifier", "method.classifier.num_classes=64",
                          f"annotation_data={{spec: {shards}, format: labelled, samples_per_epoch: 64, batch_size: 8, "
                          "workers: 0, views: [{count: 1, size: 32}]}"],
    }[method]
    cfg = tiny_recipe(tmp_path, shards, *overrides)
    out = pretrain(cfg)
    # DINO's raw loss rises early on while centring spreads the teacher's distribution (its entropy
    # grows towards log K); the KL to the teacher is what must fall. AB's TD loss must fall too.
    key = {"dino": "dino_kl", "ab_dino": "td_loss", "ab_simclr": "td_loss", "ab_clip": "td_loss",
           "ab_supervised": "td_loss"}.get(method, "loss")
    curve = losses(out, key)
    assert len(curve) == 6
    assert all(torch.isfinite(torch.tensor(losses(out))))
    assert sum(curve[-2:]) / 2 < sum(curve[:2]) / 2, curve  # falls

