"""A finished run's process exits: loader workers ignore SIGTERM (they leave stop signals to the training
process), so iterators still alive at interpreter exit would make multiprocessing's exit handler wait on them
forever. ``Trainer.fit`` closes its loaders when it ends."""

import subprocess
import sys
from pathlib import Path

from tests.shards import make_image_shards

ROOT = Path(__file__).parents[1]

# module level on purpose: the Trainer (and its AB PairedLoader) is still referenced at interpreter exit
SCRIPT = """
import sys
from tests.test_methods import tiny_recipe
from vispre.pretrain.loop import Trainer

cfg = tiny_recipe(__import__("pathlib").Path(sys.argv[1]), sys.argv[2], "method.name=ab", "method.base=dino",
                  "data.workers=1", "train.steps=2", "train.log_every=1")
trainer = Trainer(cfg)
trainer.fit()
print("steps", trainer.step, "workers", trainer.loader.loaders[trainer.loader.main].num_workers)
"""


def test_an_ab_run_with_loader_workers_exits_while_its_trainer_is_referenced(tmp_path):
    shards, _ = make_image_shards(tmp_path / "shards", [16] * 2)
    script = tmp_path / "fit_at_module_level.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(tmp_path), str(shards)], cwd=ROOT, capture_output=True,
                            text=True, timeout=90, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                                        "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "steps 2 workers 1" in result.stdout
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-00000002").is_dir()
