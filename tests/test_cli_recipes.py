"""Shipped recipes (issue 16): ``vispre recipes`` lists them, commands take their names, a wheel carries them;
``vispre pretrain`` options and overrides in any order; ``--print-config`` with values still missing."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vispre.cli import build_parser, main
from vispre.commands.pretrain import parse_args_in_any_order
from vispre.utils.errors import EXIT_USER_ERROR
from vispre.utils.recipe_files import describe, resolve_recipe, shipped_recipes

ROOT = Path(__file__).resolve().parents[1]


def yaml_names(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))


def test_vispre_recipes_lists_every_shipped_recipe_with_its_first_comment_line(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    pretrain, evaluation = yaml_names(ROOT / "recipes"), yaml_names(ROOT / "eval")
    assert f"pretraining recipes (vispre pretrain NAME): {len(pretrain)} in" in out
    assert f"evaluation recipes (vispre eval NAME --encoder DIR): {len(evaluation)} in" in out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == pretrain + evaluation
    first_comment = (ROOT / "recipes/demo/simclr.yaml").read_text().splitlines()[0].lstrip("# ")
    assert any(line.split(None, 1) == ["demo/simclr", first_comment] for line in out.splitlines())
    assert main(["recipes", "eval"]) == 0
    assert "pretraining recipes" not in capsys.readouterr().out


def test_describe_is_the_first_comment_line(tmp_path):
    (tmp_path / "a.yaml").write_text("\n# Line one.\n# line two\nname: a\n")
    (tmp_path / "b.yaml").write_text("name: b\n# late comment\n")
    assert describe(tmp_path / "a.yaml") == "Line one."
    assert describe(tmp_path / "b.yaml") == ""


@pytest.mark.parametrize("name", ["demo/simclr", "demo/simclr.yaml", "recipes/demo/simclr.yaml"])
def test_a_shipped_pretrain_recipe_by_name(name, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # not in the checkout: the names resolve to the shipped files
    assert Path(resolve_recipe(name, "pretrain")) == ROOT / "recipes/demo/simclr.yaml"
    assert main(["pretrain", name, "--print-config"]) == 0
    assert "name: simclr_demo" in capsys.readouterr().out


def test_a_shipped_eval_recipe_by_name(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "demo_digits", "--print-config"]) == 0
    assert "name: demo_digits" in capsys.readouterr().out


def test_an_unknown_recipe_name_is_one_line_naming_it(capsys):
    assert main(["pretrain", "no/such_recipe"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "recipe no/such_recipe: no such file" in err and "vispre recipes" in err
    assert main(["pretrain", "demo_digits"]) == EXIT_USER_ERROR  # an eval recipe given to pretrain
    assert "demo_digits is an eval recipe (vispre eval demo_digits)" in capsys.readouterr().err


def pretrain_args(*argv):
    return parse_args_in_any_order(build_parser().parse_args(["pretrain", *argv]))


@pytest.mark.parametrize("argv", [
    ["R", "train.steps=3", "--resume", "data.batch_size=4"],
    ["R", "--resume", "train.steps=3", "data.batch_size=4"],
    ["R", "train.steps=3", "data.batch_size=4", "--resume"],
    ["R", "--print-config", "train.steps=3", "--resume", "data.batch_size=4"],
])
def test_resume_and_overrides_in_any_order(argv):
    args = pretrain_args(*argv)
    assert args.recipe == "R" and args.resume == "latest"
    assert args.overrides == ["train.steps=3", "data.batch_size=4"]
    assert args.print_config == ("--print-config" in argv) and args.overwrite is False


def test_resume_from_a_given_checkpoint_keeps_its_path():
    args = pretrain_args("R", "--resume", "runs/x/checkpoints/checkpoint-00000010", "train.steps=3")
    assert args.resume == "runs/x/checkpoints/checkpoint-00000010" and args.overrides == ["train.steps=3"]


def test_print_config_shows_missing_values_instead_of_failing(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel: {name: vit_tiny_patch16_224}\n")  # no data.spec
    assert main(["pretrain", str(recipe), "--print-config", "train.steps=7"]) == 0
    out = capsys.readouterr().out
    assert "spec: ???" in out and "steps: 7" in out and out.rstrip().endswith("missing required value(s): data.spec")
    assert main(["pretrain", str(recipe)]) == EXIT_USER_ERROR  # training itself still refuses it
    assert "missing required value(s): data.spec" in capsys.readouterr().err
    assert main(["eval", "cifar10", "--print-config"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("missing required value(s): test.path, train.path")


@pytest.mark.slow
def test_a_built_wheel_carries_the_recipes_and_their_bases_resolve(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("vispre", "recipes", "eval"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(tmp_path / "whl")], check=True, capture_output=True, timeout=300, cwd=src)
    wheel = next((tmp_path / "whl").glob("vispre-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n[len("vispre/_recipes/"):-5] for n in names if n.startswith("vispre/_recipes/")) == \
        yaml_names(ROOT / "recipes")
    assert sorted(n[len("vispre/_eval_recipes/"):-5] for n in names if n.startswith("vispre/_eval_recipes/")) == \
        yaml_names(ROOT / "eval")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    # the installed package (not this checkout) lists and resolves them, _base_: ../cc12m/... included
    code = ("from vispre.utils.recipe_files import recipe_root, shipped_recipes; import vispre.pretrain.recipe as r;"
            "print(recipe_root('pretrain')); print(len(shipped_recipes('eval')));"
            "cfg = r.load_recipe(str(recipe_root('pretrain') / 'coco/ab_dino.yaml')); print(cfg.name)")
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(tmp_path / "site"), "PATH": ""},
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert out[0] == str(tmp_path / "site/vispre/_recipes") and int(out[1]) == len(shipped_recipes("eval"))
    assert out[2] == "ab_dino_coco_vits16"


@pytest.mark.parametrize("argv", [
    ["--resume", "R.yaml"],
    ["--resume", "R.yaml", "train.steps=3"],
    ["--resume", "demo/simclr", "train.steps=3", "--overwrite"],
])
def test_resume_before_the_recipe_still_reads_the_recipe(argv):
    args = pretrain_args(*argv)
    assert args.recipe == argv[1] and args.resume == "latest"
    assert args.overrides == argv[2:3] and args.overwrite == ("--overwrite" in argv)


def test_a_checkpoint_then_the_recipe_and_no_recipe_at_all(capsys):
    args = pretrain_args("--resume", "runs/x/checkpoints/checkpoint-00000010", "R.yaml", "train.steps=3")
    assert (args.recipe, args.resume, args.overrides) == (
        "R.yaml", "runs/x/checkpoints/checkpoint-00000010", ["train.steps=3"])
    assert main(["pretrain"]) == EXIT_USER_ERROR
    assert "a recipe is required" in capsys.readouterr().err
