"""Training-step cost of AB_X against its base X, and of vispre's DINO against lightly's DINO.

Same encoder and crops for every row. X trains on a batch of ``--batch`` images with its own views; AB_X
trains on the *same* annotation batch (the same images and views: its base loss and annotations) plus a
bootstrap batch of ``--batch // --bootstrap-ratio`` other images (4 views each at ``--sizes[0]`` px, as the
paper's base // 2 annotation and base // 8 bootstrap batches), so the AB/base ratio is the cost AB adds per
annotation image. Every row runs in a fresh process, so its peak memory is its own. lightly (``pip install
lightly``, the ``bench`` extra) runs its own DINOProjectionHead, DINOLoss and update_momentum on a timm
backbone built exactly like vispre's; its photometric augmentation would run in the data loader, so its row
gets pre-made float crops, and vispre is timed twice: with its on-device augmentation (what a run does) and
with ``augment=none`` (the same work as lightly's row).

    python bench/step.py                      # CPU: the demo recipes' ViT-Tiny at 32/16 px
    python bench/step.py --device cuda --model vit_small_patch16_224 --patch 16 --sizes 224 96 --counts 2 8 \
        --batch 128 --bf16 --ab method.ab.decoder_width=384 method.ab.decoder_heads=6 method.ab.decoder_depth=2

Prints milliseconds per (annotation) image and per seen view (the paper's budget counts views: X's views, or
AB's annotation views plus its bootstrap views) for a training step (forward, backward, optimizer step, EMA
update), the AB/base ratios, the two batches' input sizes and peak memory (CUDA: max allocated; CPU: the
process's peak RSS).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time

import torch

from vispre.methods import build_method
from vispre.models import build_encoder
from vispre.pretrain.recipe import load_recipe
from vispre.views.boxes import candidate_boxes

CPU_AB = ["method.ab.decoder_width=192", "method.ab.decoder_heads=3", "method.ab.decoder_depth=1", "method.ab.dim=128",
          "method.ab.head_hidden_dim=256"]  # the demo recipes' decoder


def fake_batch(b, sizes, counts, seed=0):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randint(0, 256, (b, n, 3, s, s), dtype=torch.uint8, generator=g) for n, s in zip(counts, sizes)]
    boxes, flips = candidate_boxes(b, sum(counts), [0.05, 1.0], generator=g)
    return {"views": views, "boxes": boxes, "flips": flips, "valid": torch.ones(b, dtype=torch.bool),
            "txt": [f"caption {i}" for i in range(b)]}


def batch_for(ab: bool, args) -> dict:
    annotation = fake_batch(args.batch, args.sizes, args.counts)
    if not ab:
        return annotation
    bootstrap = fake_batch(max(1, args.batch // args.bootstrap_ratio), [args.sizes[0]], [4], seed=1)
    return {"annotation": annotation, "bootstrap": bootstrap}


def input_mb(batch: dict) -> float:
    return sum(v.numel() for v in batch["views"]) / 2**20


def measure(method_overrides, args) -> tuple[float, float]:
    """One row, in a fresh process (peak memory of its own)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, (method_overrides, args))


def _measure(method_overrides, args) -> tuple[float, float]:
    torch.set_num_threads(args.threads) if args.threads else None
    kwargs = f"{{img_size: {args.sizes[0]}, patch_size: {args.patch}}}"
    cfg = load_recipe(None, ["data.spec=unused", f"model.name={args.model}", f"model.kwargs={kwargs}",
                             f"method.dino.out_dim={args.prototypes}", "method.clip.text=tiny", *method_overrides])
    method, optimizer = build_row(cfg, args.device)
    batch = batch_for(cfg.method.name == "ab", args)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return timed(lambda i: method_step(method, optimizer, batch, i, args.device, args.bf16), args)


def build_row(cfg, device: str):
    """The recipe's method on its encoder (seed 0) and AdamW over its trainable parameters (fused on CUDA).
    Shared with bench/gpu.py, so both benchmarks time the same construction."""
    torch.manual_seed(0)
    method = build_method(cfg.method, build_encoder(cfg.model.name, **cfg.model.kwargs)).to(device)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4,
                                  fused=device == "cuda")
    return method, optimizer


def method_step(method, optimizer, batch, i: int, device: str, bf16: bool) -> torch.Tensor:
    """One training step of a vispre method: forward, backward, optimizer step, EMA update."""
    method.set_step(i, 1000)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        loss, _ = method(batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    method.update_target(0.996)
    return loss.detach()


def timed(step, args) -> tuple[float, float]:
    """Seconds per (annotation) image over ``args.steps`` steps after ``args.warmup``, and peak memory (MB)."""
    for i in range(args.warmup):
        step(i)
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    if args.device == "cuda":
        torch.cuda.synchronize()
        memory = torch.cuda.max_memory_allocated() / 2**20
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return (time.perf_counter() - start) / (args.steps * args.batch), memory


def measure_lightly(args) -> tuple[float, float]:
    """lightly's DINO step on the same timm backbone, heads sizes, crops and optimizer."""
    from vispre.methods import DINOConfig

    model_kwargs = {"img_size": args.sizes[0], "patch_size": args.patch}
    step = lightly_dino_step(args.model, model_kwargs, args.prototypes, DINOConfig(), args.device, args.bf16)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(args.batch, 3, s, s, generator=g).to(args.device)
             for n, s in zip(args.counts, args.sizes) for _ in range(n)]
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return timed(lambda i: step(views, args.counts[0]), args)


def lightly_dino_step(model: str, model_kwargs: dict, prototypes: int, d, device: str, bf16: bool):
    """lightly's DINO (its head, loss and momentum update) on vispre's timm backbone: a function
    ``step(views, n_global)`` of float crops, teacher on the first ``n_global``. Shared with bench/gpu.py."""
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    def network():
        backbone = build_encoder(model, **model_kwargs).timm_model
        head = DINOProjectionHead(backbone.num_features, d.hidden_dim, d.bottleneck_dim, prototypes)
        return torch.nn.Sequential(backbone, head).to(device)

    torch.manual_seed(0)
    student, teacher = network(), network()  # not deepcopy: lightly's head uses the old weight_norm
    teacher.load_state_dict(student.state_dict())
    deactivate_requires_grad(teacher)
    criterion = DINOLoss(output_dim=prototypes, teacher_temp=d.teacher_temp).to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=device == "cuda")

    def step(views, n_global: int):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            with torch.no_grad():
                teacher_out = [teacher(v) for v in views[:n_global]]
            student_out = [student(v) for v in views]
            loss = criterion(teacher_out, student_out)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_momentum(student, teacher, m=0.996)
        return loss.detach()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs=2, default=[32, 16], help="global and local crop sizes")
    parser.add_argument("--counts", type=int, nargs=2, default=[2, 4], help="global and local crops per image")
    parser.add_argument("--batch", type=int, default=32, help="images per step of X = AB's annotation batch")
    parser.add_argument("--bootstrap-ratio", type=int, default=4,
                        help="annotation batch // bootstrap batch (the paper: (base // 2) // (base // 8) = 4)")
    parser.add_argument("--prototypes", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per row (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--bases", nargs="+", default=["dino", "simclr"])
    parser.add_argument("--ab", nargs="*", default=CPU_AB, metavar="KEY=VALUE", help="AB recipe overrides")
    parser.add_argument("--no-lightly", dest="lightly", action="store_false", help="skip the lightly comparison")
    args = parser.parse_args()
    crops = f"{args.counts[0]}x{args.sizes[0]} + {args.counts[1]}x{args.sizes[1]} px"
    extra = args.batch // args.bootstrap_ratio
    print(f"{args.model} patch {args.patch}, crops {crops}, batch {args.batch} (AB: + {extra} bootstrap images x 4 "
          f"views at {args.sizes[0]} px), {args.device}{' bf16' if args.bf16 else ''}")
    boxed = batch_for(True, args)
    print(f"input batches (uint8): annotation {input_mb(boxed['annotation']):.1f} MB, bootstrap "
          f"{input_mb(boxed['bootstrap']):.1f} MB")
    views = {False: args.batch * sum(args.counts), True: args.batch * sum(args.counts) + extra * 4}
    print(f"{'method':<10} {'ms/image':>9} {'AB/base':>8} {'ms/view':>8} {'AB/base':>8} {'peak MB':>8}")
    for base in args.bases:
        augment = {"dino": "dino", "clip": "none"}.get(base, "simclr")
        t_base, m_base = measure([f"method.name={base}", f"method.augment={augment}"], args)
        t_ab, m_ab = measure(["method.name=ab", f"method.base={base}", f"method.augment={augment}", *args.ab], args)
        v_base, v_ab = t_base * args.batch / views[False], t_ab * args.batch / views[True]  # per seen view
        print(f"{base:<10} {1000 * t_base:>9.2f} {'':>8} {1000 * v_base:>8.2f} {'':>8} {m_base:>8.0f}")
        print(f"{'ab_' + base:<10} {1000 * t_ab:>9.2f} {t_ab / t_base:>7.2f}x {1000 * v_ab:>8.2f} "
              f"{v_ab / v_base:>7.2f}x "
              f"{m_ab:>8.0f}", flush=True)
    if args.lightly:
        compare_lightly(args)


def compare_lightly(args) -> None:
    try:
        import lightly  # noqa: F401
    except ImportError:
        print("lightly is not installed (pip install 'vispre[bench]'): skipping the lightly comparison")
        return
    t_ours, m_ours = measure(["method.name=dino", "method.augment=dino"], args)
    t_plain, m_plain = measure(["method.name=dino", "method.augment=none"], args)
    t_lightly, m_lightly = measure_lightly(args)
    print(f"\n{'DINO step':<22} {'ms/image':>9} {'lightly/ours':>12} {'peak MB':>8}")
    print(f"{'lightly (no aug)':<22} {1000 * t_lightly:>9.2f} {'':>12} {m_lightly:>8.0f}")
    print(f"{'vispre (augment=none)':<22} {1000 * t_plain:>9.2f} {t_lightly / t_plain:>11.2f}x {m_plain:>8.0f}")
    print(f"{'vispre (device aug)':<22} {1000 * t_ours:>9.2f} {t_lightly / t_ours:>11.2f}x {m_ours:>8.0f}")


if __name__ == "__main__":
    main()
