"""Training-step cost of AB_X against its base X, and of vispre's DINO against lightly's DINO.

Same encoder, batch and crops for every row, in one run. lightly (``pip install lightly``, the
``bench`` extra) runs its own DINOProjectionHead, DINOLoss and update_momentum on a timm backbone
built exactly like vispre's; its photometric augmentation would run in the data loader, so its
row gets pre-made float crops, and vispre is timed twice: with its on-device augmentation
(what a run does) and with ``augment=none`` (the same work as lightly's row).

    python bench/step.py                      # CPU: ViT-Tiny at 48/24 px (the demo recipe's model)
    python bench/step.py --device cuda --model vit_base_patch16_224 --sizes 224 96 --batch 64 --bf16

Prints seconds per training image (forward, backward, optimizer step, EMA update) for each
method, the AB/base ratio, and peak memory (CUDA: max allocated; CPU: the process's peak RSS,
which only grows, so CPU rows after the first are upper bounds).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from vispre.methods import build_method
from vispre.models import build_encoder
from vispre.pretrain.recipe import load_recipe
from vispre.views.boxes import candidate_boxes


def fake_batch(b, sizes, counts, device):
    g = torch.Generator().manual_seed(0)
    views = [torch.randint(0, 256, (b, n, 3, s, s), dtype=torch.uint8, generator=g) for n, s in zip(counts, sizes)]
    boxes, flips = candidate_boxes(b, sum(counts), [0.1, 1.0], generator=g)
    return {"views": views, "boxes": boxes, "flips": flips, "valid": torch.ones(b, dtype=torch.bool)}


def measure(method_overrides, args) -> tuple[float, float]:
    kwargs = f"{{img_size: {args.sizes[0]}, patch_size: {args.patch}}}"
    cfg = load_recipe(None, ["data.spec=unused", f"model.name={args.model}", f"model.kwargs={kwargs}",
                             f"method.dino.out_dim={args.prototypes}",
                             *method_overrides])
    torch.manual_seed(0)
    method = build_method(cfg.method, build_encoder(cfg.model.name, **cfg.model.kwargs)).to(args.device)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)
    batch = fake_batch(args.batch, args.sizes, args.counts, args.device)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step(i):
        method.set_step(i, 1000)
        with torch.autocast(args.device, dtype=dtype, enabled=args.bf16):
            loss, _ = method(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.update_target(0.996)

    return timed(step, args)


def timed(step, args) -> tuple[float, float]:
    """Seconds per image over ``args.steps`` steps after ``args.warmup``, and peak memory (MB)."""
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
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    from vispre.methods import DINOConfig

    d = DINOConfig()
    def network():
        backbone = build_encoder(args.model, img_size=args.sizes[0], patch_size=args.patch).timm_model
        head = DINOProjectionHead(backbone.num_features, d.hidden_dim, d.bottleneck_dim, args.prototypes)
        return torch.nn.Sequential(backbone, head).to(args.device)

    torch.manual_seed(0)
    student, teacher = network(), network()  # not deepcopy: lightly's head uses the old weight_norm
    teacher.load_state_dict(student.state_dict())
    deactivate_requires_grad(teacher)
    criterion = DINOLoss(output_dim=args.prototypes, teacher_temp=d.teacher_temp).to(args.device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(args.batch, 3, s, s, generator=g).to(args.device)
             for n, s in zip(args.counts, args.sizes) for _ in range(n)]
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step(i):
        with torch.autocast(args.device, dtype=dtype, enabled=args.bf16):
            with torch.no_grad():
                teacher_out = [teacher(v) for v in views[:args.counts[0]]]
            student_out = [student(v) for v in views]
            loss = criterion(teacher_out, student_out)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_momentum(student, teacher, m=0.996)

    return timed(step, args)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs=2, default=[48, 24], help="global and local crop sizes")
    parser.add_argument("--counts", type=int, nargs=2, default=[2, 4], help="global and local crops per image")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prototypes", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--bases", nargs="+", default=["dino", "simclr"])
    parser.add_argument("--no-lightly", dest="lightly", action="store_false", help="skip the lightly comparison")
    args = parser.parse_args()
    crops = f"{args.counts[0]}x{args.sizes[0]} + {args.counts[1]}x{args.sizes[1]} px"
    print(f"{args.model} patch {args.patch}, crops {crops}, "
          f"batch {args.batch}, {args.device}{' bf16' if args.bf16 else ''}")
    print(f"{'method':<10} {'ms/image':>9} {'AB/base':>8} {'peak MB':>8}")
    for base in args.bases:
        augment = "dino" if base == "dino" else "simclr"
        t_base, m_base = measure([f"method.name={base}", f"method.augment={augment}"], args)
        t_ab, m_ab = measure(["method.name=ab", f"method.base={base}", f"method.augment={augment}",
                              "method.ab.qhead_depth=1", "method.ab.qhead_heads=3"], args)
        print(f"{base:<10} {1000 * t_base:>9.2f} {'':>8} {m_base:>8.0f}")
        print(f"{'ab_' + base:<10} {1000 * t_ab:>9.2f} {t_ab / t_base:>7.2f}x {m_ab:>8.0f}", flush=True)
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
