"""Progress bars (issue 16): one helper, items/s and ETA, on the main process only; off under ``vispre -q``
and when stderr is no terminal."""

import io

import numpy as np
import pytest
from PIL import Image

from vispre.cli import main
from vispre.utils import progress as progress_module
from vispre.utils.progress import enabled, progress, set_quiet


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    for name in ("VISPRE_PROGRESS", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    set_quiet(False)
    yield
    set_quiet(False)


def test_bars_only_on_a_terminal_of_the_main_process_and_not_quiet(monkeypatch):
    assert enabled(Terminal()) and not enabled(io.StringIO())  # a pipe or a log file: no bar
    monkeypatch.setenv("RANK", "1")
    assert not enabled(Terminal())  # another rank of a distributed run
    monkeypatch.delenv("RANK")
    set_quiet(True)
    assert not enabled(Terminal())
    set_quiet(False)
    monkeypatch.setenv("VISPRE_PROGRESS", "1")
    assert enabled(io.StringIO())  # forced on (vispre eval --progress)
    monkeypatch.setenv("VISPRE_PROGRESS", "0")
    assert not enabled(Terminal())


def test_the_global_quiet_flag_switches_bars_off(capsys):
    assert main(["-q", "recipes", "eval"]) == 0
    assert progress_module._QUIET and not enabled(Terminal())


def test_a_bar_shows_count_rate_and_eta(monkeypatch, capsys):
    monkeypatch.setenv("VISPRE_PROGRESS", "1")
    assert sum(progress(range(7), desc="demo", unit="img", mininterval=0)) == 21
    err = capsys.readouterr().err
    assert "demo" in err and "7/7" in err and "img/s" in err and "<00:00" in err  # count, rate, ETA
    set_quiet(True)
    assert list(progress(range(3), desc="demo")) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_shard_writing_shows_samples_against_the_total(tmp_path, monkeypatch, capsys):
    from vispre.data.convert import write_shards
    from vispre.data.sources import ImageFolderSource

    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(tmp_path / f"{i}.png")
    monkeypatch.setenv("VISPRE_PROGRESS", "1")
    write_shards(ImageFolderSource(tmp_path), tmp_path / "out", samples_per_shard=4)
    err = capsys.readouterr().err
    assert "out/shard:   0%" in err and "0/6 [" in err and "sample/s" in err  # the bar knows the total
    monkeypatch.delenv("VISPRE_PROGRESS")  # capsys is no terminal: no bar
    write_shards(ImageFolderSource(tmp_path), tmp_path / "out2", samples_per_shard=4)
    assert "/6 [" not in capsys.readouterr().err


def test_the_probe_grid_counts_its_steps(monkeypatch, capsys):
    import torch

    from vispre.evaluation.grid import GridOptimConfig, GridOptimizer, fit

    monkeypatch.setenv("VISPRE_PROGRESS", "1")
    head = torch.nn.Linear(4, 3)
    lrs = [(p, torch.tensor(0.1)) for p in head.parameters()]
    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(9)]
    assert fit(head, GridOptimizer(lrs, GridOptimConfig()), batches, 9, task="single") == 9
    err = capsys.readouterr().err
    assert "probe grid" in err and "0/9 [" in err and "step/s" in err
