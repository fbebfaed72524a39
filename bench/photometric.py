"""Photometric augmentation throughput: batched ``vispre.photometric.Photometric`` against torchvision.

A batch of uint8 crops on the CPU, one thread: images/s of

* torchvision: the v2 per-sample pipeline in a Python loop, as a loader worker runs it:
  RandomApply(ColorJitter, p) -> RandomGrayscale -> RandomApply(GaussianBlur(13, sigma), p)
  -> RandomSolarize(128) -> ToDtype(float32, scale) -> Normalize;
* vispre: the same augmentation batched (fixed and per-sample random jitter order).

    python bench/photometric.py [--batch 256] [--size 96] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
import torchvision.transforms.v2 as T

from vispre.views.photometric import IMAGENET_MEAN, IMAGENET_STD, Photometric


def torchvision_pipeline(p: Photometric) -> T.Compose:
    """The torchvision v2 per-sample equivalent of ``p`` (uint8 in, normalised float out)."""
    b, c, s, h = p.ranges
    kernel = 2 * p.radius + 1  # the support vispre uses: +-3 sigma_max
    return T.Compose([
        T.RandomApply([T.ColorJitter(b, c, s, h)], p=p.jitter_p),
        T.RandomGrayscale(p.grey_p),
        T.RandomApply([T.GaussianBlur(kernel, p.sigma)], p=p.blur_p),
        T.RandomSolarize(128, p=p.solarize_p),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def per_sample(transform, images: torch.Tensor) -> list[torch.Tensor]:
    return [transform(image) for image in images]


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, generator=g)
    presets = {"dino global1": functools.partial(Photometric.dino, 0),
               "dino global2": functools.partial(Photometric.dino, 1),
               "dino local": functools.partial(Photometric.dino, 2), "simclr": Photometric.simclr}
    print(f"{args.batch} uint8 images of {args.size} px, CPU, 1 thread; images/s (best of {args.repeats})")
    print(f"{'preset':<14}{'torchvision':>13}{'vispre fixed':>14}{'ratio':>8}{'vispre random':>15}{'ratio':>8}")
    for name, make in presets.items():
        tv = torchvision_pipeline(make())
        torch.manual_seed(0)
        rates = [args.batch / best_time(functools.partial(per_sample, tv, images), args.repeats)]
        for order in ("fixed", "random"):
            rates.append(args.batch / best_time(functools.partial(make(order=order), images, g), args.repeats))
        print(f"{name:<14}{rates[0]:>13.0f}{rates[1]:>14.0f}{rates[1] / rates[0]:>7.1f}x"
              f"{rates[2]:>15.0f}{rates[2] / rates[0]:>7.1f}x")

if __name__ == "__main__":
    main()
