"""Two ranks on CPU through ``accelerate launch``: exact epochs, equal steps, exact resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shards import make_image_shards

SCRIPT = Path(__file__).parent / "scripts" / "dist_stream.py"


def accelerate_launch(script, *args, processes=2, timeout=300):
    """``accelerate launch`` for N CPU ranks (gloo). ``--cpu`` would start one process only."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(script), *map(str, args)]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    directory, keys = make_image_shards(root / "shards", sizes=[7, 8, 9, 10, 11, 12, 13, 14])
    accelerate_launch(SCRIPT, directory, root)
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]
    return ranks, keys


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["finite_w0", "finite_w1", "finite_w2", "resume_finite_w2"])
def test_two_ranks_finite_epoch_exactly_once(two_ranks, scenario):
    ranks, keys = two_ranks
    seen = ranks[0][scenario]["keys"] + ranks[1][scenario]["keys"]
    assert sorted(seen) == sorted(keys)  # every sample once over both ranks
    assert not set(ranks[0][scenario]["keys"]) & set(ranks[1][scenario]["keys"])
    assert ranks[0][scenario]["steps"] == ranks[1][scenario]["steps"]  # padded to equal steps


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["resampled_w2", "resume_resampled_w1"])
def test_two_ranks_resampled_equal_steps(two_ranks, scenario):
    ranks, keys = two_ranks
    slots = 4 if scenario.endswith("w2") else 2
    expected = -(-60 // (4 * slots)) * slots // 2  # full batches per rank
    assert ranks[0][scenario]["steps"] == ranks[1][scenario]["steps"] == expected
    assert all(len(r[scenario]["keys"]) == 4 * expected for r in ranks)
    assert set(ranks[0][scenario]["keys"] + ranks[1][scenario]["keys"]) <= set(keys)
