"""The RL pixel encoder: what it reads (the pooled feature or the whole grid) and its BatchNorm modes:
``frozen`` (default for export arms) keeps the pretrained running statistics through training, so training-mode
and evaluation-mode features agree; ``train`` updates them."""

import pytest
import torch

from vispre.models import build_encoder
from vispre.rl.encoders import PixelEncoder
from vispre.utils.typed_config import ConfigError


def encoder(batch_norm):
    torch.manual_seed(0)
    backbone = build_encoder("resnet10t", channels=[8, 8, 8, 8], stem_width=8)
    return PixelEncoder(backbone, batch_norm=batch_norm)


def running_stats(enc):
    return [m.running_mean.clone() for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("batch_norm", ["frozen", "train"])
def test_frozen_batch_norm_keeps_the_pretrained_statistics(batch_norm):
    enc = encoder(batch_norm)
    before = running_stats(enc)
    frames = torch.randint(0, 256, (8, 1, 32, 32, 3), dtype=torch.uint8)
    enc.train()
    features_train = enc(frames)
    features_train.sum().backward()  # gradients still reach the weights in both modes
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)
    moved = any(not torch.equal(a, b) for a, b in zip(before, running_stats(enc)))
    enc.eval()
    with torch.no_grad():
        features_eval = enc(frames)
    if batch_norm == "frozen":
        assert not moved and torch.allclose(features_train, features_eval, atol=1e-6)
        enc.train()
        assert enc.training and not any(m.training for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d))
    else:
        assert moved and not torch.allclose(features_train, features_eval, atol=1e-3)


def test_a_bad_batch_norm_mode_is_named():
    from vispre.rl.rl_recipe import load_offline_rl_config

    with pytest.raises(ConfigError, match=r"arms.0.batch_norm: 'eval' is not frozen or train"):
        load_offline_rl_config("eval/offline_rl_minigrid.yaml", ["arms=[{kind: finetune, batch_norm: eval}]"])


def test_grid_features_are_the_flattened_map_and_keep_where_things_are():
    """reads='grid': the backbone's last map (here 4x4 cells of 8 channels) flattened, [N * D] per frame; the
    probe forward that sizes it leaves BatchNorm's statistics alone. Pooling cannot tell a bright square in the
    top-left corner from one in the bottom-right; the grid can."""
    torch.manual_seed(0)
    backbone = build_encoder("resnet10t", channels=[8, 8, 8, 8], stem_width=8)
    before = [m.running_mean.clone() for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    grid = PixelEncoder(backbone, batch_norm="frozen", reads="grid", image_size=64).eval()
    pooled = PixelEncoder(backbone, batch_norm="frozen").eval()
    assert all(torch.equal(a, m.running_mean) for a, m in
               zip(before, (m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))))
    frames = torch.zeros(2, 1, 64, 64, 3, dtype=torch.uint8)
    frames[0, 0, :16, :16], frames[1, 0, -16:, -16:] = 255, 255  # the same square, opposite corners
    with torch.no_grad():
        tokens = backbone(((frames[:, 0].permute(0, 3, 1, 2).float() / 255) - pooled.mean) / pooled.std).tokens
        g, p = grid(frames), pooled(frames)
    assert tokens.shape[1] * tokens.shape[2] == grid.feature_dim > 8
    assert g.shape == (2, grid.feature_dim) and torch.allclose(g, tokens.flatten(1), atol=1e-6)
    assert p.shape == (2, 8)
    assert (g[0] - g[1]).abs().max() > 5 * (p[0] - p[1]).abs().max()
    with pytest.raises(ValueError, match="frame size"):
        PixelEncoder(backbone, reads="grid")
    from vispre.rl.rl_recipe import load_offline_rl_config

    with pytest.raises(ConfigError, match=r"arms.0.features: grid reads an export"):
        load_offline_rl_config("eval/offline_rl_minigrid.yaml", ["arms=[{kind: scratch, features: grid}]"])
