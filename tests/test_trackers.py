"""Trackers (issue 16): a tracker that is not installed is an error before training; TensorBoard gets the loss
curve, the diagnostics and the resolved recipe as hparams."""

import json
from pathlib import Path

import pytest

from tests.test_train import overrides
from vispre.cli import main
from vispre.pretrain.trackers import checked_trackers, flat_hparams
from vispre.utils.errors import EXIT_USER_ERROR
from vispre.utils.typed_config import ConfigError

ROOT = Path(__file__).parents[1]
RECIPE = str(ROOT / "recipes" / "demo" / "dino.yaml")


def test_flat_hparams_are_scalars_and_strings():
    flat = flat_hparams({"a": {"b": 1, "c": [1, 2], "d": None, "e": {"f": "x", "g": True}}, "h": 0.5})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "a.d": "null", "a.e.f": "x", "a.e.g": True, "h": 0.5}


def test_an_uninstalled_or_unknown_tracker_is_an_error():
    pytest.importorskip("tensorboard")
    assert checked_trackers(["tensorboard"]) == ["tensorboard"] and checked_trackers([]) is None
    with pytest.raises(ConfigError, match=r"train.trackers: unknown tracker 'tensorbored'"):
        checked_trackers(["tensorbored"])
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"train.trackers: wandb is not installed \(pip install wandb\)"):
            checked_trackers(["tensorboard", "wandb"])


def test_missing_tracker_stops_pretrain_before_it_trains(tmp_path, image_shards, capsys):
    try:
        import wandb  # noqa: F401
        pytest.skip("wandb is installed here")
    except ImportError:
        pass
    out = tmp_path / "run"
    code = main(["pretrain", RECIPE, *overrides(image_shards[0], out, "train.steps=2"), "train.trackers=[wandb]"])
    assert code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "train.trackers: wandb is not installed" in err and "Traceback" not in err
    assert not (out / "checkpoints").exists()


def test_tensorboard_holds_the_loss_curve_diagnostics_and_the_recipe_as_hparams(tmp_path, image_shards, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = tmp_path / "run"
    assert main(["-q", "pretrain", RECIPE, *overrides(image_shards[0], out, "train.steps=4"),
                 "train.trackers=[tensorboard]", "train.diagnostics_every=2", "train.probe_images=8",
                 "optim.lr=0.0007"]) == 0
    assert "step/s" not in capsys.readouterr().err  # -q: not even the training loop's bar
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logdir = out / "dino_demo"
    scalars = EventAccumulator(str(logdir)).Reload()
    loss = [(e.step, e.value) for e in scalars.Scalars("loss")]
    assert loss == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in rows]  # every logged step, same values
    diagnostics = [k for k in rows[1] if k.startswith(("srank", "rankme"))]
    assert diagnostics and all(k in scalars.Tags()["scalars"] for k in diagnostics)
    assert [e.step for e in scalars.Scalars(diagnostics[0])] == [2, 4]
    # add_hparams writes its own event file in a sub-folder of the run's log dir: session_start_info holds them
    hparams = {}
    for events in logdir.glob("*/events.out.tfevents.*"):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    if data.HasField("session_start_info"):
                        hparams = {k: getattr(v, v.WhichOneof("kind"))
                                   for k, v in data.session_start_info.hparams.items()}
    assert hparams["optim.lr"] == pytest.approx(0.0007) and hparams["train.steps"] == 4
    assert hparams["data.spec"] == str(image_shards[0]) and hparams["name"] == "dino_demo"
    assert hparams["model.kwargs.depth"] == 2 and hparams["train.trackers"] == '["tensorboard"]'
