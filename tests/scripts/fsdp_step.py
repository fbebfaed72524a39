"""Run under ``accelerate launch --config_file recipes/accelerate/fsdp_vit.yaml --num_processes 2`` on CPU by
tests/test_fsdp.py. accelerate turns FSDP off on CPU (its FSDP type is for GPU-like devices: an Accelerator on
CPU is MULTI_CPU, DDP), so this script runs accelerate's own FSDP2 preparation (``fsdp2_prepare_model``, what
``accelerator.prepare`` calls on GPUs) with the plugin the launcher built from the config's environment, on a
vispre method over gloo. Each rank trains the FSDP copy and an unsharded reference on the same batch (so the
averaged gradient is the reference's), then gathers the full state dict as a checkpoint would.

Writes ``OUT/rank{R}.json``: the plugin's settings, the modules FSDP wrapped, losses, the state dict's keys and
its largest difference from the reference.
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
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule

from tests.test_methods import TINY_MODEL, fake_batch
from vispre.methods import build_method
from vispre.models import build_encoder
from vispre.pretrain.recipe import load_recipe


def train_step(model, optimizer, batch, i):
    model.set_step(i, 100)
    loss, _ = model(batch)
    loss.backward()
    model.before_optimizer_step()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.update_target(0.9)
    return float(loss.detach())


def main():
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    accelerator = Accelerator(cpu=True)  # inits gloo; what a vispre run would get on CPU under this config
    rank = dist.get_rank()
    row = {"rank": rank, "world": dist.get_world_size(), "accelerate_type": str(accelerator.distributed_type)}
    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables the launcher set from the config
    row["plugin"] = {"version": plugin.fsdp_version, "reshard_after_forward": plugin.reshard_after_forward,
                     "state_dict_type": str(plugin.state_dict_type), "wrap": plugin.transformer_cls_names_to_wrap}

    cfg = load_recipe(None, [*TINY_MODEL, "data.spec=unused", *overrides])
    torch.manual_seed(0)
    method = build_method(cfg.method, build_encoder(cfg.model.name, **cfg.model.kwargs))
    reference = copy.deepcopy(method)
    stand_in = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=None,
                               mixed_precision="no", is_main_process=rank == 0, device=torch.device("cpu"))
    model = fsdp2_prepare_model(stand_in, method)
    row["wrapped"] = sorted(name or "<root>" for name, m in model.named_modules() if isinstance(m, FSDPModule))
    row["wrapped_types"] = sorted({type(m).__name__ for _, m in model.named_modules() if isinstance(m, FSDPModule)})

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ref_optimizer = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=1e-3)
    local = sum(p.to_local().numel() for p in model.parameters())
    row["local_fraction"] = local / sum(p.numel() for p in model.parameters())  # this rank's shard of the weights
    batch = fake_batch(4, seed=0)  # the same on both ranks
    if cfg.method.name == "ab":
        batch = {"annotation": batch, "bootstrap": fake_batch(2, groups=((4, 32),), seed=1)}
    row["losses"], row["reference_losses"] = [], []
    for i in range(3):
        row["losses"].append(train_step(model, optimizer, batch, i))
        row["reference_losses"].append(train_step(reference, ref_optimizer, batch, i))

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    expected = reference.state_dict()
    row["keys_match"] = sorted(full) == sorted(expected) if rank == 0 else None
    row["max_diff"] = max(float((full[k].float() - expected[k].float()).abs().max()) for k in expected
                          if expected[k].is_floating_point()) if rank == 0 else None
    row["gathered_tensors"] = len(full)  # rank 0 holds them all; cpu_offload leaves the others empty
    (out / f"rank{rank}.json").write_text(json.dumps(row))
    dist.barrier()


if __name__ == "__main__":
    main()
