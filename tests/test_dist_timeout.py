"""train.dist_timeout_minutes: how long a collective waits for the other ranks (accelerate's process group)."""

from datetime import timedelta

import pytest

from tests.test_methods import tiny_recipe
from vispre.pretrain.loop import Trainer
from vispre.pretrain.recipe import load_recipe
from vispre.utils.errors import UserError


def test_the_process_group_timeout_is_the_recipes(tmp_path):
    assert load_recipe(None, ["data.spec=unused"]).train.dist_timeout_minutes == 10  # the default, as before
    trainer = Trainer(tiny_recipe(tmp_path, "unused", "method.name=dino", "train.dist_timeout_minutes=2.5"))
    # what accelerate hands init_process_group on a multi-process launch
    assert trainer.accelerator.init_handler.to_kwargs() == {"timeout": timedelta(seconds=150)}


def test_a_non_positive_timeout_is_refused():
    with pytest.raises(UserError, match=r"train.dist_timeout_minutes: must be > 0, got 0"):
        load_recipe(None, ["data.spec=unused", "train.dist_timeout_minutes=0"])
