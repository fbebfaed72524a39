"""data.spec naming an image folder or a saved Hugging Face dataset (issue 16): one line that says which
``vispre shards write`` command converts it."""

import numpy as np
from PIL import Image

from tests.test_train import overrides
from vispre.cli import main
from vispre.data.plain_inputs import plain_input_hint
from vispre.utils.errors import EXIT_USER_ERROR

RECIPE = "demo/dino"


def image_folder(root):
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / c / "0.png")
    return root


def test_pretrain_on_an_image_folder_says_how_to_convert_it(tmp_path, capsys):
    folder = image_folder(tmp_path / "images")
    code = main(["pretrain", RECIPE, *overrides(folder, tmp_path / "run", "train.steps=1")])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER_ERROR and err.count("\n") == 0, err
    assert f"data.spec {folder} is a folder of images, not shards" in err
    assert f"'vispre shards write folder {folder} OUT_DIR'" in err and "Traceback" not in err


def test_shards_stream_on_a_saved_hf_dataset_says_how_to_convert_it(tmp_path, capsys):
    import datasets

    path = tmp_path / "hf"
    datasets.Dataset.from_dict({"label": [0, 1]}).save_to_disk(str(path))
    capsys.readouterr()  # datasets' own progress bar
    assert main(["shards", "stream", str(path)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"'vispre shards write hf {path} OUT_DIR'" in err


def test_other_folders_keep_the_plain_message(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert plain_input_hint(tmp_path) is None
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"")
    assert "vispre shards write video" in plain_input_hint(tmp_path)
