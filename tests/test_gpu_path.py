"""Issue 18, the training step's GPU path, tested on the CPU (no GPU here): no host sync between logs,
compiled = eager, bf16 = fp32 within tolerance, the fused optimizer's on-device skip, the switches' settings."""

import copy
import math
import time
import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode

import vispre.pretrain.loop as loop
import vispre.views.photometric as photometric
from tests.shards import make_image_shards
from tests.test_ab import batches as ab_batches
from tests.test_methods import TINY_AB, build, fake_batch, tiny_recipe
from tests.test_robust_train import fit_tracking_parameters, poison, rows, tiny, trainer
from vispre.pretrain.recipe import load_recipe
from vispre.pretrain.speed import build_optimizer, compile_encoders, is_cnn, use_channels_last
from vispre.pretrain.step_metrics import MetricWindow, NonFiniteWatch
from vispre.utils.errors import UserError

# Python-level calls that make the host wait for the device (a CUDA tensor read as a number, or an op whose
# output size depends on the data)
SYNCING = {"item", "__bool__", "__int__", "__float__", "__index__", "tolist", "numpy", "cpu", "nonzero",
           "masked_select", "unique", "unique_consecutive", "argwhere", "nonzero_static"}


def blocking_copy(name, args, kwargs) -> bool:
    """A tensor made on the device from Python data (``new_tensor``, ``torch.tensor(..., device=)``): on a GPU a
    copy from pageable memory that waits for the stream, every step. (``.to(device)`` is not counted: on the
    CPU a batch's copy cannot be told from a no-op.)"""
    if name == "new_tensor":
        return True
    return name in ("tensor", "as_tensor") and kwargs.get("device") is not None


def bool_index(args) -> bool:
    index = args[1] if len(args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def caller() -> str:
    """The innermost vispre line on the stack (where a syncing call came from, for the failure message)."""
    frames = [f for f in traceback.extract_stack() if "/vispre/" in f.filename]
    return f"{frames[-1].filename.split('/vispre/')[-1]}:{frames[-1].lineno}" if frames else "?"


class SyncCounter(TorchFunctionMode):
    """Records (trainer step, op) for every syncing call made while active and not ``paused``."""

    def __init__(self, t):
        super().__init__()
        self.t, self.calls, self.where, self.paused = t, [], [], False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        kwargs = kwargs or {}
        if not self.paused and (name in SYNCING or name in ("__getitem__", "__setitem__") and bool_index(args)
                                or blocking_copy(name, args, kwargs)):
            self.calls.append((self.t.step, name))
            self.where.append(caller())
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_image_shards(tmp_path_factory.mktemp("gpu_path") / "shards", [8] * 4)[0]


@pytest.mark.parametrize("method", ["dino", "ab_dino"])
def test_no_host_sync_between_logs(tmp_path, shards, monkeypatch, method):
    extra = {"dino": [], "ab_dino": ["method.name=ab", "method.base=dino", *TINY_AB,
                                     "method.ab.bootstrap_views=[{count: 2, size: 32, scale: [0.05, 1.0]}]"]}[method]
    t = trainer(shards, tmp_path / "run", "train.steps=12", "train.log_every=4", "optim.clip_grad=1.0", *extra)
    assert t.skip_on_device  # fused AdamW on the CPU too: the path a GPU takes
    prefetched = [b for _, b in zip(range(12), loop.epochs(t.loader))]  # the loader's own work is not counted
    monkeypatch.setattr(loop, "epochs", lambda loader: iter(prefetched))
    monkeypatch.setattr(photometric, "INDEX_DEVICES", ())  # the accelerator branch of on_samples
    counter = SyncCounter(t)
    is_padding = loop.is_padding

    def host_is_padding(batch):  # reads the loader's CPU tensor, which on a GPU run is no device sync
        counter.paused = True
        try:
            return is_padding(batch)
        finally:
            counter.paused = False

    monkeypatch.setattr(loop, "is_padding", host_is_padding)
    with counter:
        t.fit()
    # every call made while t.step was k: the end of step k and all of step k + 1 up to its increment
    between_logs = [(*c, w) for c, w in zip(counter.calls, counter.where) if c[0] % 4]
    assert between_logs == [], sorted({c[1:] for c in between_logs})
    at_logs = [c for c in counter.calls if c[0] in (4, 8)]
    assert at_logs == [(4, "tolist"), (8, "tolist")]  # one read of the window per log, nothing else
    logged = rows(tmp_path / "run")
    assert [r["step"] for r in logged] == [4, 8, 12] and all(math.isfinite(r["loss"]) for r in logged)
    assert all(r["nonfinite"] == 0 and r["grad_norm"] > 0 for r in logged)


def test_metric_window_means_by_hand():
    w = MetricWindow()
    w.add({"loss": torch.tensor(1.0), "acc": torch.tensor(0.5), "lr_host": 3.0})
    w.add({"loss": torch.tensor(3.0), "acc": torch.tensor(math.nan), "empty": torch.tensor(math.nan),
           "lr_host": 5.0})
    w.add({"loss": torch.tensor(2.0, dtype=torch.bfloat16), "acc": torch.tensor(1.0), "empty": torch.tensor(math.nan),
           "lr_host": 4.0})
    row, extra = w.reduce(torch.tensor([7.0, 8.0]))
    # acc: over the steps where it is finite; empty: never finite, left out; loss: a plain mean
    assert row == {"loss": 2.0, "acc": 0.75, "lr_host": 4.0} and extra == [7.0, 8.0] and w.steps == 3
    w.add({"loss": torch.tensor(math.nan)})
    assert math.isnan(w.reduce()[0]["loss"])  # a NaN loss shows


def test_nonfinite_watch_by_hand():
    watch = NonFiniteWatch("cpu", limit=2)
    skipped = [False, True, True, False, True, True, True, True]
    for step, s in enumerate(skipped, 1):
        watch.update(step, torch.tensor(s), torch.tensor(math.nan if s else float(step)))
    seen = watch.read(watch.state.tolist())
    assert seen["first"] == 2 and math.isnan(seen["first_loss"])
    assert seen["over"] == 7 and seen["in_row"] == 4  # steps 5, 6, 7 in a row: 3 > 2 at step 7
    watch.update(9, torch.tensor(True), torch.tensor(math.nan))  # the run carries over, the window's firsts not
    seen = watch.read(watch.state.tolist())
    assert seen["in_row"] == 5 and seen["first"] == 9 and seen["over"] == 9


def test_unfused_optimizer_still_skips_nonfinite_steps(tmp_path, shards):
    t = trainer(shards, tmp_path / "run", "train.steps=4", "train.fused_adamw=false")
    assert not t.skip_on_device and not t.optimizer.optimizer.param_groups[0]["fused"]
    poison(t, {1})
    seen = fit_tracking_parameters(t)
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    assert [r["nonfinite"] for r in rows(tmp_path / "run")] == [0, 1, 0, 0]


def test_fused_skip_leaves_optimizer_state_and_target(tmp_path, shards):
    t = trainer(shards, tmp_path / "run", "train.steps=3")
    poison(t, {2})
    t.fit()
    state = t.optimizer.optimizer.state
    assert {float(s["step"]) for s in state.values()} == {2.0}  # 3 steps, the NaN one not counted


# -- compile, bf16 ------------------------------------------------------------------------------------------
def seeded(method, step=3):
    method.set_step(step, 10, seed=0, rank=0)
    return method


def test_compiled_step_matches_eager(tmp_path):
    cfg = tiny_recipe(tmp_path, "unused", "method.name=dino")
    torch.manual_seed(0)
    eager = seeded(build(cfg))
    compiled = copy.deepcopy(eager)
    # aot_eager: traced by dynamo and AOTAutograd as inductor is, without generating C++: inductor's CPU
    # compile of this tiny ViT took 189 s for the first step here (2 shared cores; its loss 3.6239512 against
    # eager 3.6239517), over this test's 60 s budget; the GPU path uses inductor
    assert compile_encoders(compiled, backend="aot_eager") == ["online.encoder", "target.module.encoder"]
    batch = fake_batch()
    loss_eager, _ = eager(batch)
    start = time.perf_counter()
    loss_compiled, _ = compiled(batch)
    assert time.perf_counter() - start < 60
    assert torch.allclose(loss_compiled, loss_eager, rtol=1e-5, atol=1e-6), (loss_compiled, loss_eager)
    loss_eager.backward()
    loss_compiled.backward()
    g_e = torch.cat([p.grad.flatten() for p in eager.online.parameters() if p.grad is not None])
    g_c = torch.cat([p.grad.flatten() for p in compiled.online.parameters() if p.grad is not None])
    assert torch.allclose(g_c, g_e, rtol=1e-4, atol=1e-6)
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # no _orig_mod: checkpoints unchanged


def test_compiled_ab_step_matches_eager(tmp_path):
    torch.manual_seed(0)
    eager = seeded(build(tiny_recipe(tmp_path, "unused", "method.name=ab", "method.base=dino")))
    compiled = copy.deepcopy(eager)
    assert compile_encoders(compiled, backend="aot_eager") == [
        "base.online.encoder", "base.online.ab_decoder", "base.target.module.encoder", "base.target.module.ab_decoder"]
    batch = ab_batches()
    (loss_eager, m_eager), (loss_compiled, m_compiled) = eager(batch), compiled(batch)
    assert torch.allclose(loss_compiled, loss_eager, rtol=1e-5, atol=1e-6), (loss_compiled, loss_eager)
    assert torch.allclose(m_compiled["td_loss"], m_eager["td_loss"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["dino", "ab_dino"])
def test_bf16_loss_matches_fp32(tmp_path, method):
    extra = ["method.name=dino"] if method == "dino" else ["method.name=ab", "method.base=dino"]
    torch.manual_seed(0)
    fp32 = seeded(build(tiny_recipe(tmp_path, "unused", *extra)))
    bf16 = copy.deepcopy(fp32)
    batch = fake_batch() if method == "dino" else ab_batches()
    loss32, metrics32 = fp32(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, metrics16 = bf16(batch)
    loss32, loss16 = loss32.detach(), loss16.detach()
    assert loss16.dtype == torch.float32  # the heads' logits and the loss are float32 under autocast
    assert abs(float(loss16) - float(loss32)) < 0.02 * abs(float(loss32)), (float(loss16), float(loss32))
    assert float(loss32) > 0.5  # not a trivially small loss that any precision gets right
    if method == "ab_dino":
        assert abs(float(metrics16["td_loss"]) - float(metrics32["td_loss"])) < 0.02 * float(metrics32["td_loss"])


def test_bf16_views_under_autocast(tmp_path):
    method = seeded(build(tiny_recipe(tmp_path, "unused", "method.name=dino")))
    batch = fake_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        views16 = method.prepare(batch)
    views32 = method.prepare(batch)
    assert views16.images[0].dtype == torch.bfloat16 and views32.images[0].dtype == torch.float32
    # the same augmentation (float32 maths), rounded to bf16 (8 bits of mantissa: 2^-8 relative)
    assert torch.allclose(views16.images[0].float(), views32.images[0], rtol=2 ** -8, atol=1e-2)


def test_trainer_compile_option(tmp_path, shards):
    t = trainer(shards, tmp_path / "run", "train.steps=2", "train.compile=true", "train.compile_backend=aot_eager")
    encoder = t.method.online["encoder"]
    assert encoder._compiled_call_impl is not None
    t.fit()
    assert [r["step"] for r in rows(tmp_path / "run")] == [1, 2] and math.isfinite(rows(tmp_path / "run")[-1]["loss"])


# -- the switches ---------------------------------------------------------------------------------------------
def test_fused_adamw_and_attention_and_ddp_options(tmp_path, shards):
    t = trainer(shards, tmp_path / "run", "train.steps=1", "train.ddp.static_graph=true")
    assert all(g["fused"] for g in t.optimizer.optimizer.param_groups)
    attention = [m for m in t.method.modules() if hasattr(m, "fused_attn")]
    assert attention and all(m.fused_attn for m in attention)  # timm's SDPA path
    handler = t.accelerator.ddp_handler
    assert (handler.static_graph, handler.gradient_as_bucket_view, handler.find_unused_parameters) == \
        (True, True, False)
    with pytest.raises(ValueError, match="no fused AdamW for device meta"):
        build_optimizer([{"params": [torch.nn.Parameter(torch.ones(1))]}], torch.device("meta"), "true", lr=1e-3)


def test_channels_last_setting():
    import timm

    cnn = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8, depth=1)
    assert is_cnn(cnn) and not is_cnn(vit)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert [use_channels_last("auto", m, d) for m, d in ((cnn, cuda), (vit, cuda), (cnn, cpu))] == [True, False, False]
    assert use_channels_last("true", vit, cpu) and not use_channels_last("false", cnn, cuda)


def test_channels_last_true_on_a_cnn_trains(tmp_path, shards):
    args = [a for a in tiny(shards, tmp_path / "run", "train.steps=2", "train.channels_last=true")
            if not a.startswith("model.")]
    t = loop.Trainer(load_recipe(None, [*args, "model.name=resnet10t"]))
    conv = next(m for m in t.method.online["encoder"].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    t.fit()
    assert all(math.isfinite(r["loss"]) for r in rows(tmp_path / "run"))


@pytest.mark.parametrize(("override", "message"), [
    ("train.channels_last=sideways", "train.channels_last: must be one of auto, true, false, got 'sideways'"),
    ("train.fused_adamw=maybe", "train.fused_adamw: must be one of auto, true, false, got 'maybe'"),
])
def test_switches_are_checked(override, message):
    with pytest.raises(UserError, match=message):
        load_recipe(None, ["data.spec=x", override])


# -- JPEG decode on the device (data.decode_device: cuda; run here with device "cpu") ---------------------------
def smooth_image(width=96, height=80, seed=0, fmt="JPEG") -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rs = np.random.RandomState(seed)  # a smooth image: JPEG keeps it well, so decoders agree closely
    small = (rs.rand(height // 8, width // 8, 3) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((width, height), Image.BILINEAR).save(buffer, fmt, quality=95)
    return buffer.getvalue()


def test_device_decode_matches_the_cpu_path():
    from vispre.data.device_decode import decode_views
    from vispre.data.transforms import CropGroup, RandomViews, collate

    groups = [CropGroup(count=2, size=32, scale=[0.3, 1.0]), CropGroup(count=3, size=16, scale=[0.1, 0.4])]
    cpu = RandomViews(groups, reduce_decode=False)
    deferred = RandomViews(groups, decode=False)
    images = [smooth_image(seed=0), smooth_image(seed=1), smooth_image(seed=2, fmt="PNG")]  # PNG: the fallback
    decoded = collate([cpu(d, torch.Generator().manual_seed(i)) for i, d in enumerate(images)])
    raw = collate([deferred(d, torch.Generator().manual_seed(i)) for i, d in enumerate(images)])
    assert "views" not in raw and raw["jpeg"] == images and raw["view_groups"][0].tolist() == [[2, 32], [3, 16]]
    assert torch.equal(raw["flips"], decoded["flips"]) and torch.allclose(raw["boxes"], decoded["boxes"])
    out = decode_views(raw, "cpu")
    for a, b in zip(out["views"], decoded["views"]):
        assert a.shape == b.shape and a.dtype == torch.uint8
        assert (a.float() - b.float()).abs().mean() < 1.0  # two JPEG decoders, the same crop and resize


def test_decode_device_cuda_without_cuda_is_a_user_error(tmp_path, shards):
    from vispre.data import build_loader

    cfg = load_recipe(None, tiny(shards, tmp_path / "run", "data.decode_device=cuda"))
    with pytest.raises(UserError, match=r"data.decode_device=cuda: no CUDA device here .* set data.decode_device=cpu"):
        build_loader(cfg.data)
    with pytest.raises(UserError, match="data.decode_device: must be one of cpu, cuda, got 'gpu'"):
        load_recipe(None, ["data.spec=x", "data.decode_device=gpu"])


def test_training_on_undecoded_batches(tmp_path, shards, monkeypatch):
    """The whole path minus nvJPEG: the loader passes JPEG bytes, the method decodes and crops them."""
    import vispre.data.pipeline as pipeline

    monkeypatch.setattr(pipeline, "check_decode_device", lambda cfg: None)  # no CUDA here: decode on the CPU
    t = trainer(shards, tmp_path / "run", "train.steps=3", "data.decode_device=cuda")
    batch = next(iter(t.loader))
    assert "jpeg" in batch and "views" not in batch and len(batch["jpeg"]) == 4
    views = t.method.prepare(batch)
    assert [tuple(g.shape) for g in views.images] == [(4, 2, 3, 32, 32)]
    t.fit()
    assert [r["step"] for r in rows(tmp_path / "run")] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in rows(tmp_path / "run"))


# -- on a CUDA GPU only (skipped here: no GPU has run them yet) -------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("method", ["dino", "ab_dino"])
def test_cuda_steps_between_logs_never_sync(tmp_path, shards, monkeypatch, method):
    """torch's own sync detector (C++ syncs included: nonzero, blocking copies) raises inside the steps that
    follow a step (the first after each log may initialise lazily: cuDNN plans, optimizer state)."""
    extra = [] if method == "dino" else ["method.name=ab", "method.base=dino", *TINY_AB]
    t = trainer(shards, tmp_path / "run", "train.steps=8", "train.log_every=4", "train.precision=bf16", *extra)
    prefetched = [b for _, b in zip(range(8), loop.epochs(t.loader))]
    monkeypatch.setattr(loop, "epochs", lambda loader: iter(prefetched))
    step, strict_steps = t.train_step, []

    def strict(batches):
        if t.step % 4 == 0:
            return step(batches)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return step(batches)
        finally:
            torch.cuda.set_sync_debug_mode(0)
            strict_steps.append(t.step)

    t.train_step = strict
    t.fit()
    assert strict_steps == [1, 2, 3, 5, 6, 7]
    assert all(math.isfinite(r["loss"]) for r in rows(tmp_path / "run"))


@needs_cuda
def test_nvjpeg_views_match_the_cpu_path():
    from vispre.data.device_decode import decode_views
    from vispre.data.transforms import CropGroup, RandomViews, collate

    groups = [CropGroup(count=2, size=32, scale=[0.3, 1.0])]
    images = [smooth_image(seed=i) for i in range(4)]
    decoded = collate([RandomViews(groups, reduce_decode=False)(d, torch.Generator().manual_seed(i))
                       for i, d in enumerate(images)])
    raw = collate([RandomViews(groups, decode=False)(d, torch.Generator().manual_seed(i))
                   for i, d in enumerate(images)])
    out = decode_views(raw, "cuda")
    assert out["views"][0].device.type == "cuda"
    assert (out["views"][0].cpu().float() - decoded["views"][0].float()).abs().mean() < 1.5


def test_ema_update_with_a_device_momentum_matches_timm():
    from timm.utils.model_ema import ModelEmaV3

    from vispre.methods.base import ema_update_

    torch.manual_seed(0)
    online = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    by_timm, by_tensor = ModelEmaV3(online), ModelEmaV3(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    ema_update_(by_timm, online, 0.9)
    ema_update_(by_tensor, online, torch.tensor(0.9, dtype=torch.float64))
    for a, b in zip(by_timm.module.state_dict().values(), by_tensor.module.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-7)
    before = [t.clone() for t in by_tensor.module.state_dict().values()]
    ema_update_(by_tensor, online, torch.tensor(1.0, dtype=torch.float64))  # a skipped step: nothing moves
    assert all(torch.equal(a, b) for a, b in zip(before, by_tensor.module.state_dict().values()))
