"""recipes/accelerate/fsdp_vit.yaml: what the launcher makes of it, the units it shards, and accelerate's own FSDP2
preparation of a vispre method on two gloo CPU ranks (accelerate itself runs FSDP on GPUs only)."""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from accelerate.utils.launch import prepare_multi_gpu_env
from timm.models.vision_transformer import Block

from tests.test_methods import TINY_AB, TINY_MODEL
from vispre.methods import build_method
from vispre.models import build_encoder
from vispre.pretrain.recipe import load_recipe

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "recipes" / "accelerate" / "fsdp_vit.yaml"

TINY_DINO = ["method.name=dino", "method.dino.out_dim=32", "method.dino.hidden_dim=32", "method.dino.bottleneck_dim=16"]


def launcher_env() -> dict:
    """The environment ``accelerate launch --config_file fsdp_vit.yaml`` gives its ranks."""
    args = launch_command_parser().parse_args(["--config_file", str(CONFIG), "--num_processes", "2", "train.py"])
    args, _, _ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


def test_config_is_fsdp2_full_shard_bf16_full_state_dict():
    config = ClusterConfig.from_yaml_file(str(CONFIG))
    assert config.distributed_type == "FSDP" and config.mixed_precision == "bf16"  # str enums
    env = launcher_env()
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_RESHARD_AFTER_FORWARD"] == "true"  # FULL_SHARD
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP" and env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "Block"
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def wrapped(model: torch.nn.Module, monkeypatch) -> list[str]:
    """The modules accelerate's FSDP2 preparation gives their own unit, with the plugin built from the config."""
    for key, value in launcher_env().items():
        if key.startswith("FSDP_") or key == "ACCELERATE_USE_FSDP":
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    plugin.set_auto_wrap_policy(model)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    return [name for name, m in model.named_modules() if name and policy(m)]


def test_wrap_policy_shards_every_vit_large_block(monkeypatch):
    with torch.device("meta"):  # shapes only: ViT-L/16's 304M parameters take no memory
        encoder = build_encoder("vit_large_patch16_224")
    names = wrapped(encoder, monkeypatch)
    assert names == [f"timm_model.blocks.{i}" for i in range(24)]
    block = sum(p.numel() for p in encoder.get_submodule(names[0]).parameters())
    rest = sum(p.numel() for p in encoder.parameters()) - 24 * block
    assert block == 12596224 and rest < block  # 12.6M per unit; the root keeps the patch embedding and norms


def test_wrap_policy_shards_online_and_target_blocks_of_a_method(monkeypatch):
    cfg = load_recipe(None, [*TINY_MODEL, "data.spec=unused", *TINY_DINO])
    method = build_method(cfg.method, build_encoder(cfg.model.name, **cfg.model.kwargs))
    names = wrapped(method, monkeypatch)
    assert names == [f"{net}.encoder.timm_model.blocks.{i}" for net in ("online", "target.module") for i in range(2)]
    assert all(isinstance(method.get_submodule(n), Block) for n in names)


def scalar_method(method):
    """AB (its bce bias on) or CLIP: the methods that hold learned scalars."""
    cfg = load_recipe(None, [*TINY_MODEL, "data.spec=unused", f"method.name={method}", "method.base=dino",
                             "method.clip.text=tiny", *TINY_AB, "method.ab.divergence=bce"])
    return build_method(cfg.method, build_encoder(cfg.model.name, **cfg.model.kwargs))


@pytest.mark.parametrize("method, scalars", [
    ("ab", [f"base.{net}.ab_head.{name}" for net in ("online", "target.module") for name in ("bias", "scale.value")]),
    ("clip", ["online.logit_scale.value", "target.module.logit_scale.value"]),  # and their EMA copies
])
def test_no_scalar_parameters_for_fsdp2(method, scalars):
    model = scalar_method(method)
    assert [n for n, p in model.named_parameters() if p.dim() == 0] == []  # fully_shard refuses 0-dim ones
    # 1 element each instead (AB's bce bias b and t_AB = exp(s); CLIP's logit scale)
    assert [n for n, p in model.named_parameters() if p.shape == (1,)] == scalars
    if method == "clip":
        scale = model.scale("online")
        assert scale.shape == () and float(scale.detach()) == pytest.approx(1 / 0.07)  # t itself stays 0-dim
    else:
        head = model.base.online["ab_head"]
        assert float(head.bias.detach()) == -10.0
        phi, psi = torch.randn(3, 5, 16), torch.nn.functional.normalize(torch.randn(7, 16), dim=-1)
        by_hand = (1 / 0.07) * torch.nn.functional.normalize(phi, dim=-1) @ psi.T - 10.0
        assert head(phi, psi).shape == (3, 5, 7) and torch.allclose(head(phi, psi), by_hand, atol=1e-5)


def zero_dim(state: dict) -> dict:
    """A state dict as vispre wrote it before the scalars became 1-element tensors."""
    return {k: v.reshape(()) if k.endswith(("scale.value", "ab_head.bias")) else v for k, v in state.items()}


@pytest.mark.parametrize("method", ["ab", "clip"])
def test_checkpoints_with_0_dim_scalars_still_load(tmp_path, method):
    from safetensors.torch import save_file

    from vispre.pretrain.checkpoint import load_checkpoint

    torch.manual_seed(0)
    old = scalar_method(method)
    optimizer = torch.optim.AdamW(old.parameters(), lr=1e-2)
    with torch.no_grad():
        for p in old.parameters():
            if p.shape == (1,):
                p.add_(0.25)  # a trained value, not the initial one
    loss = sum(p.float().square().sum() for p in old.parameters())
    loss.backward()
    optimizer.step()
    old_state = {k: v.clone() for k, v in old.state_dict().items()}
    old_optimizer = copy.deepcopy(optimizer.state_dict())  # state_dict() shares its dicts with the optimizer
    for state in old_optimizer["state"].values():  # the moments of a 0-dim parameter were 0-dim
        for key in ("exp_avg", "exp_avg_sq"):
            if state[key].shape == (1,):
                state[key] = state[key].reshape(())
    path = tmp_path / "checkpoint-00000001"
    path.mkdir()
    save_file(zero_dim(old_state), str(path / "model.safetensors"))
    torch.save(old_optimizer, path / "optimizer.pt")
    (path / "state.json").write_text('{"step": 1}')
    assert sum(v.dim() == 0 for v in zero_dim(old_state).values()) == (2 if method == "ab" else 1) * 2  # + target

    torch.manual_seed(1)
    new = scalar_method(method)
    new_optimizer = torch.optim.AdamW(new.parameters(), lr=1e-2)
    load_checkpoint(path, new, new_optimizer)
    for k, v in new.state_dict().items():
        assert v.shape == old_state[k].shape and torch.equal(v, old_state[k]), k
    if method == "clip":
        assert torch.equal(new.scale("online"), old.scale("online"))
    else:
        phi, psi = torch.randn(3, 5, 16), torch.nn.functional.normalize(torch.randn(7, 16), dim=-1)
        assert torch.equal(new.base.online["ab_head"](phi, psi), old.base.online["ab_head"](phi, psi))
    # the next optimizer step is the old model's, moments of the former scalars included
    for model, opt in ((old, optimizer), (new, new_optimizer)):
        opt.zero_grad()
        sum(p.float().square().sum() for p in model.parameters()).backward()
        opt.step()
    for (k, a), b in zip(old.named_parameters(), new.parameters(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.slow
def test_fsdp2_on_two_gloo_ranks_trains_like_the_unsharded_method(tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", "0", str(ROOT / "tests" / "scripts" / "fsdp_step.py"),
           str(tmp_path), *TINY_DINO]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["world"] == 2
        assert r["accelerate_type"] == "DistributedType.MULTI_CPU"  # accelerate's own Accelerator: no FSDP on CPU
        assert r["plugin"] == {"version": 2, "reshard_after_forward": True,
                               "state_dict_type": "StateDictType.FULL_STATE_DICT", "wrap": ["Block"]}
        assert r["wrapped"] == ["<root>"] + [f"{net}.encoder.timm_model.blocks.{i}"
                                             for net in ("online", "target.module") for i in range(2)]
        assert r["local_fraction"] == pytest.approx(0.5, abs=0.02)  # each rank holds half of the weights
        # the same batch on both ranks: the averaged gradient is the unsharded method's, step for step
        assert r["losses"] == pytest.approx(r["reference_losses"], rel=1e-6, abs=1e-6)
    assert ranks[0]["losses"] == ranks[1]["losses"]
    # the full state dict a checkpoint needs (model.safetensors): gathered on rank 0, key for key the unsharded
    # method's (online, EMA target, DINO's centre), equal to it after 3 steps
    assert ranks[0]["keys_match"] and ranks[0]["max_diff"] < 1e-6


@pytest.mark.slow
def test_checkpoint_of_a_sharded_method_on_two_gloo_ranks(tmp_path):
    """vispre.pretrain.sharded, what Trainer.save / resume call on an FSDP2 model, on AB (its 1-element scalars
    sharded too): the file holds the unsharded reference's tensors; a fresh sharded method loads them and takes
    the reference's next step; a NaN in one rank's shard is refused on both."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", "0",
           str(ROOT / "tests" / "scripts" / "fsdp_checkpoint.py"), str(tmp_path),
           "method.name=ab", "method.base=dino", "method.ab.divergence=bce", *TINY_DINO,
           *[o.replace("bootstrap_batch_size=4", "bootstrap_batch_size=2") for o in TINY_AB]]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    zero = ranks[0]
    assert zero["sharded"] and not zero["reference_sharded"]
    # the files: key for key the unsharded method's weights (online, EMA target, centre) and Adam moments
    assert zero["keys_match"] and zero["weights_diff"] < 1e-6
    assert zero["moment_keys_match"] and zero["moments_diff"] < 1e-6 and zero["steps"] == [2.0]
    assert zero["plain_load_diff"] == 0.0  # the weights load into an unsharded method too (vispre export)
    # resumed: other initial weights replaced by the checkpoint's, and the next step is the reference's
    assert zero["fresh_differed"] > 0.1 and zero["loaded_diff"] < 1e-6
    assert zero["after_diff"] < 1e-6 and zero["after_vs_uninterrupted"] < 1e-6
    for r in ranks:
        assert r["path"] == "checkpoint-00000002" and r["state_step"] == 2
        assert r["next_loss"] == pytest.approx(r["reference_loss"], rel=1e-6) == r["uninterrupted_loss"]
        # a NaN in rank 1's shard: refused on both ranks, nothing written, the good checkpoint kept
        assert "not writing" in r["nonfinite"] and "patch_embed.proj.weight" in r["nonfinite"]
        assert r["checkpoints"] == ["checkpoint-00000002", "latest"]


@pytest.mark.slow
def test_a_vispre_run_on_a_sharded_method_trains_saves_and_resumes_like_ddp(tmp_path):
    """Trainer.fit, its checkpoints and --resume with the method FSDP2-sharded (tests/scripts/fsdp_fit.py swaps
    accelerate's DDP model for its FSDP2 one) on two gloo ranks: the DDP run's losses and weights, and a run
    resumed from its step-2 checkpoint continues the same curve."""
    from safetensors.torch import load_file

    from tests.shards import make_image_shards

    shards, _ = make_image_shards(tmp_path / "shards", [16] * 4)

    def run(name, mode, *extra):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), "--num_processes",
               "2", "--mixed_precision", "no", "--main_process_port", "0",
               str(ROOT / "tests" / "scripts" / "fsdp_fit.py"), str(tmp_path / name), str(shards), mode, *extra]
        env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
        rows = [json.loads(line) for line in (tmp_path / name / "run" / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows], tmp_path / name / "run" / "checkpoints"

    ddp, ddp_checkpoints = run("ddp", "ddp")
    fsdp, fsdp_checkpoints = run("fsdp", "fsdp")
    assert len(ddp) == 4 and fsdp == pytest.approx(ddp, rel=1e-4)
    final = load_file(str(fsdp_checkpoints / "checkpoint-00000004" / "model.safetensors"))
    expected = load_file(str(ddp_checkpoints / "checkpoint-00000004" / "model.safetensors"))
    assert sorted(final) == sorted(expected)
    assert max(float((final[k] - expected[k]).abs().max()) for k in expected if expected[k].is_floating_point()) < 1e-4
    # resume the sharded run from its step-2 checkpoint (as after a kill): steps 3 and 4 again, the same losses
    (fsdp_checkpoints / "latest").write_text("checkpoint-00000002")
    shutil.rmtree(fsdp_checkpoints / "checkpoint-00000004")
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "fsdp" / "run", tmp_path / "resumed" / "run")
    resumed, _ = run("resumed", "fsdp", "--resume")
    assert resumed[:2] == fsdp[:2] and resumed[2:] == pytest.approx(fsdp[2:], rel=1e-5)
