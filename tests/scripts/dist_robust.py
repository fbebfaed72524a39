"""Run under ``accelerate launch --multi_gpu --num_processes 2`` (CPU, gloo) by tests/test_robust_train.py.

1. A stop signal on one rank only: SIGUSR1 reaches rank 1 during step 2; both ranks finish that step, one
   checkpoint is written, both raise Preempted at the same step.
2. Padding: a toy method (a linear map, AdamW, constant lr) on a finite epoch where rank 1 pads its second
   step. Each rank records the inputs of its steps and the parameters after training; the test repeats the
   training in one process on the same samples and compares.

Usage: dist_robust.py OUT_DIR SIGNAL_SHARDS PADDING_SHARDS
"""

import json
import os
import signal
import sys
from pathlib import Path

import torch

from tests.test_methods import TINY_MODEL
from vispre.methods.base import Method
from vispre.pretrain.loop import Preempted, Trainer, param_groups
from vispre.pretrain.recipe import load_recipe

COMMON = ["train.trackers=[]", "train.threads=1", "train.log_every=1", "train.diagnostics_every=0",
          "train.checkpoint_every_steps=1000"]


class Toy(Method):
    """loss = mean over the batch of (w . x + b - y)^2, x the 8x8 grey image, y its class / 100."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 1)

    @staticmethod
    def inputs(batch):
        x = batch["image"].float().mean(1).flatten(1) / 255  # [B, 64]
        y = batch["cls"].float() / 100
        return x, y

    def forward(self, batch):
        x, y = self.inputs(batch)
        loss = ((self.linear(x).squeeze(1) - y) ** 2).mean()
        return loss * batch["valid"].any().to(loss.dtype), {}


def preempted_by_one_rank(out: Path, shards: str) -> dict:
    cfg = load_recipe(None, [*TINY_MODEL, f"data.spec={shards}", "data.batch_size=4", "data.workers=0",
                             "data.samples_per_epoch=64", "data.shuffle_buffer=4", "method.name=dino",
                             "data.views=[{count: 2, size: 32, scale: [0.3, 1.0]}]", "method.dino.out_dim=32",
                             "method.dino.hidden_dim=32", "method.dino.bottleneck_dim=16", "train.steps=50",
                             f"train.output_dir={out}", *COMMON])
    trainer = Trainer(cfg)
    rank = trainer.accelerator.process_index
    step = trainer.train_step

    def signalled_step(batches):
        if rank == 1 and trainer.step == 1:  # during step 2, on rank 1 only
            os.kill(os.getpid(), signal.SIGUSR1)
        return step(batches)

    trainer.train_step = signalled_step
    try:
        trainer.fit()
    except Preempted as e:
        return {"preempted_step": e.step, "signal": e.signal_name, "path": str(e.path)}
    return {"preempted_step": None}


def padding(out: Path, shards: str) -> dict:
    cfg = load_recipe(None, [*TINY_MODEL, f"data.spec={shards}", "data.format=labelled", "data.eval_size=8",
                             "data.resampled=false", "data.shard_shuffle=false", "data.shuffle_buffer=0",
                             "data.batch_size=4", "data.workers=0", "method.name=dino", "optim.lr=0.05",
                             "optim.min_lr=0.05", "optim.lr_scaling=none", "optim.warmup_fraction=0",
                             "optim.weight_decay=0", "optim.weight_decay_end=0", "optim.clip_grad=0",
                             "train.steps=2", f"train.output_dir={out}", *COMMON])
    trainer = Trainer(cfg)  # the real loop and loader; the method is swapped for the toy below
    torch.manual_seed(0)
    toy = Toy()
    optimizer = torch.optim.AdamW(param_groups(toy), lr=0.05, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    trainer.method = toy
    trainer.model, trainer.optimizer = trainer.accelerator.prepare(toy, optimizer)
    seen = []
    step = trainer.train_step

    def recording_step(batches):
        def record():
            for batch in batches:
                x, y = Toy.inputs(batch)
                seen.append({"x": x.tolist(), "y": y.tolist(), "valid": bool(batch["valid"].any()),
                             "keys": list(batch["__key__"])})
                yield batch
        return step(record())

    trainer.train_step = recording_step
    trainer.fit()
    return {"steps": seen, "weight": toy.linear.weight.detach().double().flatten().tolist(),
            "bias": toy.linear.bias.detach().double().tolist()}


def main():
    out, signal_shards, padding_shards = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    result = {"signal": preempted_by_one_rank(out / "signal", signal_shards)}
    result["padding"] = padding(out / "padding", padding_shards)
    rank = int(os.environ.get("RANK", 0))
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
