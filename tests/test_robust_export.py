"""Export folders are checked against their weights when read: a wrong config, corrupt files and a bad folder are
short errors that name the file (issue 14; the training-side cases are in test_robust_train.py)."""

import json
import shutil
from pathlib import Path

import pytest

from tests.shards import make_image_shards
from tests.test_robust_train import trainer
from vispre.cli import main
from vispre.utils.errors import EXIT_USER_ERROR

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_image_shards(tmp_path_factory.mktemp("robust_export") / "shards", [8] * 4)[0]


# -- export folders checked against their weights ----------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory, shards):
    from vispre.export.write import export

    root = tmp_path_factory.mktemp("export")
    trainer(shards, root / "run", "train.steps=1").fit()
    return export(root / "run", root / "encoder")


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.update(num_features=999), r"config.json: num_features is 999 but architecture"),
    (lambda d: d["model_args"].update(patch_size=16),
     r"model.safetensors does not match .*config.json .*patch_embed.proj.weight is \[64, 3, 8, 8\] in the file, "
     r"\[64, 3, 16, 16\] by config.json"),
    (lambda d: d.update(architecture="no_such_model"), r"config.json: architecture 'no_such_model' .* does not build"),
])
def test_export_config_is_checked_against_its_weights(exported, tmp_path, damage, message):
    from vispre.export.read import ExportError, load_encoder

    folder = tmp_path / "encoder"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    damage(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=message):
        load_encoder(folder)


def test_corrupt_export_files_name_the_file(exported, tmp_path):
    from vispre.export.read import ExportError, load_encoder

    assert load_encoder(exported).num_features == 64  # the intact export loads
    folder = tmp_path / "encoder"
    shutil.copytree(exported, folder)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    with pytest.raises(ExportError, match=f"{folder / 'model.safetensors'}: cannot read the weights"):
        load_encoder(folder)
    (folder / "config.json").write_text("{")
    with pytest.raises(ExportError, match=f"{folder / 'config.json'}: not valid JSON"):
        load_encoder(folder)


def test_a_bad_export_folder_is_a_user_error_on_the_command_line(exported, tmp_path, capsys):
    recipe = ROOT / "eval" / "demo_digits.yaml"
    if not recipe.exists():
        pytest.skip("no eval recipe to point at the export")
    folder = tmp_path / "encoder"
    shutil.copytree(exported, folder)
    (folder / "model.safetensors").write_bytes(b"garbage")
    assert main(["eval", str(recipe), "--encoder", str(folder)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"{folder / 'model.safetensors'}: cannot read the weights" in err and "Traceback" not in err
