"""The GPU path measured: img/s, MFU, peak memory and data-wait of every method's training step, against a
timm-style supervised step on the same encoder, with vispre's own loader on local shards.

Rows (each built from its recipe through vispre's method registry, bench/step.py's construction):

    supervised  timm.create_model(num_classes=1000): forward, cross-entropy, backward, AdamW (the baseline)
    dino, ab_dino, simclr, ab_simclr, clip   recipes/cc12m/*.yaml (views, heads, 65536 prototypes, decoders)
    icvf        recipes/epickitchens/icvf.yaml on the same ViT, frames at the crop size
    lightly_dino  lightly's DINO head, loss and momentum update (only if ``lightly`` is importable)

Every row trains on ``--batch`` images per step (AB: that annotation batch plus ``--batch // 4`` bootstrap
images, the recipes' 64 / 16; ICVF: ``--batch`` (s, s', s+, z) samples; CLIP: image-caption pairs), in bf16
autocast on CUDA, with fused AdamW. img/s counts those images. FLOPs are counted by FlopCounterMode on the
row's first step (forward + backward; 2 FLOPs per multiply-add, see bench/flops.py); MFU = FLOPs per step x
steps / seconds / the device's dense bf16 peak. data-wait = the share of the timed wall time the training loop
spent blocked in ``next(loader)``: vispre's loader (``--workers`` processes) decoding and cropping JPEGs from
shards written to a temporary directory. Columns "vs sup" = img/s of the row / img/s of supervised; "AB/X" =
time per image of AB_X / time per image of X (the issue's target: AB_DINO <= 1.35x DINO).

    python bench/gpu.py                         # CUDA: ViT-S/16 and ViT-B/16 at 224 px, ~10 s per row
    python bench/gpu.py --models vit_base_patch16_224 --seconds-per-row 20 --json gpu.json
    python bench/gpu.py --tiny --json tiny.json # CPU, a 2-block ViT-Tiny at 32 px: seconds (the test runs it)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))  # the sibling bench modules, also when imported by a test
from flops import count_flops, peak_tflops, vit_b16_forward_gflops  # noqa: E402
from gpu_data import make_clip_shards, make_image_shards  # noqa: E402
from step import build_row, lightly_dino_step, method_step  # noqa: E402

from vispre.data import CropGroup, build_loader  # noqa: E402
from vispre.pretrain.recipe import load_recipe  # noqa: E402
from vispre.pretrain.speed import compile_encoders  # noqa: E402

ROOT = Path(__file__).parents[1]
RECIPES = {"dino": "cc12m/dino.yaml", "ab_dino": "cc12m/ab_dino.yaml", "simclr": "cc12m/simclr.yaml",
           "ab_simclr": "cc12m/ab_simclr.yaml", "clip": "cc12m/clip.yaml", "icvf": "epickitchens/icvf.yaml"}
ROWS = ["supervised", *RECIPES, "lightly_dino"]
BASE_OF = {"ab_dino": "dino", "ab_simclr": "simclr", "lightly_dino": "dino"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

TINY_MODEL = "{img_size: 32, patch_size: 8, embed_dim: 64, depth: 2, num_heads: 2}"  # tests/test_methods.py's
TINY_HEADS = ["method.dino.out_dim=64", "method.dino.hidden_dim=64", "method.dino.bottleneck_dim=32",
              "method.simclr.proj_hidden_dim=64", "method.simclr.proj_dim=32", "method.clip.text=tiny",
              "method.clip.embed_dim=32", "method.icvf.hidden_dims=[32, 32]", "method.ab.decoder_width=32",
              "method.ab.decoder_heads=2", "method.ab.decoder_depth=1", "method.ab.dim=16",
              "method.ab.head_hidden_dim=32"]


# -- rows ---------------------------------------------------------------------------------------------------
def recipe(name: str, model: str, args, data: dict):
    """The row's recipe with the benchmark's encoder, batch, loader and local shards; --tiny scales every crop
    to 32 px (224 -> 32, 96 -> 16: multiples of the patch) and shrinks the heads."""
    overrides = [f"model.name={model}", f"model.kwargs={TINY_MODEL if args.tiny else '{drop_path_rate: 0.1}'}",
                 f"data.spec={data['images']}", "data.weights=null", "data.resampled=true",
                 "data.samples_per_epoch=1000000000", f"data.batch_size={args.batch}", f"data.workers={args.workers}",
                 "data.shuffle_buffer=64", f"method.ab.bootstrap_batch_size={max(1, args.batch // 4)}"]
    if name == "icvf":
        overrides += [f"data.spec={data['clips']}", "data.format=clip", f"data.frame_size={args.size}"]
    elif args.decode_device != "cpu" and name in RECIPES:  # vispre's views only: the baselines read decoded crops
        overrides.append(f"data.decode_device={args.decode_device}")
    cfg = load_recipe(str(ROOT / "recipes" / RECIPES[name]), overrides + (TINY_HEADS if args.tiny else []))
    if args.tiny:
        def shrink(groups):
            return [replace(g, size=max(8, round(g.size * args.size / 224 / 8) * 8)) for g in groups]
        cfg.data.views = shrink(cfg.data.views)
        cfg.method.ab.bootstrap_views = shrink(cfg.method.ab.bootstrap_views)
    return cfg


def vispre_row(name: str, model: str, args, data: dict):
    cfg = recipe(name, model, args, data)
    method, optimizer = build_row(cfg, args.device)
    loader = method.build_loader(cfg.data)

    def step(batch, i):
        return method_step(method, optimizer, batch, i, args.device, args.bf16)
    return step, loader, lambda: compile_encoders(method, args.compile_backend)  # as train.compile does


def normalise(views: torch.Tensor, device: str) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> ImageNet-normalised float on the device (what timm's loader hands the model)."""
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    return (views.to(device, non_blocking=True).float() / 255 - mean) / std


def supervised_row(model: str, args, data: dict):
    """timm's training step: one RRC(0.08, 1) crop per image, labels from the shards, cross-entropy."""
    import timm

    cfg = recipe("dino", model, args, data)
    torch.manual_seed(0)
    net = timm.create_model(cfg.model.name, num_classes=1000, **cfg.model.kwargs).to(args.device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=args.device == "cuda")
    loader = build_loader(replace(cfg.data, format="labelled",
                                  views=[CropGroup(count=1, size=args.size, scale=[0.08, 1.0])]))

    def step(batch, i):
        x, y = normalise(batch["views"][0][:, 0], args.device), batch["cls"].to(args.device, non_blocking=True)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return step, loader, lambda: net.compile(backend=args.compile_backend, dynamic=False)


def lightly_row(model: str, args, data: dict):
    """lightly's DINO on DINO's recipe and loader; its crops normalised, without colour augmentation (lightly
    augments in its loader: bench/step.py compares the two on equal work)."""
    cfg = recipe("dino", model, args, data)
    n_global = cfg.data.views[0].count
    dino_step = lightly_dino_step(cfg.model.name, dict(cfg.model.kwargs), cfg.method.dino.out_dim, cfg.method.dino,
                                  args.device, args.bf16)
    loader = build_loader(cfg.data)

    def step(batch, i):
        crops = [normalise(group[:, j], args.device) for group in batch["views"] for j in range(group.shape[1])]
        return dino_step(crops, n_global)
    return step, loader, None  # lightly's modules are inside its step function: not compiled


def build(name: str, model: str, args, data: dict):
    if name == "supervised":
        return supervised_row(model, args, data)
    if name == "lightly_dino":
        return lightly_row(model, args, data)
    return vispre_row(name, model, args, data)


# -- timing -------------------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(step, loader, compile_row, args) -> dict:
    """FLOPs on the first step (eager; also a warm-up step), ``--compile`` then, more warm-up (compiling), then
    steps until ``--seconds-per-row`` (at least ``--min-steps``, at most ``--max-steps``); the time blocked in
    next(loader) is data-wait."""
    batches = iter(loader)
    _, flops = count_flops(step, next(batches), 0)
    if args.compile and compile_row is not None:
        compile_row()
    for i in range(1, args.warmup):
        step(next(batches), i)
    sync(args.device)
    waited, steps, start = 0.0, 0, time.perf_counter()
    while steps < args.max_steps and (steps < args.min_steps or time.perf_counter() - start < args.seconds_per_row):
        before = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - before
        step(batch, args.warmup + steps)
        steps += 1
    sync(args.device)  # no host sync inside the loop: the GPU queue stays full, as in a training run
    seconds = time.perf_counter() - start
    return {"steps": steps, "seconds": seconds, "images_per_s": steps * args.batch / seconds,
            "data_wait": waited / seconds, "flops_per_step": flops, "flops_per_image": flops / args.batch}


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak RSS (never falls)


def run_row(name: str, model: str, args, data: dict, peak: float | None) -> dict:
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step, loader, compile_row = build(name, model, args, data)
    decode = args.decode_device if name in RECIPES and name != "icvf" else "cpu"
    row = {"model": model, "row": name, "batch": args.batch, "compiled": bool(args.compile and compile_row),
           "decode_device": decode,
           **measure(step, loader, compile_row, args)}
    row["peak_memory_mb"] = peak_memory_mb(args.device)
    achieved = row["flops_per_step"] * row["steps"] / row["seconds"]
    row["achieved_tflops"] = achieved / 1e12
    row["mfu"] = achieved / (peak * 1e12) if peak else None
    row["images_per_s_at_peak"] = peak * 1e12 / row["flops_per_image"] if peak else None
    del step, loader, compile_row
    return row


def add_ratios(rows: list[dict]) -> None:
    """vs_supervised = img/s / the same model's supervised img/s; ab_over_base = time per image of AB_X (or of
    lightly's DINO) / time per image of X = img/s of X / img/s of the row."""
    by = {(r["model"], r["row"]): r for r in rows}
    for r in rows:
        base = by.get((r["model"], "supervised"))
        r["vs_supervised"] = r["images_per_s"] / base["images_per_s"] if base else None
        x = by.get((r["model"], BASE_OF.get(r["row"], "")))
        r["ab_over_base"] = x["images_per_s"] / r["images_per_s"] if x else None


def table(rows: list[dict], mem_label: str) -> str:
    def f(v, fmt, unit=""):
        return format(v, fmt) + unit if v is not None else "-"
    lines = [f"{'model':<22} {'row':<13} {'img/s':>8} {'vs sup':>7} {'AB/X':>6} {'GFLOP/img':>10} {'TFLOP/s':>8} "
             f"{'MFU':>6} {'@100%':>7} {'data-wait':>9} {mem_label:>10} {'steps':>5}"]
    for r in rows:
        mfu = 100 * r["mfu"] if r["mfu"] is not None else None
        lines.append(f"{r['model']:<22} {r['row']:<13} {r['images_per_s']:>8.1f} "
                     f"{f(r['vs_supervised'], '.2f', 'x'):>7} {f(r['ab_over_base'], '.2f', 'x'):>6} "
                     f"{r['flops_per_image'] / 1e9:>10.3f} "
                     f"{r['achieved_tflops']:>8.3f} {f(mfu, '.1f', '%'):>6} "
                     f"{f(r['images_per_s_at_peak'], '.0f'):>7} {100 * r['data_wait']:>8.1f}% "
                     f"{r['peak_memory_mb']:>10.0f} {r['steps']:>5}")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU, 2-block ViT-Tiny at 32 px, a few steps per row")
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    parser.add_argument("--batch", type=int, help="images per step, every row (default 64; --tiny 8)")
    parser.add_argument("--seconds-per-row", type=float, help="timed seconds per row (default 10; --tiny 0.5)")
    parser.add_argument("--warmup", type=int, help="steps before timing, the FLOP-counted one included "
                                                   "(default 3; --tiny 1)")
    parser.add_argument("--min-steps", type=int, default=2)
    parser.add_argument("--max-steps", type=int, help="default 10000; --tiny 3")
    parser.add_argument("--workers", type=int, help="loader processes (default min(8, CPUs); --tiny 0)")
    parser.add_argument("--images", type=int, help="JPEGs written to the temporary shards (default 512; --tiny 64)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not in the table")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoders (as train.compile) "
                        "after the FLOP count; raise --warmup to cover the compilation")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--decode-device", default="cpu", choices=["cpu", "cuda"],
                        help="data.decode_device of the vispre image rows (cuda: nvJPEG in the training process)")
    parser.add_argument("--json", metavar="OUT", help="write the figures here")
    args = parser.parse_args(argv)
    tiny = args.tiny
    defaults = {"batch": 8 if tiny else 64, "seconds_per_row": 0.5 if tiny else 10.0, "warmup": 1 if tiny else 3,
                "max_steps": 3 if tiny else 10000, "workers": 0 if tiny else min(8, os.cpu_count() or 1),
                "images": 64 if tiny else 512}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if tiny:
        args.models = ["vit_tiny_patch16_224"]
    args.device = "cpu" if tiny or not torch.cuda.is_available() else "cuda"
    args.bf16 = args.device == "cuda"
    args.size = 32 if tiny else 224
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [r for r in args.rows if r != "lightly_dino" or _has_lightly()]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    peak = args.peak_tflops or (peak_tflops(device_name) if args.device == "cuda" else None)
    gflops_b16 = vit_b16_forward_gflops()
    print(f"analytic check: ViT-B/16 forward at 224 px, batch 1: {gflops_b16:.2f} GFLOPs counted by FlopCounterMode "
          f"(2 FLOPs per multiply-add); timm's count is 17.6 GMACs = 35.1 GFLOPs")
    print(f"device {device_name} ({args.device}{', bf16 autocast' if args.bf16 else ', fp32'}), torch "
          f"{torch.__version__}, dense bf16 peak "
          f"{f'{peak:.0f} TFLOP/s' if peak else 'unknown: MFU omitted (pass --peak-tflops)'}; batch {args.batch}, "
          f"{args.workers} loader workers, {args.seconds_per_row} s per row")
    if "lightly_dino" in args.rows and "lightly_dino" not in rows:
        print("lightly is not installed (pip install 'vispre[bench]'): no lightly_dino row")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        side = 48 if args.tiny else 256
        data = {"images": make_image_shards(Path(tmp) / "images", side, args.images),
                "clips": make_clip_shards(Path(tmp) / "clips", side if args.tiny else 224, max(8, args.images // 16),
                                          frames=8 if args.tiny else 16)}
        for model in args.models:
            for name in rows:
                results.append(run_row(name, model, args, data, peak))
                print(f"  {model} {name}: {results[-1]['images_per_s']:.1f} img/s", flush=True)
    add_ratios(results)
    mem_label = "peak MB" if args.device == "cuda" else "RSS MB"
    print(table(results, mem_label))
    if args.device != "cuda":
        print("CPU: no MFU (no bf16 peak for a CPU); RSS MB is the process's peak RSS so far, not the row's own")
    figures = {"device": device_name, "device_kind": args.device, "torch": torch.__version__, "peak_tflops": peak,
               "mfu_note": None if peak else "device peak unknown: MFU omitted", "batch": args.batch,
               "workers": args.workers, "bf16": args.bf16, "size": args.size, "vit_b16_forward_gflops": gflops_b16,
               "memory": "cuda max_memory_allocated" if args.device == "cuda" else "process peak RSS",
               "rows": results}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return figures


def _has_lightly() -> bool:
    try:
        import lightly  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    from vispre.utils.errors import UserError

    try:
        main()
    except UserError as e:  # a bad option (e.g. --decode-device cuda without CUDA): the message, no traceback
        sys.exit(f"bench/gpu.py: {e}")
