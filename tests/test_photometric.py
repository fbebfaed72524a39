"""Batched photometric augmentation against torchvision.transforms.v2.functional, op by op."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from vispre.views.photometric import IMAGENET_MEAN, IMAGENET_STD, Photometric

OFF = {"jitter_p": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, "grey_p": 0.0, "mean": None}
TOL = 1e-5  # against torchvision on the same float image (x / 255); far below 1/255
# against torchvision on the uint8 image: its uint8 path truncates each result to uint8 (< 1/255) and, for
# contrast and saturation, blends with a grey image itself truncated to uint8 (< 1/255 more, times 1 - f)
U8_TOL = 2 / 255


def images(n=16, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    x[0] = 128  # a grey image, and grey / saturated pixels: the edge cases of hue
    x[1, :, :4] = x[1, :1, :4]
    x[2, 0, :4], x[2, 1:, :4] = 255, 0
    return x


def run(images, generator_seed=0, **kw):
    return Photometric(**{**OFF, **kw})(images, torch.Generator().manual_seed(generator_seed))


def per_image(fn, x):
    return torch.stack([fn(img) for img in x])


@pytest.mark.parametrize("name,kw,reference", [
    ("brightness", {"brightness": (1.4, 1.4)}, lambda x: TF.adjust_brightness(x, 1.4)),
    ("brightness_down", {"brightness": (0.6, 0.6)}, lambda x: TF.adjust_brightness(x, 0.6)),
    ("contrast", {"contrast": (1.5, 1.5)}, lambda x: TF.adjust_contrast(x, 1.5)),
    ("contrast_down", {"contrast": (0.3, 0.3)}, lambda x: TF.adjust_contrast(x, 0.3)),
    ("saturation", {"saturation": (1.7, 1.7)}, lambda x: TF.adjust_saturation(x, 1.7)),
    ("saturation_down", {"saturation": (0.2, 0.2)}, lambda x: TF.adjust_saturation(x, 0.2)),
    ("hue", {"hue": (0.3, 0.3)}, lambda x: TF.adjust_hue(x, 0.3)),
    ("hue_negative", {"hue": (-0.45, -0.45)}, lambda x: TF.adjust_hue(x, -0.45)),
])
def test_jitter_ops_match_torchvision(name, kw, reference):
    x = images()
    out = run(x, jitter_p=1.0, **kw)
    assert (out - per_image(reference, x.float() / 255)).abs().max() < TOL
    assert (out - per_image(reference, x).float() / 255).abs().max() <= U8_TOL


def test_fixed_order_is_brightness_contrast_saturation_hue():
    x = images()
    out = run(x, jitter_p=1.0, brightness=(1.3, 1.3), contrast=(0.7, 0.7), saturation=(1.5, 1.5), hue=(0.2, 0.2))
    ref = per_image(lambda i: TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(
        TF.adjust_brightness(i, 1.3), 0.7), 1.5), 0.2), x.float() / 255)
    assert (out - ref).abs().max() < TOL


def test_random_order_is_a_permutation_per_sample():
    x = images(64, 8)
    out = run(x, jitter_p=1.0, brightness=(1.8, 1.8), contrast=(0.3, 0.3), hue=(0.25, 0.25), order="random")
    f = x.float() / 255
    ops = {"b": lambda i: TF.adjust_brightness(i, 1.8), "c": lambda i: TF.adjust_contrast(i, 0.3),
           "h": lambda i: TF.adjust_hue(i, 0.25)}
    orders = ["bch", "bhc", "cbh", "chb", "hbc", "hcb"]
    seen = set()
    for i in range(len(x)):
        errors = []
        for order in orders:
            ref = f[i]
            for op in order:
                ref = ops[op](ref)
            errors.append((out[i] - ref).abs().max().item())
        assert min(errors) < TOL
        seen.add(orders[errors.index(min(errors))])
    assert len(seen) >= 4  # the order varies between samples


def test_greyscale_and_solarize_match_torchvision():
    x = images()
    grey = run(x, grey_p=1.0)
    assert (grey - TF.rgb_to_grayscale(x.float() / 255, 3)).abs().max() < TOL
    assert (grey - TF.rgb_to_grayscale(x, 3).float() / 255).abs().max() < 1 / 255  # truncated
    solar = run(x, solarize_p=1.0)
    assert (solar - TF.solarize(x.float() / 255, 0.5)).abs().max() < TOL
    assert torch.allclose(solar, TF.solarize(x, 128).float() / 255, atol=1e-6)  # DINO's PIL threshold 128 on uint8


def test_blur_matches_torchvision_and_vanishes_with_sigma():
    x = images(size=32)
    out = run(x, blur_p=1.0, sigma=(1.5, 1.5))  # kernel 2 ceil(3 sigma) + 1 = 11 taps
    ref = TF.gaussian_blur(x.float() / 255, [11, 11], [1.5, 1.5])
    assert (out - ref).abs().max() < TOL
    assert (out - TF.gaussian_blur(x, [11, 11], [1.5, 1.5]).float() / 255).abs().max() <= U8_TOL
    assert torch.equal(run(x, blur_p=1.0, sigma=(1e-3, 1e-3)), x.float() / 255)


def test_sigma_is_drawn_per_sample():
    x = images(32, 16)
    out = run(x, blur_p=1.0, sigma=(0.1, 2.0))
    f = x.float() / 255
    sharpness = (out[..., 1:] - out[..., :-1]).abs().mean((1, 2, 3)) / (f[..., 1:] - f[..., :-1]).abs().mean((1, 2, 3))
    assert sharpness[3:].max() > 0.8 and sharpness[3:].min() < 0.4  # some barely blurred, some strongly


@pytest.mark.parametrize("kw,p", [({"grey_p": 0.3}, 0.3), ({"solarize_p": 0.2}, 0.2), ({"blur_p": 0.5}, 0.5),
                                  ({"jitter_p": 0.8, "brightness": (1.5, 1.5)}, 0.8)])
def test_fraction_of_augmented_samples(kw, p):
    n = 2000
    x = torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    changed = (run(x, **kw) - x.float() / 255).abs().amax((1, 2, 3)) > 1e-6
    assert abs(changed.float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5


def test_normalisation_and_none_preset():
    x = images()
    out = Photometric.preset("none")(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, TF.normalize(x.float() / 255, IMAGENET_MEAN, IMAGENET_STD), atol=1e-6)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    flat = (mean * 255).round().to(torch.uint8).expand(2, 3, 4, 4)  # an image at the mean colour -> ~0
    assert Photometric.none()(flat).abs().max() < 0.01


def test_same_seed_same_output_and_chunking_does_not_matter():
    x = images(40)
    aug = Photometric.dino("global2", order="random")
    a = aug(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(7)))
    assert not torch.allclose(a, aug(x, torch.Generator().manual_seed(8)))
    assert torch.allclose(a, aug(x, torch.Generator().manual_seed(7), chunk=3), atol=1e-6)
    torch.manual_seed(0)
    b = aug(x)  # the global RNG
    torch.manual_seed(0)
    assert torch.equal(b, aug(x))


def test_float_input_is_not_modified_and_dtypes():
    x = images().float() / 255
    before = x.clone()
    out = Photometric.dino("global1")(x, torch.Generator().manual_seed(0), dtype=torch.bfloat16)
    assert torch.equal(x, before) and out.dtype == torch.bfloat16 and out.shape == x.shape
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert Photometric.simclr()(images(), dtype="autocast").dtype == torch.bfloat16
    assert Photometric.simclr()(images(), dtype="autocast").dtype == torch.float32


def test_presets():
    g1, g2, local = (Photometric.preset("dino", v) for v in (0, 1, 5))
    assert (g1.blur_p, g1.solarize_p) == (1.0, 0.0)
    assert (g2.blur_p, g2.solarize_p) == (0.1, 0.2)
    assert (local.blur_p, local.solarize_p) == (0.5, 0.0)
    assert g1.ranges == ((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)) and g1.jitter_p == 0.8 and g1.grey_p == 0.2
    assert Photometric.preset("dino", 1) is g2  # cached
    simclr = Photometric.preset("simclr")
    assert simclr.ranges == ((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1)) and simclr.blur_p == 0.5
    assert Photometric.simclr(1.0).ranges[0] == pytest.approx((0.2, 1.8))
    with pytest.raises(ValueError):
        Photometric.preset("autoaugment")
    assert not list(g1.parameters()) and not list(g1.buffers())


def test_accelerator_path_selects_instead_of_indexing(monkeypatch):
    """Off the CPU, ops run on every sample and are selected (no host sync): the same output."""
    import vispre.views.photometric as ph

    x = images(24)
    for aug in (Photometric.dino("global2", order="random"), Photometric.dino("local")):
        indexed = aug(x, torch.Generator().manual_seed(3))
        monkeypatch.setattr(ph, "INDEX_DEVICES", ())
        assert torch.allclose(aug(x, torch.Generator().manual_seed(3)), indexed, atol=1e-5)
        monkeypatch.setattr(ph, "INDEX_DEVICES", ("cpu",))
