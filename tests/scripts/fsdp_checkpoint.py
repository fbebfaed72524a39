"""vispre's checkpoint of an FSDP2-sharded method, on two gloo CPU ranks (run by tests/test_fsdp.py under
``accelerate launch --config_file recipes/accelerate/fsdp_vit.yaml --num_processes 2``).

accelerate turns FSDP off on CPU, so, as fsdp_step.py does, this shards the method with accelerate's own
``fsdp2_prepare_model`` and then calls what ``Trainer.save`` and ``Trainer.resume`` call on a sharded model
(``vispre.pretrain.sharded``): 2 steps, save on both ranks, a fresh sharded method (other initial weights)
loaded from the checkpoint, one more step of each, against an unsharded reference trained alike. A NaN in
rank 1's shard only must be refused on both ranks.

Writes ``OUT/rank{R}.json``.
"""

import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_model
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from tests.scripts.fsdp_step import train_step
from tests.test_methods import TINY_MODEL, fake_batch
from vispre.methods import build_method
from vispre.models import build_encoder
from vispre.pretrain.checkpoint import NonFiniteCheckpoint, load_checkpoint
from vispre.pretrain.loop import param_groups
from vispre.pretrain.recipe import load_recipe
from vispre.pretrain.sharded import FULL, is_sharded, load_sharded_checkpoint, save_sharded_checkpoint


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in b if b[k].is_floating_point())


def main():
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    Accelerator(cpu=True)  # gloo
    rank = dist.get_rank()
    plugin = FullyShardedDataParallelPlugin()
    stand_in = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=None,
                               mixed_precision="no", is_main_process=rank == 0, device=torch.device("cpu"))
    cfg = load_recipe(None, [*TINY_MODEL, "data.spec=unused", *overrides])

    def method(seed):
        torch.manual_seed(seed)
        return build_method(cfg.method, build_encoder(cfg.model.name, **cfg.model.kwargs))

    def adamw(model):  # vispre's parameter groups (weight decay on matrices only), as the Trainer builds them
        return torch.optim.AdamW(param_groups(model), lr=1e-3, weight_decay=0.05)

    batch = fake_batch(4, seed=0)
    if cfg.method.name == "ab":
        batch = {"annotation": batch, "bootstrap": fake_batch(2, groups=((4, 32),), seed=1)}
    reference = method(0)
    model = fsdp2_prepare_model(stand_in, copy.deepcopy(reference))
    ref_opt, opt = adamw(reference), adamw(model)
    row = {"rank": rank, "sharded": is_sharded(model), "reference_sharded": is_sharded(reference)}
    for i in range(2):
        train_step(model, opt, batch, i)
        train_step(reference, ref_opt, batch, i)

    path = save_sharded_checkpoint(out / "checkpoints", 2, model, opt, {"data": {}, "config": ""}, keep=2)
    row["path"] = path.name
    if rank == 0:  # the files: the unsharded reference's tensors and Adam moments
        saved = load_file(str(path / "model.safetensors"))
        expected = reference.state_dict()
        row["keys_match"] = sorted(saved) == sorted(expected)
        row["weights_diff"] = max_diff(saved, expected)
        optimizer = torch.load(path / "optimizer.pt", weights_only=True)
        names = {id(p): n for n, p in reference.named_parameters()}
        moments = {names[id(p)]: s for p, s in ref_opt.state.items()}
        row["moment_keys_match"] = sorted(optimizer["state"]) == sorted(moments)
        row["moments_diff"] = max(float((optimizer["state"][n][k] - s[k]).abs().max())
                                  for n, s in moments.items() for k in ("exp_avg", "exp_avg_sq"))
        row["steps"] = sorted({float(s["step"]) for s in optimizer["state"].values()})
        plain = method(2)  # what vispre export does: the weights into an unsharded method
        load_checkpoint(path, plain)
        row["plain_load_diff"] = max_diff(plain.state_dict(), saved)
    dist.barrier()

    fresh = fsdp2_prepare_model(stand_in, method(1))  # other initial weights: the checkpoint must replace them
    fresh_opt = adamw(fresh)
    before = get_model_state_dict(fresh, options=FULL)
    state = load_sharded_checkpoint(path, fresh, fresh_opt)
    row["state_step"] = state["step"]
    loaded = get_model_state_dict(fresh, options=FULL)
    if rank == 0:
        row["fresh_differed"] = max_diff(before, reference.state_dict())
        row["loaded_diff"] = max_diff(loaded, reference.state_dict())
    # the next step: the same loss and weights as the uninterrupted sharded run and the reference
    row["next_loss"] = train_step(fresh, fresh_opt, batch, 2)
    row["uninterrupted_loss"] = train_step(model, opt, batch, 2)
    row["reference_loss"] = train_step(reference, ref_opt, batch, 2)
    after = get_model_state_dict(fresh, options=FULL)
    uninterrupted = get_model_state_dict(model, options=FULL)
    if rank == 0:
        row["after_diff"] = max_diff(after, reference.state_dict())
        row["after_vs_uninterrupted"] = max_diff(after, uninterrupted)

    # a NaN in rank 1's shard only: rank 0 sees it in the gathered dict, both ranks refuse, nothing written
    if rank == 1:
        with torch.no_grad():
            next(p for p in fresh.parameters() if p.to_local().numel()).to_local().view(-1)[0] = float("nan")
    try:
        save_sharded_checkpoint(out / "checkpoints", 3, fresh, fresh_opt, {"data": {}}, keep=2)
        row["nonfinite"] = None
    except NonFiniteCheckpoint as e:
        row["nonfinite"] = str(e)
    dist.barrier()
    row["checkpoints"] = sorted(p.name for p in (out / "checkpoints").iterdir())
    (out / f"rank{rank}.json").write_text(json.dumps(row))
    dist.barrier()


if __name__ == "__main__":
    main()
