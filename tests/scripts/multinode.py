"""Run on each of two accelerate "machines" (``--num_machines 2``, one CPU process each) by tests/test_multinode.py,
after a first ``vispre pretrain`` launch wrote a checkpoint into ``train.output_dir``:

1. one finite epoch of ``data.spec`` through this rank's loader: the keys it read;
2. the Trainer resumed from the latest checkpoint (``--resume``) and trained to ``train.steps``: the step and a
   checksum of the weights right after the resume (over the checkpoint file's tensors) and at the end.

Writes ``OUT/rank{R}.json`` per rank (fit() ends the process group, so nothing is gathered here).
"""

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from safetensors import safe_open

from vispre.data import build_loader
from vispre.pretrain.loop import Trainer
from vispre.pretrain.recipe import load_recipe

ROOT = Path(__file__).parents[2]


def checksum(tensors: dict, keys) -> float:
    return sum(float(tensors[k].double().sum()) for k in sorted(keys))


class RecordingTrainer(Trainer):
    """Records the step and the weights right after the resume. (A subclass, not a patched bound method: a
    Trainer kept alive by a reference cycle until interpreter exit hangs it there, see the test's note.)"""

    def resume(self, which):
        super().resume(which)
        checkpoints = self.out / "checkpoints"
        path = checkpoints / (checkpoints / "latest").read_text().strip() / "model.safetensors"
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
        self.row.update(resumed_from=path.parent.name, resumed_step=self.step,
                        resumed_checksum=checksum(self.accelerator.unwrap_model(self.model).state_dict(), keys))


def main():
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    trainer = RecordingTrainer(load_recipe(str(ROOT / "recipes" / "demo" / "dino.yaml"), overrides))
    acc, cfg = trainer.accelerator, trainer.cfg
    row = trainer.row = {"rank": acc.process_index, "world": acc.num_processes, "local_rank": acc.local_process_index,
                         "node": int(os.environ["GROUP_RANK"]), "local_world": int(os.environ["LOCAL_WORLD_SIZE"])}

    epoch = build_loader(replace(cfg.data, resampled=False, samples_per_epoch=None), acc.process_index,
                         acc.num_processes)
    row["keys"] = [k for batch in epoch for k, valid in zip(batch["__key__"], batch["valid"]) if valid]

    trainer.fit(resume="latest")
    model = acc.unwrap_model(trainer.model)
    row["step"] = trainer.step
    row["checksum"] = sum(float(p.double().sum()) for p in model.parameters())
    row["target"] = sum(float(p.double().sum()) for p in model.base.target.parameters())
    (out / f"rank{row['rank']}.json").write_text(json.dumps(row))


if __name__ == "__main__":
    main()
