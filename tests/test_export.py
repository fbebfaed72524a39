"""Export: a checkpoint -> a timm folder that plain timm loads (checked in a process without vispre),
the model card and its scores, ONNX, the hub dry run, and foreign checkpoints as initialisation."""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from tests.test_methods import fake_batch, tiny_recipe
from vispre.cli import main
from vispre.export.card import append_scores
from vispre.export.write import export, load_encoder, load_module
from vispre.methods import DINO, build_method
from vispre.models import Encoder, build_encoder
from vispre.models.exportable import ExportedModule, ExportSpec
from vispre.models.init_weights import init_encoder
from vispre.pretrain.checkpoint import save_checkpoint
from vispre.utils.typed_config import to_yaml
from vispre.views.photometric import IMAGENET_MEAN, IMAGENET_STD

ROOT = Path(__file__).parents[1]


def trained_checkpoint(run: Path, model: str | None = None, steps: int = 2) -> tuple[Path, torch.nn.Module]:
    """A tiny method after a few real optimizer steps and EMA updates, saved as a checkpoint of ``run``."""
    torch.manual_seed(0)
    cfg = tiny_recipe(run.parent, "unused", "method.name=dino", f"train.output_dir={run}")
    if model is not None:  # instead of the tiny ViT (a dotlist override would merge its kwargs)
        cfg.model.name, cfg.model.kwargs = model, {}
    method = build_method(cfg.method, build_encoder(cfg.model.name, **cfg.model.kwargs))
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-2)
    for step in range(steps):
        method.set_step(step, 10)
        loss, _ = method(fake_batch(seed=step))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        method.update_target(0.5)
    save_checkpoint(run / "checkpoints", steps, method, optimizer, {"config": to_yaml(cfg)})
    return run, method.eval()


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    return trained_checkpoint(tmp_path_factory.mktemp("vit") / "run")


@pytest.fixture(scope="module")
def vit_export(vit_run, tmp_path_factory):
    return export(vit_run[0], tmp_path_factory.mktemp("export") / "encoder")


# Runs in a fresh interpreter: timm, torch and safetensors only, as in another project.
TIMM_ONLY = """
import json, sys, timm, torch
from safetensors.torch import load_file, save_file
torch.set_num_threads(1)
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
with torch.no_grad():
    features = model(load_file(sys.argv[2])["x"])
save_file({"features": features.contiguous()}, sys.argv[3])
data = timm.data.resolve_data_config({}, model=model)
print(json.dumps({"vispre_imported": any(m.split(".")[0] == "vispre" for m in sys.modules),
                  "num_features": model.num_features, "num_classes": model.num_classes,
                  "input_size": data["input_size"], "mean": data["mean"], "std": data["std"],
                  "interpolation": data["interpolation"], "crop_pct": data["crop_pct"]}))
"""


def test_plain_timm_loads_the_export_with_the_same_features(vit_run, vit_export, tmp_path):
    _, method = vit_run
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    save_file({"x": x}, tmp_path / "x.safetensors")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", TIMM_ONLY, str(vit_export), str(tmp_path / "x.safetensors"),
                             str(tmp_path / "y.safetensors")], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["vispre_imported"] is False
    assert info["num_features"] == 64 and info["num_classes"] == 0
    assert info["input_size"] == [3, 32, 32]  # the training crop, not timm's 224 default
    assert info["mean"] == pytest.approx(IMAGENET_MEAN) and info["std"] == pytest.approx(IMAGENET_STD)
    assert info["interpolation"] == "bilinear" and info["crop_pct"] == 0.875
    with torch.no_grad():
        expected = method.export_encoder("target")(x).pooled
    torch.testing.assert_close(load_file(tmp_path / "y.safetensors")["features"], expected, atol=1e-5, rtol=0)


def test_the_folder_holds_encoder_weights_only_and_a_card(vit_run, vit_export):
    _, method = vit_run
    weights = load_file(vit_export / "model.safetensors")
    teacher = method.export_encoder("target").timm_model.state_dict()
    assert weights.keys() == teacher.keys()  # no DINO head, no student, no optimizer
    assert all(torch.equal(weights[k], teacher[k]) for k in weights)
    config = json.loads((vit_export / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224" and config["num_classes"] == 0
    assert config["model_args"]["embed_dim"] == 64 and config["global_pool"] == "token"
    assert "tag" not in config["pretrained_cfg"]  # timm's release metadata does not describe our weights
    card = (vit_export / "README.md").read_text()
    for text in ("method | dino", "steps | 2 of 24", "target network", "32x32 px", "name: pretrain", "None yet"):
        assert text in card, text


def test_online_and_target_copies_differ_after_updates(vit_run, vit_export, tmp_path):
    run, method = vit_run
    online = export(run, tmp_path / "online", which="online")
    ema, student = load_file(vit_export / "model.safetensors"), load_file(online / "model.safetensors")
    expected = method.export_encoder("online").timm_model.state_dict()
    assert all(torch.equal(student[k], expected[k]) for k in student)
    assert max((ema[k] - student[k]).abs().max().item() for k in ema) > 1e-4
    assert "online network" in (online / "README.md").read_text()
    with pytest.raises(ValueError, match="which"):
        export(run, tmp_path / "bad", which="teacher")


def test_load_encoder_round_trip_and_random_init(vit_run, vit_export):
    _, method = vit_run
    x = torch.randn(2, 3, 32, 32)
    encoder = load_encoder(vit_export)
    assert isinstance(encoder, Encoder) and not encoder.training
    assert encoder.model_args["dynamic_img_size"] is True
    assert encoder.timm_model.pretrained_cfg["input_size"] == (3, 32, 32)
    with torch.no_grad():
        ours, theirs = encoder(x), method.export_encoder("target")(x)
        torch.testing.assert_close(ours.pooled, theirs.pooled, atol=1e-6, rtol=0)
        torch.testing.assert_close(ours.tokens, theirs.tokens, atol=1e-6, rtol=0)
        random = load_encoder(vit_export, random_init=True)
        assert random(x).pooled.shape == ours.pooled.shape
        assert (random(x).pooled - ours.pooled).abs().max() > 0.1
        # other sizes work too (dynamic_img_size survives the round trip)
        assert encoder(torch.randn(1, 3, 48, 48)).tokens.shape == (1, 36, 64)


def test_resnet_exports_too(tmp_path):
    run, method = trained_checkpoint(tmp_path / "run", model="test_resnet")
    out = export(run / "checkpoints" / "checkpoint-00000002", tmp_path / "encoder")  # a checkpoint directory
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), method.export_encoder("target")(x).pooled, atol=1e-5, rtol=0)
    assert model.pretrained_cfg["input_size"] == (3, 32, 32) and model.num_features == 96
    assert "running_mean" in " ".join(load_file(out / "model.safetensors"))  # BatchNorm statistics travel


def test_scores_go_on_the_card_and_replace_by_name(vit_run, tmp_path):
    out = export(vit_run[0], tmp_path / "encoder", scores={"knn": {"scores": {"top1": 0.5}, "protocol": {"k": 20}}})
    append_scores(out, "linear digits", {"top1": 91.25, "top5": 99.5}, {"dataset": "digits", "lrs": [0.1, 1.0]})
    append_scores(out, "linear digits", {"top1": 92.75}, {"dataset": "digits", "lrs": [0.1]})
    scores = json.loads((out / "scores.json").read_text())
    assert scores == {"knn": {"scores": {"top1": 0.5}, "protocol": {"k": 20}},
                      "linear digits": {"scores": {"top1": 92.75}, "protocol": {"dataset": "digits", "lrs": [0.1]}}}
    card = (out / "README.md").read_text()
    assert card.count("### linear digits") == 1 and "| top1 | 92.75 |" in card and "91.25" not in card
    assert "### knn" in card and '"k": 20' in card and "None yet" not in card
    # numpy scalars and nested groups, as evaluation code produces them
    append_scores(out, "probe", {"linear": {"top1": np.float32(0.75)}, "knn": {"k20": np.float64(0.5)}},
                  {"ks": np.array([10, 20])})
    assert json.loads((out / "scores.json").read_text())["probe"] == {
        "scores": {"linear": {"top1": 0.75}, "knn": {"k20": 0.5}}, "protocol": {"ks": [10, 20]}}
    assert "| linear/top1 | 0.75 |" in (out / "README.md").read_text()
    with pytest.raises(FileNotFoundError, match="not a vispre export"):
        append_scores(tmp_path, "x", {}, {})


def test_export_modules_hook(vit_run, tmp_path, monkeypatch):
    monkeypatch.setattr(DINO, "export_modules", lambda self, which: {"phi": ExportedModule(self.net(which)["head"],
        ExportSpec("dino_head", {"in_dim": 64}))},
        raising=False)
    _, method = vit_run
    out = export(vit_run[0], tmp_path / "encoder")
    described = json.loads((out / "phi.json").read_text())
    assert described["class"] == "vispre.models.heads.DINOHead" and described["which"] == "target"
    assert described["builder"] == "dino_head" and described["kwargs"] == {"in_dim": 64}
    head = copy.deepcopy(method.net("target")["head"])
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
    expected = method.net("target")["head"].state_dict()
    assert not all(torch.equal(v, expected[k]) for k, v in head.state_dict().items())
    load_module(out, "phi", head)
    assert all(torch.equal(v, expected[k]) for k, v in head.state_dict().items())
    assert "`phi.safetensors`" in (out / "README.md").read_text()


def _encoder():
    return build_encoder("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)


def test_onnx_matches_torch(vit_run, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    out = export(vit_run[0], tmp_path / "encoder", onnx=True)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 32, 32)  # another batch size than the traced one
    got = session.run(["features"], {"pixel_values": x.numpy()})[0]
    with torch.no_grad():
        expected = vit_run[1].export_encoder("target")(x).pooled.numpy()
    assert abs(got - expected).max() < 1e-4
    assert "`model.onnx`" in (out / "README.md").read_text()


def test_push_to_hub_dry_run_lists_files_offline(vit_run, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("the dry run touched the hub")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_network)
    out = tmp_path / "encoder"
    assert main(["export", str(vit_run[0]), str(out), "--push-to-hub", "someone/tiny", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "would upload to https://huggingface.co/someone/tiny" in printed
    size = (out / "model.safetensors").stat().st_size
    for name in ("config.json", "README.md", "export.json"):
        assert f"  {name} (" in printed
    assert f"  model.safetensors ({size:,} bytes)" in printed


def test_push_to_hub_uploads_the_top_level_files(vit_run, tmp_path, monkeypatch):
    import huggingface_hub

    from vispre.export.hub import push_to_hub

    calls = []

    class FakeApi:  # records what would go over the network
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["repo_id"], kwargs))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    vit_export = export(vit_run[0], tmp_path / "encoder")
    (vit_export / "eval").mkdir()  # vispre eval's results and caches stay local
    (vit_export / "eval" / "features.safetensors").write_bytes(b"x")
    files = push_to_hub(vit_export, "someone/tiny", private=True)
    assert [name for name, _ in files] == ["README.md", "config.json", "export.json", "model.safetensors"]
    assert calls[0] == ("create_repo", "someone/tiny", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls[1][2]["allow_patterns"] == [name for name, _ in files]
    assert calls[1][2]["folder_path"] == str(vit_export)


def test_bad_paths_error_clearly(vit_run, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="neither a vispre checkpoint"):
        export(tmp_path / "nothing", tmp_path / "out")
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a vispre export"):
        export(vit_run[0], keep)
    assert (keep / "notes.txt").read_text() == "mine" and len(list(keep.iterdir())) == 1
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_encoder(tmp_path)
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2  # a user error: one line
    assert re.search("vispre export: error: .* neither a vispre checkpoint", capsys.readouterr().err)


def test_reexport_replaces_the_folder(vit_run, tmp_path):
    out = export(vit_run[0], tmp_path / "encoder")
    append_scores(out, "old", {"top1": 1.0}, {})
    export(vit_run[0], out, which="online")
    assert not (out / "scores.json").exists()  # the scores belonged to the EMA weights
    assert json.loads((out / "export.json").read_text())["which"] == "online"
    assert [p.name for p in tmp_path.iterdir()] == ["encoder"]  # no temporary folders left behind


# -- foreign initialisation --------------------------------------------------------------------------------
def test_init_from_prefixed_checkpoints(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=64, patch_size=8, embed_dim=64,
                               depth=2, num_heads=2)
    state = source.state_dict()
    # DINO-style .pth: both networks nested, a classifier head, a non-tensor entry
    torch.save({"teacher": {f"backbone.{k}": v for k, v in state.items()},
                "student": {f"module.backbone.{k}": v + 1 for k, v in state.items()}, "epoch": 3}, tmp_path / "d.pth")
    encoder = _encoder()
    assert init_encoder(encoder, tmp_path / "d.pth") == "teacher.backbone."  # a tie goes to the EMA copy
    loaded = encoder.timm_model.state_dict()
    assert torch.equal(loaded["blocks.1.mlp.fc2.weight"], state["blocks.1.mlp.fc2.weight"])
    assert loaded["pos_embed"].shape == (1, 17, 64)  # 8x8 grid resampled to the encoder's 4x4
    # open_clip-style safetensors with an explicit prefix
    save_file({f"visual.trunk.{k}": v * 2 for k, v in state.items()}, tmp_path / "c.safetensors")
    init_encoder(encoder, tmp_path / "c.safetensors", prefix="visual.trunk.")
    assert torch.equal(encoder.timm_model.state_dict()["norm.weight"], state["norm.weight"] * 2)


def test_init_from_a_vispre_checkpoint(vit_run):
    run, method = vit_run
    encoder = _encoder()
    prefix = init_encoder(encoder, run / "checkpoints" / "checkpoint-00000002" / "model.safetensors")
    assert prefix == "target.module.encoder.timm_model."
    expected = method.export_encoder("target").timm_model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in encoder.timm_model.state_dict().items())


def test_init_errors_name_the_file_and_keys(tmp_path):
    state = _encoder().timm_model.state_dict()
    del state["blocks.0.attn.qkv.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_file(state, path)
    with pytest.raises(ValueError) as error:
        init_encoder(_encoder(), path)
    message = str(error.value)
    assert str(path) in message and "1 missing keys ['blocks.0.attn.qkv.weight']" in message
    assert "1 unexpected keys ['extra.weight']" in message
    with pytest.raises(ValueError, match="no key of .* starts with prefix 'nope.'"):
        init_encoder(_encoder(), path, prefix="nope.")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        init_encoder(_encoder(), tmp_path / "missing.pt")


def test_recipe_model_init_initialises_both_networks(tmp_path, image_shards):
    from vispre.pretrain.loop import Trainer

    source = _encoder().timm_model.state_dict()
    save_file({f"module.{k}": v for k, v in source.items()}, tmp_path / "init.safetensors")
    cfg = tiny_recipe(tmp_path, image_shards[0], "method.name=dino", f"model.init={tmp_path / 'init.safetensors'}",
                      "data.workers=0")
    method = Trainer(cfg).method
    for which in ("online", "target"):
        loaded = method.export_encoder(which).timm_model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in source.items())


# -- from a real run ----------------------------------------------------------------------------------------
def test_export_a_real_pretrain_run_from_the_command_line(tmp_path, image_shards):
    from tests.test_train import overrides

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "vispre", "pretrain", str(ROOT / "recipes" / "demo" / "dino.yaml"),
           *overrides(image_shards[0], run, "train.steps=2", "method.name=dino")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert main(["export", str(run), str(tmp_path / "encoder")]) == 0  # the CLI, in this process
    checkpoint = load_file(run / "checkpoints" / "checkpoint-00000002" / "model.safetensors")
    exported = load_file(tmp_path / "encoder" / "model.safetensors")
    prefix = "target.module.encoder.timm_model."
    assert exported.keys() == {k[len(prefix):] for k in checkpoint if k.startswith(prefix)}
    assert all(torch.equal(v, checkpoint[prefix + k]) for k, v in exported.items())
    card = (tmp_path / "encoder" / "README.md").read_text()
    assert "# dino_demo: dino, vit_tiny_patch16_224" in card and "steps | 2 of 2" in card


def test_exported_modules_rebuild_in_a_process_that_imported_only_the_reader(tmp_path):
    """load_exported_module needs the builders registered: importing vispre.export.read alone must do it."""
    import subprocess
    import sys

    from safetensors.torch import save_model

    from vispre.models.exportable import ExportSpec
    from vispre.models.icvf import icvf_phi
    from vispre.utils.io import write_json

    phi = icvf_phi(width=8, hidden_dims=[4, 4])
    save_model(phi, str(tmp_path / "phi.safetensors"))
    spec = ExportSpec("icvf_phi", {"width": 8, "hidden_dims": [4, 4]}, "pooled", 4)
    write_json(tmp_path / "phi.json", spec.to_json())
    code = ("import sys, torch; from vispre.export.read import load_exported_module; "
            "m = load_exported_module(sys.argv[1], 'phi'); "
            "print(m.spec.out_dim, m.module(torch.zeros(1, 8)).shape[-1])")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.split() == ["4", "4"]
