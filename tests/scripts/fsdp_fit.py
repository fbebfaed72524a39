"""``Trainer.fit`` on an FSDP2-sharded method, two gloo CPU ranks (run by tests/test_fsdp.py under ``accelerate
launch --config_file recipes/accelerate/fsdp_vit.yaml --num_processes 2``).

accelerate turns FSDP off on CPU (its Accelerator is MULTI_CPU: DDP), so after the Trainer is built this
replaces its DDP model and optimizer with accelerate's own FSDP2 preparation of the same method
(``fsdp2_prepare_model``, what ``accelerator.prepare`` calls on GPUs) and a new optimizer over the shards, built
as the Trainer builds it. Everything else (the loop, the step, the checkpoints, resuming) is vispre's.

    fsdp_fit.py OUT SHARDS ddp|fsdp [--resume] [overrides...]
"""

import os
import sys
from pathlib import Path
from types import SimpleNamespace

from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_model

from tests.test_methods import tiny_recipe
from vispre.pretrain.loop import Trainer, param_groups
from vispre.pretrain.speed import build_optimizer


def main():
    out, shards, mode, *rest = sys.argv[1:]
    resume = "--resume" in rest
    overrides = [o for o in rest if o != "--resume"]
    cfg = tiny_recipe(Path(out), shards, "train.steps=4", "train.log_every=1",
                      "train.checkpoint_every_steps=2", "train.fused_adamw=false", "data.resampled=true", *overrides)
    trainer = Trainer(cfg)
    if mode == "fsdp":
        acc = trainer.accelerator
        plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables the launcher set from the config
        stand_in = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=None,
                                   mixed_precision="no", is_main_process=acc.is_main_process, device=acc.device)
        trainer.model = fsdp2_prepare_model(stand_in, trainer.method)
        o = cfg.optim
        trainer.optimizer = acc.prepare_optimizer(build_optimizer(
            param_groups(trainer.model), acc.device, "false", lr=trainer.base_lr, betas=tuple(o.betas), eps=o.eps))
    trainer.fit(resume="latest" if resume else None)
    if mode == "fsdp":
        # Once in about ten runs under load, an fsdp run that had finished (its checkpoints and metrics written)
        # died at interpreter exit with "terminate called without an active exception" (SIGABRT): teardown with
        # the sharded model alive after fit() ended the process group. Not resolved (README "Large models:
        # FSDP"); this script checks the run, so it leaves without that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
