"""Run under ``accelerate launch --multi_gpu --num_processes 2`` by tests/test_train.py: train a few
steps, then check that both ranks hold identical weights (DDP kept them in sync)."""

import json
import sys

from vispre.pretrain.loop import Trainer
from vispre.pretrain.recipe import load_recipe


def main():
    out_file, overrides = sys.argv[1], sys.argv[2:]
    trainer = Trainer(load_recipe(None, overrides))
    trainer.fit()
    model = trainer.accelerator.unwrap_model(trainer.model)
    checksum = sum(float(p.double().sum()) for p in model.parameters())
    target = sum(float(p.double().sum()) for p in model.base.target.parameters()) if hasattr(model, "base") else 0
    row = {"rank": trainer.accelerator.process_index, "world": trainer.accelerator.num_processes,
           "checksum": checksum, "target": target, "step": trainer.step, "epoch": trainer.loader.epoch}
    # one file per rank: fit() ends the process group (accelerator.end_training), so no gather here
    with open(f"{out_file}.rank{row['rank']}", "w") as f:
        json.dump(row, f)


if __name__ == "__main__":
    main()
