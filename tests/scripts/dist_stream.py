"""Run under ``accelerate launch --multi_gpu --num_processes 2`` (CPU, gloo) by tests/test_distributed.py.

Every step does an all-reduce, as DDP's backward does: if one rank took more steps than the
other, the collective would time out instead of passing silently.
"""

import itertools
import json
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from accelerate import Accelerator, InitProcessGroupKwargs

from vispre.data import DataConfig, build_loader

SCENARIOS = {
    "finite_w0": dict(workers=0, resampled=False),
    "finite_w1": dict(workers=1, resampled=False),
    "finite_w2": dict(workers=2, resampled=False),
    "resampled_w2": dict(workers=2, resampled=True, samples_per_epoch=60),
    "resume_finite_w2": dict(workers=2, resampled=False, stop_after=3),
    "resume_resampled_w1": dict(workers=1, resampled=True, samples_per_epoch=60, stop_after=4),
}


def run(spec, accelerator, workers, resampled, samples_per_epoch=None, stop_after=None):
    config = DataConfig(spec=spec, format="labelled", eval_size=8, batch_size=4, workers=workers,
                        resampled=resampled, samples_per_epoch=samples_per_epoch, shuffle_buffer=5)
    rank, world = accelerator.process_index, accelerator.num_processes
    loader = build_loader(config, rank, world)
    steps, keys = 0, []

    def step(batch):
        nonlocal steps
        total = torch.tensor([int(batch["valid"].sum())])
        dist.all_reduce(total)  # the collective every training step makes
        keys.extend(k for k, v in zip(batch["__key__"], batch["valid"]) if v)
        steps += 1

    batches = iter(loader)
    if stop_after:
        for batch in itertools.islice(batches, stop_after):
            step(batch)
        state = loader.state_dict()  # every rank calls it: gathers all ranks' positions
        json.loads(json.dumps(state))  # JSON round trip, as a checkpoint stores it
        loader = build_loader(config, rank, world)
        loader.load_state_dict(state)
        batches = iter(loader)
    for batch in batches:
        step(batch)
    return {"steps": steps, "keys": keys, "skipped": loader.epochs[-1]["skipped"]["samples"]}


def main():
    spec, out = sys.argv[1], sys.argv[2]
    accelerator = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=60))])
    assert accelerator.num_processes == 2, accelerator.num_processes
    results = {name: run(spec, accelerator, **kw) for name, kw in SCENARIOS.items()}
    with open(f"{out}/rank{accelerator.process_index}.json", "w") as f:
        json.dump(results, f)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
