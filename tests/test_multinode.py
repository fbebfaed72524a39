"""Two accelerate "machines" on this host (``--num_machines 2 --machine_rank 0|1 --main_process_ip 127.0.0.1``,
one CPU process each, gloo): what a cluster user relies on. The launches are the README's multi-node lines with
``--num_processes 2`` (the total), on CPU through ``ACCELERATE_USE_CPU=1`` (``--cpu`` would bypass torchrun)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.shards import make_image_shards
from tests.test_train import overrides

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "multinode.py"
RECIPE = ROOT / "recipes" / "demo" / "dino.yaml"
ENV = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine(rank: int, port: int, *program, rendezvous_timeout: int = 60, output=subprocess.PIPE) -> subprocess.Popen:
    """One machine's launcher: torchrun's static rendezvous at 127.0.0.1:port, waiting at most
    ``rendezvous_timeout`` seconds for the other machine."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
           "--machine_rank", str(rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(port), "--rdzv_conf", f"timeout={rendezvous_timeout}",
           "--mixed_precision", "no", "--dynamo_backend", "no", *map(str, program)]
    return subprocess.Popen(cmd, env=ENV, stdout=output, stderr=subprocess.STDOUT if output is not subprocess.PIPE
                            else subprocess.PIPE, text=True, start_new_session=True)


def two_machines(logs: Path, *program, timeout: int = 180) -> None:
    """Both machines at once. Their output goes to files: a full pipe would stall a rank, and with it the other
    rank's collectives."""
    port, processes = free_port(), []
    for rank in (0, 1):
        log = open(logs / f"machine{rank}.log", "w")
        processes.append((machine(rank, port, *program, output=log), log))
    wait_all(processes, "machine", timeout)


def wait_all(processes, what: str, timeout: int = 180) -> None:
    """Every (process, log file) must exit 0; on any failure, kill what still runs (each its own group)."""
    try:
        for rank, (p, log) in enumerate(processes):
            p.wait(timeout=timeout)
            log.close()
            assert p.returncode == 0, f"{what} {rank}:\n{Path(log.name).read_text()[-5000:]}"
    finally:
        for p, log in processes:
            if p.poll() is None:  # the launcher and its ranks: their own process group
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    shards, keys = make_image_shards(root / "shards", [12] * 8)
    run = root / "run"
    # the user's command: 4 steps, a checkpoint at step 4
    two_machines(root, "-m", "vispre", "pretrain", RECIPE, *overrides(shards, run, "train.steps=4",
                                                               "train.checkpoint_every_steps=4"))
    first = {"checkpoints": sorted(p.name for p in (run / "checkpoints").iterdir()),
             "metrics": [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()],
             "weights": load_file(run / "checkpoints" / "checkpoint-00000004" / "model.safetensors")}
    # both machines resume it and train to step 8; each reads one finite epoch through its loader first
    two_machines(root, SCRIPT, root, *overrides(shards, run, "train.steps=8", "train.checkpoint_every_steps=4"))
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in (0, 1)]
    return ranks, keys, first, run


@pytest.mark.slow
def test_ranks_world_and_nodes(cluster):
    ranks, *_ = cluster
    assert [(r["rank"], r["world"], r["node"], r["local_rank"], r["local_world"]) for r in ranks] == \
        [(0, 2, 0, 0, 1), (1, 2, 1, 0, 1)]  # rank r on machine r, one process each


@pytest.mark.slow
def test_each_machine_reads_its_own_share_of_a_finite_epoch(cluster):
    ranks, keys, *_ = cluster
    seen = ranks[0]["keys"] + ranks[1]["keys"]
    assert sorted(seen) == sorted(keys)  # none lost, none twice over both machines
    assert not set(ranks[0]["keys"]) & set(ranks[1]["keys"])
    assert len(ranks[0]["keys"]) == len(ranks[1]["keys"]) == len(keys) // 2  # 8 shards of 12: 4 each


@pytest.mark.slow
def test_one_checkpoint_by_the_main_process_resumed_by_both(cluster):
    ranks, _, first, run = cluster
    assert first["checkpoints"] == ["checkpoint-00000004", "latest"]  # one writer, no temporary directories
    assert first["metrics"] == [1, 2, 3, 4]  # one metrics writer: each step logged once
    on_disk = sum(float(first["weights"][k].double().sum()) for k in sorted(first["weights"]))
    for r in ranks:
        assert r["resumed_from"] == "checkpoint-00000004" and r["resumed_step"] == 4
        assert r["resumed_checksum"] == on_disk  # both machines hold the checkpoint's weights exactly
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]
    assert (run / "checkpoints" / "checkpoint-00000008" / "model.safetensors").exists()


@pytest.mark.slow
def test_weights_in_sync_after_training(cluster):
    ranks, *_ = cluster
    assert ranks[0]["step"] == ranks[1]["step"] == 8
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # DDP averaged the same gradients across machines
    assert ranks[0]["target"] == ranks[1]["target"]  # and the EMA targets moved alike
    assert ranks[0]["checksum"] != ranks[0]["resumed_checksum"]


@pytest.mark.slow
def test_a_machine_that_never_arrives_is_a_clear_error_in_bounded_time(tmp_path):
    """Only machine 0 starts: the rendezvous gives up after --rdzv_conf timeout=5 with a message saying so."""
    shards, _ = make_image_shards(tmp_path / "shards", [4, 4])
    start = time.monotonic()
    p = machine(0, free_port(), "-m", "vispre", "pretrain", RECIPE, *overrides(shards, tmp_path / "run"),
                rendezvous_timeout=5)
    _, stderr = p.communicate(timeout=120)
    assert p.returncode != 0
    assert time.monotonic() - start < 60
    assert "1/2 clients joined" in stderr, stderr[-3000:]
    assert not (tmp_path / "run").exists()  # no rank started: nothing written


@pytest.mark.slow
def test_srun_style_ranks_from_the_environment(tmp_path):
    """The README's preemption line: srun starts every rank itself (``exec env RANK=... LOCAL_RANK=...
    WORLD_SIZE=... LOCAL_WORLD_SIZE=... MASTER_ADDR=... MASTER_PORT=... python ...``, no accelerate launch);
    here two such ranks, one per "node", reach the same weights and one checkpoint."""
    shards, _ = make_image_shards(tmp_path / "shards", [12] * 8)
    result, port, processes = tmp_path / "ranks.json", free_port(), []
    args = overrides(shards, tmp_path / "run", "train.steps=4", "train.checkpoint_every_steps=4")
    for rank in (0, 1):
        env = dict(ENV, RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="1",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        log = open(tmp_path / f"rank{rank}.log", "w")
        processes.append((subprocess.Popen([sys.executable, str(ROOT / "tests" / "scripts" / "dist_train.py"),
                                            str(result), *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True), log))
    wait_all(processes, "rank")
    ranks = [json.loads(Path(f"{result}.rank{r}").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world"], r["step"]) for r in ranks] == [(0, 2, 4), (1, 2, 4)]
    assert ranks[0]["checksum"] == ranks[1]["checksum"] and ranks[0]["target"] == ranks[1]["target"]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["checkpoint-00000004", "latest"]
