"""Interop with other libraries' real loaders (issue 16): transformers and timm load the same export, open_clip's
training loader and timm's dataset factory read vispre shards, a CLIP run exports an open_clip folder, the model
card goes through huggingface_hub, ONNX takes two image sizes, public weights by name fail clearly offline.

Everything runs offline on tiny models (HF_HUB_OFFLINE=1, see conftest.py)."""

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from tests.test_export import trained_checkpoint
from vispre.export.write import export


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    return trained_checkpoint(tmp_path_factory.mktemp("vit") / "run")


@pytest.fixture(scope="module")
def vit_export(vit_run, tmp_path_factory):
    return export(vit_run[0], tmp_path_factory.mktemp("export") / "encoder")


def _image(seed: int, size=(40, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


# -- transformers ---------------------------------------------------------------------------------------------
def test_transformers_and_timm_load_the_same_export_with_equal_features(vit_run, vit_export):
    transformers = pytest.importorskip("transformers")
    config = json.loads((vit_export / "config.json").read_text())
    assert config["num_classes"] == 0 and "num_classes" not in config["model_args"]  # once, at the top level

    timm_model = timm.create_model(f"local-dir:{vit_export}", pretrained=True).eval()
    auto = transformers.AutoModel.from_pretrained(str(vit_export)).eval()
    wrapper = transformers.TimmWrapperModel.from_pretrained(str(vit_export)).eval()
    assert type(auto).__name__ == "TimmWrapperModel" and auto.timm_model.num_classes == 0
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = vit_run[1].export_encoder("target")(x).pooled
        torch.testing.assert_close(timm_model(x), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(auto(pixel_values=x).pooler_output, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(wrapper(pixel_values=x).pooler_output, expected, atol=1e-5, rtol=0)

    # the pipeline preprocesses with the export's own pretrained_cfg, as timm's transform does
    pipe = transformers.pipeline("image-feature-extraction", model=str(vit_export), pool=True)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=timm_model))
    image = _image(0)
    got = torch.as_tensor(np.asarray(pipe(image, return_tensors=True), dtype=np.float32)).reshape(1, -1)
    with torch.no_grad():
        want = timm_model(transform(image).unsqueeze(0))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


# -- timm's dataset factory ------------------------------------------------------------------------------------
def test_timm_create_dataset_reads_vispre_shards_with_their_sizes(tmp_path):
    from vispre.data.convert import write_shards
    from vispre.data.shard_writer import ShardWriter
    from vispre.data.sources import ImageFolderSource

    # shards from the folder converter (a pool of writers) and from the sequential ShardWriter, two prefixes
    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(5):
            _image(i + 10 * len(label), (24, 20)).save(tmp_path / "images" / label / f"{i}.jpg")
    out = tmp_path / "shards"
    write_shards(ImageFolderSource(tmp_path / "images"), out, samples_per_shard=4, progress=False)
    with ShardWriter(out, prefix="extra", samples_per_shard=2) as writer:
        for i in range(3):
            writer.write({"__key__": f"x{i}", "jpg": (tmp_path / "images/cat/0.jpg").read_bytes(), "cls": 1})
    assert not (out / "info.json").exists()  # the one info file in a shard folder is timm's _info.json
    info = json.loads((out / "_info.json").read_text())
    assert info["splits"]["shard"] == {"name": "shard", "num_samples": 10, "shard_lengths": [4, 4, 2],
                                       "filenames": ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]}
    assert info["splits"]["extra"]["num_samples"] == 3

    dataset = timm.data.create_dataset("wds/vispre", root=str(out), split="shard")
    assert len(dataset) == 10  # sized from _info.json, before reading a shard
    samples = list(dataset)
    assert len(samples) == 10 and sorted(int(t) for _, t in samples) == [0] * 5 + [1] * 5
    assert all(isinstance(image, Image.Image) for image, _ in samples)
    train = timm.data.create_dataset("wds/vispre", root=str(out), split="extra", is_training=True, batch_size=1)
    assert len(train) == 3 and len(list(train)) == 3


# -- open_clip's training loader -------------------------------------------------------------------------------
def _coco_shards(tmp_path, n=6, per_shard=2):
    """COCO-style captions (3 per image) -> vispre caption shards; returns (folder, {first caption})."""
    from vispre.data.convert import write_shards
    from vispre.data.sources import CocoSource

    images = tmp_path / "coco"
    images.mkdir()
    for i in range(n):
        _image(100 + i, (28, 36)).save(images / f"{i:012d}.jpg")
    annotations = [(i, f"photo {i} caption {j}") for j in range(3) for i in range(n)]
    coco = {"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in range(n)],
            "annotations": [{"id": k, "image_id": i, "caption": c} for k, (i, c) in enumerate(annotations)]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    out = tmp_path / "shards"
    write_shards(CocoSource(tmp_path / "captions.json", images), out, samples_per_shard=per_shard, progress=False)
    return out, {f"photo {i} caption 0" for i in range(n)}


def test_open_clip_training_loader_reads_vispre_caption_shards(tmp_path):
    import argparse

    import open_clip
    from open_clip_train import data  # shipped in the open_clip_torch wheel (pandas comes with datasets)

    out, first_captions = _coco_shards(tmp_path)
    urls = str(out / "shard-{00000..00002}.tar")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    args = argparse.Namespace(train_data=urls, val_data=urls, dataset_resampled=False, train_num_samples=None,
                              train_data_upsampling_factors=None, seed=0, batch_size=2, world_size=1, workers=0,
                              val_num_samples=None)
    preprocess = open_clip.image_transform(16, is_train=False)
    tokens = {tuple(tokenizer(c)[0].tolist()) for c in first_captions}
    for is_train in (True, False):  # the training pipeline (open_clip's own tar grouping) and the eval one
        info = data.get_wds_dataset(args, preprocess, is_train=is_train, tokenizer=tokenizer)
        if is_train:
            assert info.dataloader.num_samples == 6  # from vispre's sizes.json
        seen = [(image, text) for images, texts in info.dataloader for image, text in zip(images, texts)]
        assert len(seen) == 6, is_train  # none dropped for want of a txt caption
        assert {tuple(text.tolist()) for _, text in seen} == tokens  # KEY.txt is the first caption
        assert seen[0][0].shape == (3, 16, 16)


def test_the_webdataset_range_is_the_one_open_clip_train_reads_with():
    """0.2.95 added an end-of-shard ``{}`` to tar_file_expander; open_clip_train's tar grouping reads it as a file
    (KeyError: 'fname'). pyproject.toml keeps webdataset below it, and the installed one is inside the range."""
    from importlib.metadata import version

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    webdataset = next(Requirement(r) for r in project["dependencies"] if r.startswith("webdataset"))
    assert "0.2.86" in webdataset.specifier and "0.2.95" not in webdataset.specifier
    assert "1.0.2" not in webdataset.specifier
    assert version("webdataset") in webdataset.specifier, f"installed webdataset {version('webdataset')}"


# -- CLIP runs: an open_clip folder with both towers ----------------------------------------------------------
def clip_checkpoint(run: Path, *overrides, model: str | None = "test_vit", size: int = 160):
    """A CLIP (or AB-over-CLIP) method with perturbed weights (the EMA target differs from the online network),
    saved as a checkpoint of ``run``: no training needed for a round trip. ``model=None``: the tiny recipe's ViT."""
    from tests.test_methods import tiny_recipe
    from vispre.methods import build_method
    from vispre.models import build_encoder
    from vispre.pretrain.checkpoint import save_checkpoint
    from vispre.utils.typed_config import to_yaml

    torch.manual_seed(0)
    cfg = tiny_recipe(run.parent, "unused", "method.name=clip", f"train.output_dir={run}",
                      f"data.views=[{{count: 1, size: {size}, scale: [0.5, 1.0]}}]", *overrides)
    if model is not None:
        cfg.model.name, cfg.model.kwargs = model, {}
    method = build_method(cfg.method, build_encoder(cfg.model.name, **cfg.model.kwargs))
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.02 * torch.randn_like(p))
    method.update_target(0.5)
    with torch.no_grad():
        for p in method.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    save_checkpoint(run / "checkpoints", 1, method, optimizer, {"config": to_yaml(cfg)})
    return run, method.eval()


@pytest.mark.parametrize("method", ["clip", "ab"])
def test_clip_export_round_trips_through_open_clip(tmp_path, method):
    import open_clip

    from vispre.export.open_clip_export import clip_of

    overrides = ["method.name=ab", "method.base=clip"] if method == "ab" else []
    run, trained = clip_checkpoint(tmp_path / "run", *overrides)
    out = export(run, tmp_path / "encoder", which="target")
    provenance = json.loads((out / "export.json").read_text())
    assert provenance["open_clip"]["timm_model_kwargs"] == {}  # test_vit at its 160 px: open_clip 3.3.0 builds it

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    model.eval()
    clip = clip_of(trained)
    net = clip.net("target")
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(5))
    captions = ["a red square on grass", "two cats"]
    assert torch.equal(tokenizer(captions), net["text"].tokenize(captions))
    with torch.no_grad():
        image = model.encode_image(x, normalize=True)
        torch.testing.assert_close(image, clip.image_embed("target", net["encoder"](x).pooled), atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_text(tokenizer(captions)), net["text"](captions), atol=1e-5, rtol=0)
        torch.testing.assert_close(model.logit_scale.exp(), clip.scale("target"))
        online = clip.image_embed("online", clip.net("online")["encoder"](x).pooled)
        assert (image - online).abs().max() > 1e-4  # the target copy, not the online one
    assert preprocess(_image(1)).shape == (3, 160, 160)
    # the same folder still loads in timm with the same image features
    timm_model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(timm_model(x), model.visual.trunk(x), atol=1e-5, rtol=0)


def test_custom_encoders_are_written_with_their_timm_kwargs(tmp_path):
    """The tiny ViT (custom width, depth, patch size, 32 px) needs timm_model_kwargs, which open_clip after 3.3.0
    passes to timm.create_model; check they rebuild the trunk the weights belong to."""
    from safetensors.torch import load_file

    run, _ = clip_checkpoint(tmp_path / "run", model=None, size=32)
    out = export(run, tmp_path / "encoder")
    config = json.loads((out / "open_clip_config.json").read_text())
    kwargs = config["model_cfg"]["vision_cfg"]["timm_model_kwargs"]
    assert kwargs["img_size"] == [32, 32] and kwargs["dynamic_img_size"] is True
    assert (kwargs["patch_size"], kwargs["embed_dim"], kwargs["depth"], kwargs["num_heads"]) == (8, 64, 2, 2)
    assert "open_clip_torch > 3.3.0" in json.loads((out / "export.json").read_text())["open_clip"]["requires"]
    trunk = timm.create_model(config["model_cfg"]["vision_cfg"]["timm_model_name"], num_classes=0, **kwargs)
    weights = load_file(out / "open_clip_model.safetensors")
    trunk.load_state_dict({k[len("visual.trunk."):]: v for k, v in weights.items() if k.startswith("visual.trunk.")})


def test_non_clip_exports_have_no_open_clip_files(vit_export):
    assert not (vit_export / "open_clip_config.json").exists()
    assert json.loads((vit_export / "export.json").read_text())["open_clip"] is None


# -- model cards through huggingface_hub, no local paths ------------------------------------------------------
def test_model_card_is_a_hub_card_with_licence_datasets_and_model_index(vit_run, tmp_path, monkeypatch):
    import huggingface_hub

    from vispre.export.card import append_scores
    from vispre.export.hub import push_to_hub

    out = export(vit_run[0], tmp_path / "encoder", license="cc-by-4.0", datasets=["pixparse/cc12m-wds"])
    protocol = {"eval": "demo_digits", "task": "single", "encoder": {"path": str(out.resolve())},
                "data": {"train": f"{tmp_path.resolve()}/digits/shard-{{00000..00003}}.tar"}}
    append_scores(out, "linear digits", {"top1": 92.75, "top5": 99.5, "n": 10}, protocol)

    card = huggingface_hub.ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0" and data["datasets"] == ["pixparse/cc12m-wds"]
    assert data["library_name"] == "timm" and data["pipeline_tag"] == "image-feature-extraction"
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results == {("linear digits", "top1"): 92.75, ("linear digits", "top5"): 99.5, ("linear digits", "n"): 10}
    assert data["model-index"][0]["name"] == "pretrain"
    assert "| top1 | 92.75 |" in card.text  # the body as before

    # nothing published names a local path; the originals stay in the hidden .local.json
    for root in {str(tmp_path.resolve().parent), str(Path.home())}:  # the run's and the export's folders
        for name in ("README.md", "export.json", "scores.json", "config.json"):
            assert root not in (out / name).read_text(), (name, root)
    assert "<local>/shard-{00000..00003}.tar" in (out / "scores.json").read_text()
    local = json.loads((out / ".local.json").read_text())
    assert local["checkpoint"] == str((vit_run[0] / "checkpoints" / "checkpoint-00000002").resolve())

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, **kwargs):
            calls.append(kwargs)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    files = [name for name, _ in push_to_hub(out, "someone/tiny")]
    assert ".local.json" not in files and calls[0]["allow_patterns"] == files
    (out / "notes.md").write_text(f"trained from {tmp_path.resolve()}/data\n")  # a file added by hand
    with pytest.raises(ValueError, match="refusing to publish local paths: notes.md"):
        push_to_hub(out, "someone/tiny", dry_run=True)


def test_card_without_a_licence_says_so():
    from huggingface_hub import ModelCard

    from vispre.export.card import render

    info = {"method": "dino", "which": "target", "recipe": "r", "architecture": "resnet18", "model_args": {},
            "vispre_version": "0", "data": {"spec": "/home/someone/data/shard-0000{0..3}.tar", "format": "image"},
            "step": 1, "steps_planned": 2, "checkpoint": "/home/someone/runs/r/checkpoints/checkpoint-00000001",
            "input": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"},
            "recipe_yaml": "data:\n  spec: /home/someone/data/shard-0000{0..3}.tar\n"}
    text = render(info, {})
    card = ModelCard(text)
    assert card.data.license == "other" and card.data.license_name == "unspecified"
    assert "none given at export" in text and "/home/someone" not in text
    assert "`<local>/shard-0000{0..3}.tar`" in text and "`<local>/checkpoint-00000001`" in text


# -- ONNX with free image sizes --------------------------------------------------------------------------------
def test_onnx_dynamic_size_runs_in_onnxruntime_at_two_sizes(vit_run, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")

    out = export(vit_run[0], tmp_path / "encoder", onnx=True, dynamic_size=True)  # checks 32 and 64 px itself
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    encoder = vit_run[1].export_encoder("target")
    for size in (32, 48):  # 48: neither size the export checked
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        got = session.run(["features"], {"pixel_values": x.numpy()})[0]
        with torch.no_grad():
            expected = encoder(x).pooled.numpy()
        assert got.shape == (2, 64) and np.abs(got - expected).max() < 1e-4
    assert json.loads((out / "export.json").read_text())["onnx_dynamic_size"] is True


# -- public weights by name ------------------------------------------------------------------------------------
def _no_network(monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_public_weights_by_name_offline_are_a_one_line_error(tmp_path, monkeypatch):
    import huggingface_hub

    from vispre.models import Encoder
    from vispre.models.init_weights import init_encoder
    from vispre.utils.errors import UserError

    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest: HF_HUB_OFFLINE=1
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _no_network(monkeypatch)
    encoder = Encoder("resnet18")
    for init in ("hf-hub:timm/resnet18.a1_in1k", "timm:resnet18.a1_in1k", "timm"):
        with pytest.raises(UserError) as error:
            init_encoder(encoder, init)
        message = str(error.value)
        assert "\n" not in message
        assert f"model.init={init}: timm/resnet18.a1_in1k is not in the Hugging Face cache" in message
        assert "HF_HUB_OFFLINE=1" in message
    with pytest.raises(UserError, match="timm has no Hub weights registered for 'not_a_model'"):
        init_encoder(encoder, "timm:not_a_model")
    with pytest.raises(UserError, match="a Hub repo is ORG/NAME"):
        init_encoder(encoder, "hf-hub:resnet18")


def test_public_weights_by_name_load_from_the_hub_cache_offline(tmp_path, monkeypatch):
    """A Hub repo already in the cache (here laid out by hand as huggingface_hub keeps it) loads without network."""
    import huggingface_hub
    from safetensors.torch import save_file

    from vispre.models import Encoder
    from vispre.models.init_weights import init_encoder

    torch.manual_seed(1)
    source = Encoder("resnet18")
    snapshot = tmp_path / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    state = {k: v.contiguous() for k, v in source.timm_model.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # timm's classifier: dropped
    save_file(state, snapshot / "model.safetensors")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _no_network(monkeypatch)
    for init in ("hf-hub:timm/resnet18.a1_in1k", "timm"):
        torch.manual_seed(2)
        target = Encoder("resnet18")
        init_encoder(target, init)
        assert all(torch.equal(v, source.timm_model.state_dict()[k]) for k, v in target.timm_model.state_dict().items())


def test_export_command_passes_licence_datasets_and_dynamic_size(vit_run, tmp_path, monkeypatch):
    from vispre.cli import main
    from vispre.export import write

    with pytest.raises(SystemExit, match="--dynamic-size only applies to --onnx"):
        main(["export", str(vit_run[0]), str(tmp_path / "x"), "--dynamic-size"])
    seen = {}

    def fake_export(checkpoint, out_dir, **kwargs):
        seen.update(kwargs)
        return Path(out_dir)

    monkeypatch.setattr(write, "export", fake_export)
    main(["export", str(vit_run[0]), str(tmp_path / "y"), "--onnx", "--dynamic-size", "--license", "mit",
          "--dataset", "a/b", "--dataset", "c/d"])
    assert seen == {"which": "target", "onnx": True, "dynamic_size": True, "license": "mit", "datasets": ["a/b", "c/d"]}
