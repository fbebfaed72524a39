"""The hooks the training loop reads from a method besides its loss: which parameters a step leaves without
gradient (DDP's find_unused_parameters), how many samples a step loads (samples_per_s), and the srank probe
batch on a weighted mixture."""

import json

import pytest

from tests.test_ab import batches, make_ab
from tests.test_methods import tiny_recipe


@pytest.mark.parametrize("base_name", ["dino", "simclr", "clip"])
@pytest.mark.parametrize("weights", [("1.0", "1.0"), ("0", "1.0"), ("1.0", "0")])
def test_unused_parameters_are_declared_exactly_when_a_step_leaves_some(tmp_path, base_name, weights):
    annotation, bootstrap = weights
    ab = make_ab(tmp_path, base_name, f"method.ab.annotation_weight={annotation}",
                 f"method.ab.bootstrap_weight={bootstrap}")
    loss, _ = ab(batches())
    loss.backward()
    unused = [n for n, p in ab.named_parameters() if p.requires_grad and p.grad is None]
    assert ab.has_unused_parameters() == bool(unused), unused


def test_ab_with_one_loss_off_turns_on_ddps_search_and_counts_both_batches(tmp_path, image_shards):
    from vispre.pretrain.loop import Trainer

    off = Trainer(tiny_recipe(tmp_path / "a", image_shards[0], "method.name=ab", "method.base=dino",
                              "method.ab.annotation_weight=0", "method.ab.bootstrap_batch_size=4"))
    assert off.accelerator.ddp_handler.find_unused_parameters
    assert off.samples_per_step == 16 + 4  # the annotation batch and the bootstrap batch
    both = Trainer(tiny_recipe(tmp_path / "b", image_shards[0], "method.name=ab", "method.base=dino"))
    assert not both.accelerator.ddp_handler.find_unused_parameters


def test_srank_probe_reads_a_weighted_mixture(tmp_path, image_shards):
    from vispre.pretrain.loop import Trainer

    spec = f"{image_shards[0]}::{image_shards[0]}"
    trainer = Trainer(tiny_recipe(tmp_path, spec, "method.name=simclr", "data.weights=[3, 1]",
                                  "train.probe_images=8"))
    row = trainer.diagnostics()
    assert trainer.probe.shape[0] == 8 and row["srank"] > 0 and row["rankme"] > 0
    json.dumps(row)  # plain numbers for metrics.jsonl
