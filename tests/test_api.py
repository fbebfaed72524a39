"""The README's Python API block runs (issue 16): the same calls, with overrides that make it tiny appended
(later overrides win), in a scratch folder."""

import json
import re
from pathlib import Path

import torch

import vispre
import vispre.api as api
from tests.test_evaluation import write_labelled_shards
from tests.test_train import overrides

ROOT = Path(__file__).parents[1]


def readme_api_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_api_block_runs_on_a_tiny_config(tmp_path, image_shards, monkeypatch, capsys):
    code = readme_api_block()
    imported = re.search(r"from vispre.api import (.*)", code).group(1).split(", ")
    assert all(callable(getattr(api, name)) for name in imported)
    probe = write_labelled_shards(tmp_path / "probe", 40, seed=0)
    tiny_train = [*overrides(image_shards[0], "runs/api", "train.steps=2", "train.checkpoint_every_steps=2")]
    tiny_eval = ["num_classes=3", f"train.path={probe}", f"test.path={probe}", "features.workers=0",
                 "features.batch_size=16", "features.n_last_blocks=2", "linear.n_last_blocks=[1,2]",
                 f"features.cache_dir={tmp_path / 'cache'}", "linear.epochs=2",
                 "linear.learning_rates=[0.1]", "linear.batch_size=16", "map.enabled=false", "decoder.enabled=false",
                 "fewshot.enabled=false", "knn.ks=[5]", "knn.report_k=5"]
    calls = {}

    def recording(name, extra):
        real = getattr(api, name)

        def call(*args, **kwargs):
            if extra is not None:  # the README's overrides, then the tiny ones
                args = (*args[:-1], [*args[-1], *extra]) if name == "load_recipe" else (*args[:2], [*args[2], *extra])
            calls[name] = result = real(*args, **kwargs)
            return result
        return call

    monkeypatch.chdir(tmp_path)
    namespace = {name: recording(name, tiny_train if name == "load_recipe" else tiny_eval if name == "run_eval"
                                 else None) for name in imported}
    exec(code.split("\n", 1)[1], namespace)  # noqa: S102  everything after the import line
    cfg, run, folder = calls["load_recipe"], calls["pretrain"], calls["export"]
    assert cfg.name == "simclr_demo" and cfg.train.steps == 2 and run == Path("runs/api")
    method = calls["create_method"]
    assert isinstance(method, torch.nn.Module) and type(method).__name__ == "AB"  # the tiny overrides' method
    assert type(method.export_encoder("target")).__name__ == "Encoder"
    assert (tmp_path / "runs/api/checkpoints/checkpoint-00000002").is_dir()
    assert (tmp_path / folder / "config.json").is_file()
    with torch.no_grad():
        assert calls["load_encoder"](torch.zeros(2, 3, 32, 32)).pooled.shape == (2, 64)
    results = calls["run_eval"]
    written = json.loads((tmp_path / folder / "eval" / "demo_digits" / "results.json").read_text())
    assert written["scores"] == results["scores"] and "linear/top1" in results["scores"]
    assert results["table"] in capsys.readouterr().out


def test_the_light_names_on_vispre_are_the_api_functions():
    assert vispre.load_recipe is api.load_recipe and vispre.run_eval is api.run_eval
    assert vispre.create_method is api.create_method and vispre.load_encoder is api.load_encoder
