"""Issue 14, the training side: a run survives what clusters and users do to it.

Stop signals (a real subprocess for SIGTERM, real signals in-process for SIGINT and SIGUSR1, one rank of
two under accelerate launch), the output-directory lock (a real second process), the rerun policy, NaN
losses, a full disk, leftover temporary checkpoints, corrupt or mistyped checkpoints, padding batches under
DDP (two ranks against one process on the same samples), and user errors as short messages with exit 2.
"""

import errno
import importlib.util
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.shards import make_image_shards
from tests.test_distributed import accelerate_launch
from tests.test_methods import TINY_MODEL
from vispre.cli import main
from vispre.pretrain import checkpoint as checkpoint_module
from vispre.pretrain.checkpoint import CheckpointWriteError, NonFiniteCheckpoint, save_checkpoint
from vispre.pretrain.loop import NonFiniteLoss, Preempted, Trainer, param_groups
from vispre.pretrain.recipe import load_recipe
from vispre.utils.errors import EXIT_NONFINITE, EXIT_PREEMPTED, EXIT_USER_ERROR, UserError
from vispre.utils.runlock import LOCK_FILE, DirectoryLocked, RunLock

ROOT = Path(__file__).parents[1]
RECIPE = "name: robust\nmethod:\n  name: dino\n"


def tiny(shards, out, *extra):
    return [*TINY_MODEL, f"data.spec={shards}", "data.batch_size=4", "data.workers=0", "data.samples_per_epoch=64",
            "data.shuffle_buffer=4", "data.views=[{count: 2, size: 32, scale: [0.3, 1.0]}]", "method.name=dino",
            "method.dino.out_dim=32", "method.dino.hidden_dim=32", "method.dino.bottleneck_dim=16",
            "train.log_every=1", "train.diagnostics_every=0", "train.trackers=[]", "train.threads=1",
            "train.checkpoint_every_steps=1000", f"train.output_dir={out}", *extra]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_image_shards(tmp_path_factory.mktemp("robust") / "shards", [8] * 4)[0]


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def latest(out):
    return (out / "checkpoints" / "latest").read_text().strip()


def trainer(shards, out, *extra):
    return Trainer(load_recipe(None, tiny(shards, out, *extra)))


# -- signals ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_saves_and_exits_preempted_and_a_second_trainer_is_locked_out(tmp_path, shards, recipe, capsys):
    out = tmp_path / "run"
    # a loader worker too: a signal to the whole process group (Ctrl-C, SLURM) must not kill it mid-batch
    args = ["pretrain", str(recipe), *tiny(shards, out, "train.steps=100000", "data.workers=1")]
    log_file = tmp_path / "stderr.txt"
    with open(log_file, "w") as stderr:
        first = subprocess.Popen([sys.executable, "-m", "vispre", *args], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                 stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not ((out / "metrics.jsonl").exists() and len(rows(out)) >= 2):
            assert first.poll() is None, log_file.read_text()[-3000:]
            assert time.time() < deadline
            time.sleep(0.1)
        # a second trainer (this process) on the same directory: refused, naming the holder, writing nothing
        capsys.readouterr()
        assert main(args) == EXIT_USER_ERROR
        err = capsys.readouterr().err
        assert f"is in use by pid {first.pid} on {socket.gethostname()}" in err and "Traceback" not in err
        os.killpg(first.pid, signal.SIGTERM)  # the trainer and its loader worker, as scancel does
        assert first.wait(timeout=120) == EXIT_PREEMPTED
    finally:
        if first.poll() is None:
            first.kill()
    stderr = log_file.read_text()
    assert "preempted by SIGTERM: stopped at step" in stderr, stderr[-3000:]
    step = rows(out)[-1]["step"]  # the step in flight was finished, logged and saved
    assert latest(out) == f"checkpoint-{step:08d}"
    assert json.loads((out / "checkpoints" / latest(out) / "state.json").read_text())["step"] == step
    assert not (out / LOCK_FILE).exists()  # released on exit
    assert len({r["step"] for r in rows(out)}) == len(rows(out))  # one process wrote the log

    with open(out / "metrics.jsonl", "a") as f:  # rows a kill left after the checkpoint, and a torn line
        f.write(json.dumps({"step": step + 1, "loss": 0.0}) + "\n" + '{"step": ')
    resumed = trainer(shards, out, f"train.steps={step + 2}")
    resumed.fit(resume="latest")
    assert resumed.step == step + 2
    assert [r["step"] for r in rows(out)] == list(range(1, step + 3))  # one row per step


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGUSR1])
def test_sigint_and_sigusr1_finish_the_step_and_save(tmp_path, shards, sig):
    t = trainer(shards, tmp_path / "run", "train.steps=50")
    step = t.train_step

    def signalled(batches):
        if t.step == 1:
            os.kill(os.getpid(), sig)  # arrives during step 2
        return step(batches)

    t.train_step = signalled
    before = signal.getsignal(sig)
    with pytest.raises(Preempted, match=f"{sig.name}: stopped at step 2") as caught:
        t.fit()
    assert caught.value.step == 2 and latest(tmp_path / "run") == "checkpoint-00000002"
    assert signal.getsignal(sig) == before  # the handlers are put back


# -- two ranks: a signal on one rank stops both; padding does not shrink the step ---------------------------------
def load_toy():
    spec = importlib.util.spec_from_file_location("dist_robust", ROOT / "tests" / "scripts" / "dist_robust.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Toy


def single_process(steps, pad_scale=1.0):
    """The toy trained in one process on the same samples: each step's loss is the mean over the ranks' real
    batches. ``pad_scale=0.5``: what DDP's average gave before the fix on a step where one of two ranks pads."""
    torch.manual_seed(0)
    toy = load_toy()()
    optimizer = torch.optim.AdamW(param_groups(toy), lr=0.05, weight_decay=0.0)
    for per_rank in zip(*steps):
        real = [s for s in per_rank if s["valid"]]
        losses = [((toy.linear(torch.tensor(s["x"])).squeeze(1) - torch.tensor(s["y"])) ** 2).mean() for s in real]
        scale = pad_scale if len(real) < len(per_rank) else 1.0
        (scale * sum(losses) / len(losses)).backward()
        optimizer.step()
        optimizer.zero_grad()
    return torch.cat([toy.linear.weight.detach().double().flatten(), toy.linear.bias.detach().double()])


@pytest.mark.slow
def test_two_ranks_signal_on_one_and_padding_matches_one_process(tmp_path, shards):
    padding_shards, _ = make_image_shards(tmp_path / "uneven", [8, 4])  # rank 0: 2 batches, rank 1: 1 + 1 pad
    accelerate_launch(ROOT / "tests" / "scripts" / "dist_robust.py", tmp_path, shards, padding_shards, timeout=400)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    # SIGUSR1 reached rank 1 only: both ranks finished step 2 and stopped there, one checkpoint
    assert [r["signal"]["preempted_step"] for r in ranks] == [2, 2]
    assert ranks[1]["signal"]["signal"] == "SIGUSR1"
    assert latest(tmp_path / "signal") == "checkpoint-00000002"

    steps = [r["padding"]["steps"] for r in ranks]
    assert [[s["valid"] for s in rank] for rank in steps] == [[True, True], [True, False]]
    ddp = torch.tensor(ranks[0]["padding"]["weight"] + ranks[0]["padding"]["bias"], dtype=torch.float64)
    assert torch.allclose(ddp, torch.tensor(ranks[1]["padding"]["weight"] + ranks[1]["padding"]["bias"],
                                            dtype=torch.float64))
    reference = single_process(steps)
    assert torch.allclose(ddp, reference, atol=1e-6), (ddp - reference).abs().max()
    halved = single_process(steps, pad_scale=0.5)  # the bug this guards against is visible at this tolerance
    assert (halved - reference).abs().max() > 1e-4


# -- NaN ----------------------------------------------------------------------------------------------------
def poison(t, steps):
    """Make the loss NaN on the given (0-based) steps: a NaN loss gives NaN gradients, as a real one does."""
    forward = t.model.forward

    def nan_forward(batch):
        loss, metrics = forward(batch)
        return (loss * math.nan if t.step in steps else loss), metrics

    t.model.forward = nan_forward


def parameters(t):
    return torch.cat([p.detach().flatten().clone() for p in t.model.parameters()])


def fit_tracking_parameters(t) -> list:
    """Run ``t.fit()`` and return the flat parameters after every training step."""
    seen, step = [], t.train_step

    def tracking(batches):
        out = step(batches)
        seen.append(parameters(t))
        return out

    t.train_step = tracking
    t.fit()
    return seen


def test_nonfinite_loss_skips_the_step(tmp_path, shards):
    t = trainer(shards, tmp_path / "run", "train.steps=6", "train.nonfinite=skip")
    poison(t, {2, 3})
    seen = fit_tracking_parameters(t)
    assert torch.equal(seen[1], seen[2]) and torch.equal(seen[2], seen[3])  # steps 3 and 4 changed nothing
    assert not torch.equal(seen[3], seen[4])  # training went on
    assert [r["nonfinite"] for r in rows(tmp_path / "run")] == [0, 0, 1, 1, 0, 0]
    assert latest(tmp_path / "run") == "checkpoint-00000006"
    assert torch.isfinite(parameters(t)).all()


def test_nonfinite_stop_keeps_the_good_checkpoint(tmp_path, shards, capsys):
    out = tmp_path / "run"
    t = trainer(shards, out, "train.steps=8", "train.nonfinite=stop", "train.checkpoint_every_steps=2",
                "train.keep_checkpoints=1")
    poison(t, {3})
    with pytest.raises(NonFiniteLoss, match="step 4: non-finite loss"):
        t.fit()
    assert latest(out) == "checkpoint-00000002"
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-00000002"]
    assert not (out / LOCK_FILE).exists()


def test_too_many_nonfinite_skips_stop(tmp_path, shards):
    t = trainer(shards, tmp_path / "run", "train.steps=20", "train.max_nonfinite_skips=2")
    poison(t, set(range(1, 20)))
    with pytest.raises(NonFiniteLoss, match="3 in a row, more than train.max_nonfinite_skips=2"):
        t.fit()
    assert t.step == 4


def test_a_nonfinite_model_is_never_saved_or_exported(tmp_path, shards, capsys):
    out = tmp_path / "run"
    t = trainer(shards, out, "train.steps=2")
    t.fit()
    with torch.no_grad():
        next(t.model.parameters())[0] = math.nan
    t.step = 3
    with pytest.raises(NonFiniteCheckpoint, match="NaN or inf"):
        t.save()
    assert latest(out) == "checkpoint-00000002" and not (out / "checkpoints" / "checkpoint-00000003").exists()

    from safetensors.torch import load_file, save_file  # a NaN checkpoint written by something else

    weights = out / "checkpoints" / "checkpoint-00000002" / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name] * math.nan
    save_file(tensors, weights)
    assert main(["export", str(out), str(tmp_path / "export")]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "holds NaN or inf" in err and "refusing to export" in err and str(weights) in err
    assert not (tmp_path / "export").exists()


# -- the output directory ---------------------------------------------------------------------------------------
def test_rerun_needs_resume_or_overwrite(tmp_path, shards, recipe, capsys):
    out = tmp_path / "run"
    args = ["pretrain", str(recipe), *tiny(shards, out, "train.steps=2")]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"train.output_dir {out} already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert [r["step"] for r in rows(out)] == [1, 2]  # nothing appended
    assert main([*args, "--overwrite"]) == 0
    assert [r["step"] for r in rows(out)] == [1, 2]  # replaced, not duplicated
    assert main([*args, "--resume", "--overwrite"]) == EXIT_USER_ERROR


def test_stale_locks(tmp_path, shards, caplog):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    with caplog.at_level(logging.WARNING, logger="vispre"):
        trainer(shards, out, "train.steps=1").fit()
    assert any("taking over the stale lock" in r.message and "no longer runs" in r.message for r in caplog.records)
    assert not (out / LOCK_FILE).exists()

    (out / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0}))
    with pytest.raises(DirectoryLocked, match=f"on another host.*delete {out / LOCK_FILE}"):
        RunLock(out).acquire()

    (out / LOCK_FILE).unlink()
    with RunLock(out):  # held by a live process (this one, another lock object): refused
        with pytest.raises(DirectoryLocked, match=f"in use by pid {os.getpid()}"):
            RunLock(out).acquire()


def test_leftover_temporary_checkpoints_are_removed_on_start(tmp_path, shards):
    out = tmp_path / "run"
    trainer(shards, out, "train.steps=1").fit()
    left = out / "checkpoints" / ".tmp-checkpoint-00000005-4242"
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"half")
    trainer(shards, out, "train.steps=2").fit(resume="latest")
    assert not left.exists() and latest(out) == "checkpoint-00000002"


# -- a full disk -----------------------------------------------------------------------------------------------
class FullDisk:
    """A file on a full disk: every write fails with ENOSPC (as the kernel reports it)."""

    def __init__(self, *args, **kwargs):
        pass

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_full_disk_during_a_checkpoint_says_so(tmp_path, shards, monkeypatch):
    out = tmp_path / "run"
    t = trainer(shards, out, "train.steps=2")
    t.fit()
    real_open = open
    monkeypatch.setattr(checkpoint_module, "open",
                        lambda path, mode="r", *a, **k: FullDisk() if str(path).endswith(".pt") else
                        real_open(path, mode, *a, **k), raising=False)
    t.step = 3
    with pytest.raises(CheckpointWriteError, match=f"cannot write checkpoint {out}/checkpoints/checkpoint-00000003: "
                                                   "no space left on device"):
        t.save()
    assert latest(out) == "checkpoint-00000002"
    assert not list((out / "checkpoints").glob(".tmp-*"))  # nothing half-written is left


def test_full_disk_for_real_on_a_tiny_tmpfs(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        model = torch.nn.Linear(300, 300)  # 361 KB of weights on a 64 KiB filesystem
        with pytest.raises(CheckpointWriteError, match="checkpoint-00000001: no space left on device"):
            save_checkpoint(mount, 1, model, torch.optim.SGD(model.parameters(), lr=0.1), {})
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# -- corrupt or mistyped checkpoints ------------------------------------------------------------------------------
@pytest.mark.parametrize("damage, message", [
    (lambda c: (c / "state.json").write_text(json.dumps({**json.loads((c / "state.json").read_text()),
                                                         "step": 12.5})),
     "state.json: step must be a non-negative integer, got 12.5"),
    (lambda c: (c / "state.json").write_text("{not json"), "state.json: not valid JSON"),
    (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:100]),
     "model.safetensors: cannot read the weights"),
])
def test_a_bad_checkpoint_is_a_short_error(tmp_path, shards, recipe, capsys, damage, message):
    out = tmp_path / "run"
    args = ["pretrain", str(recipe), *tiny(shards, out, "train.steps=2")]
    assert main(args) == 0
    damage(out / "checkpoints" / "checkpoint-00000002")
    capsys.readouterr()
    assert main([*args, "train.steps=4", "--resume"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err and str(out / "checkpoints" / "checkpoint-00000002") in err
    assert "Traceback" not in err
    assert not (out / "checkpoints" / "checkpoint-00000004").exists()


# -- user errors: one message naming the file and field, exit 2 -----------------------------------------------------
@pytest.mark.parametrize("text, override, message", [
    ("name: x\ntrain: {steps: [1,\n", None, "line 3, column 1: YAML syntax error"),
    ("_base_: recipe.yaml\nname: x\n", None, "_base_ includes itself"),
    ("name: x\ntrain: {stepz: 3}\n", None, "train.stepz"),
    ("name: x\ntrain: {steps: many}\n", None, "train.steps"),
    (RECIPE, "train.steps=0", "train.steps: must be >= 1, got 0"),
    (RECIPE, "train.log_every=0", "train.log_every: must be >= 1, got 0"),
    (RECIPE, "train.grad_accum=0", "train.grad_accum: must be >= 1, got 0"),
    (RECIPE, "train.keep_checkpoints=-1", "train.keep_checkpoints: must be >= 0, got -1"),
    (RECIPE, "optim.warmup_fraction=1.5", "optim.warmup_fraction: must be in [0, 1], got 1.5"),
    (RECIPE, "optim.ema_momentum=-0.1", "optim.ema_momentum: must be in [0, 1]"),
    (RECIPE, "data.views=[{count: 2, size: 0}]", "data.views.0.size: must be >= 1, got 0"),
    (RECIPE, "data.batch_size=-4", "data.batch_size: must be >= 1, got -4"),
])
def test_user_errors_are_one_message_and_exit_2(tmp_path, shards, capsys, text, override, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    args = ["pretrain", str(path), f"data.spec={shards}", f"train.output_dir={tmp_path / 'run'}",
            *([override] if override else [])]
    assert main(args) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err and str(path) in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 4
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    with pytest.raises(UserError):  # -v: the traceback
        main(["-v", *args])


def test_missing_recipe_is_one_line(tmp_path, capsys):
    assert main(["pretrain", str(tmp_path / "nope.yaml")]) == EXIT_USER_ERROR
    assert capsys.readouterr().err.strip() == f"vispre pretrain: error: recipe {tmp_path / 'nope.yaml'} does not exist"


def test_nonfinite_stop_exit_status(tmp_path, shards, recipe, monkeypatch, capsys):
    import vispre.pretrain.loop as loop

    fit = loop.Trainer.fit

    def poisoned_fit(self, *a, **k):
        poison(self, {0})
        return fit(self, *a, **k)

    monkeypatch.setattr(loop.Trainer, "fit", poisoned_fit)
    assert main(["pretrain", str(recipe), *tiny(shards, tmp_path / "run", "train.steps=3",
                                                "train.nonfinite=stop")]) == EXIT_NONFINITE
    assert "stopped: step 1: non-finite loss" in capsys.readouterr().err


def test_a_method_config_can_check_its_values(monkeypatch):
    from vispre.methods.dino import DINOConfig
    from vispre.utils.errors import ValueCheckError

    def check_values(self, checks):
        checks.between("teacher_temp", self.teacher_temp, 0, 1, open_low=True)

    monkeypatch.setattr(DINOConfig, "check_values", check_values, raising=False)
    with pytest.raises(ValueCheckError, match=r"method\.dino\.teacher_temp: must be in \(0, 1\], got 0.0"):
        load_recipe(None, ["data.spec=x", "method.name=dino", "method.dino.teacher_temp=0"])


def test_a_dead_holders_forked_worker_delays_the_lock_but_does_not_keep_it(tmp_path):
    """A SIGKILLed trainer's loader workers inherit its flock and outlive it by a few seconds: the next run waits
    for them (the holder's pid is dead) instead of calling the directory busy."""
    import subprocess
    import sys
    import time

    from vispre.utils.runlock import RunLock

    code = ("import os, sys, time\nfrom vispre.utils.runlock import RunLock\nRunLock(sys.argv[1]).acquire()\n"
            "if os.fork() == 0:\n    time.sleep(2)\n    os._exit(0)\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    start = time.monotonic()
    lock = RunLock(tmp_path).acquire()
    waited = time.monotonic() - start
    assert 0.5 < waited < 30, waited  # it waited for the orphan, then took the lock over
    lock.release()
