"""The paper's recipes: the CC12M set-up of Table 7 as --print-config resolves it, and the decoupled AB of
Table 3 reading its base-loss (annotation) images from the second stream and bootstrapping on the main one."""

from pathlib import Path

import pytest
import yaml

from tests.shards import make_image_shards
from tests.test_methods import TINY_AB, TINY_MODEL
from vispre.cli import main
from vispre.pretrain.recipe import load_recipe

ROOT = Path(__file__).parents[1]
GPUS = 8  # the recipes' batch sizes are per GPU, for 8 GPUs


def printed(capsys, recipe: str) -> dict:
    assert main(["pretrain", str(ROOT / "recipes" / recipe), "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("name, batch, bootstrap", [("dino", 1024, None), ("ab_dino", 512, 128),
                                                     ("simclr", 4096, None), ("ab_simclr", 2048, 512),
                                                     ("clip", 8192, None), ("ab_clip", 4096, 1024)])
def test_cc12m_recipes_are_table_7(capsys, name, batch, bootstrap):
    cfg = printed(capsys, f"cc12m/{name}.yaml")
    assert cfg["model"]["name"] == "vit_small_patch16_224"  # ViT-S/16
    assert cfg["optim"]["lr"] == 1e-3 and cfg["optim"]["lr_scaling"] == "none"  # the absolute lr, not scaled
    assert cfg["data"]["batch_size"] * GPUS == batch  # the base's batch; AB's annotation batch is base // 2
    if bootstrap is None:
        return
    ab = cfg["method"]["ab"]
    assert cfg["method"]["name"] == "ab" and ab["bootstrap_batch_size"] * GPUS == bootstrap  # base // 8
    assert [(g["count"], g["size"], g["scale"]) for g in ab["bootstrap_views"]] == [(4, 224, [0.05, 1.0])]
    assert ab["bootstrap_augment"] == "none" and ab["annotation_weight"] == ab["bootstrap_weight"] == 1.0
    ema = (cfg["optim"]["ema_momentum"], cfg["optim"]["ema_momentum_end"])
    assert ema == ((0.996, 0.996) if name == "ab_clip" else (0.996, 1.0))


def test_cc12m_base_views_and_optimiser(capsys):
    dino = printed(capsys, "cc12m/dino.yaml")
    assert [(v["count"], v["scale"]) for v in dino["data"]["views"]] == [(2, [0.4, 1.0]), (8, [0.05, 0.4])]
    assert dino["optim"]["clip_grad"] == 1.0 and dino["optim"]["weight_decay_end"] == 0.4
    clip = printed(capsys, "cc12m/clip.yaml")
    assert clip["optim"]["betas"] == [0.9, 0.98] and clip["method"]["clip"]["text"] == "ViT-S-16"
    assert [(v["count"], v["scale"]) for v in clip["data"]["views"]] == [(1, [0.5, 1.0])]


@pytest.mark.parametrize("dataset", ["coco", "epickitchens"])
@pytest.mark.parametrize("base", ["dino", "simclr"])
def test_decoupled_ab_reads_the_base_loss_images_from_the_second_stream(tmp_path, dataset, base):
    from vispre.pretrain.loop import Trainer

    main_stream, _ = make_image_shards(tmp_path / "main", [8, 8], prefix="scene")
    second, _ = make_image_shards(tmp_path / "second", [8, 8], prefix="curated")
    cfg = load_recipe(str(ROOT / "recipes" / dataset / f"ab_{base}_in1k.yaml"), [
        *TINY_MODEL, *TINY_AB, f"data.spec={main_stream}", f"annotation_data.spec={second}", "data.workers=0",
        "annotation_data.workers=0", "annotation_data.batch_size=4", "data.shuffle_buffer=4",
        "annotation_data.shuffle_buffer=4", "data.samples_per_epoch=16", "annotation_data.samples_per_epoch=16",
        "annotation_data.views=[{count: 2, size: 32}]", "method.dino.out_dim=32", "method.dino.hidden_dim=32",
        "method.dino.bottleneck_dim=16", "method.simclr.proj_hidden_dim=32", "method.simclr.proj_dim=16",
        "train.trackers=[]", f"train.output_dir={tmp_path / 'run'}"])
    assert cfg.annotation_data.format == "image"  # unlabeled: the paper's decoupled AB uses no labels
    trainer = Trainer(cfg)
    batch = next(iter(trainer.loader))
    assert all(url.startswith(str(second)) for url in batch["annotation"]["__url__"])  # base loss: second stream
    assert all(url.startswith(str(main_stream)) for url in batch["bootstrap"]["__url__"])  # bootstrap: main
    assert "cls" not in batch["annotation"]
    loss, metrics = trainer.model(batch)
    assert loss.isfinite() and metrics["td_loss"] > 0 and ("dino_loss" in metrics or "simclr_loss" in metrics)


def test_supervised_reward_ab_is_named_so_and_reads_labels(capsys):
    cfg = printed(capsys, "coco/ab_supervised_in1k.yaml")
    assert cfg["method"]["base"] == "classifier" and cfg["annotation_data"]["format"] == "labelled"
    assert not list((ROOT / "recipes").rglob("*curated*"))
