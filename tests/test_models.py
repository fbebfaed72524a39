import pytest
import torch

from vispre.models import (
    ActionDecoder,
    DINOHead,
    ProjectionHead,
    build_encoder,
    build_text_tower,
)


@pytest.mark.parametrize("name,kwargs,dim", [
    ("vit_tiny_patch16_224", {"img_size": 64, "patch_size": 8}, 192),
    ("resnet18", {}, 512),
])
def test_encoder_multi_size(name, kwargs, dim):
    enc = build_encoder(name, **kwargs).eval()
    assert enc.num_features == dim
    vit = name.startswith("vit")
    for size in (64, 32):
        out = enc(torch.randn(2, 3, size, size))
        n = (size // 8) ** 2 if vit else (size // 32) ** 2
        assert out.tokens.shape == (2, n, dim)
        assert out.pooled.shape == (2, dim)
        assert out.tokens_with_pooled().shape == (2, n + 1, dim)
        if vit:
            assert out.prefix.shape == (2, 1, dim)
            assert torch.allclose(out.pooled, out.prefix[:, 0], atol=1e-6)  # global_pool="token"
        else:
            assert out.prefix is None
    feats = enc.intermediate_features(torch.randn(2, 3, 64, 64), n_last_blocks=2)
    assert len(feats) == 2 and feats[-1].shape == (2, dim)


def test_encoder_rebuild_args():
    import timm

    enc = build_encoder("vit_tiny_patch16_224", img_size=64, patch_size=8)
    assert enc.model_args == {"img_size": 64, "patch_size": 8, "dynamic_img_size": True}
    assert enc.timm_model.pretrained_cfg["input_size"] == (3, 64, 64)
    again = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **enc.model_args)
    again.load_state_dict(enc.timm_model.state_dict())
    assert "dynamic_img_size" not in build_encoder("resnet18").model_args


def test_dino_head():
    head = DINOHead(192, out_dim=1000, hidden_dim=256, bottleneck_dim=64)
    assert head(torch.randn(4, 192)).shape == (4, 1000)
    assert head(torch.randn(4, 3, 192)).shape == (4, 3, 1000)  # Q-head outputs [B, K, D]
    w = head.last_layer.weight
    assert torch.allclose(w.norm(dim=1), torch.ones(1000), atol=1e-5)
    assert [n for n, _ in head.last_layer.named_parameters()] == ["v"]  # g fixed to 1
    free = DINOHead(192, out_dim=10, hidden_dim=32, bottleneck_dim=8, norm_last_layer=False)
    assert {n for n, _ in free.last_layer.named_parameters()} == {"v", "g"}


def test_projection_head():
    head = ProjectionHead(192, hidden_dim=64, out_dim=16)
    assert head(torch.randn(4, 192)).shape == (4, 16)
    assert head(torch.randn(4, 3, 192)).shape == (4, 3, 16)


def _actions(b, k, generator):
    a = torch.randn(b, k, 5, generator=generator) * 0.5
    a[..., 4] = (torch.rand(b, k, generator=generator) < 0.5).float()
    return a


@pytest.mark.parametrize("encoding", ["tokens", "fourier"])
def test_action_decoder_packed_equals_one_action_at_a_time(encoding):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    decoder = ActionDecoder(32, out_dim=16, width=32, depth=2, num_heads=2, encoding=encoding).eval()
    tokens = torch.randn(3, 10, 32)
    actions = _actions(3, 5, g)
    out = decoder(tokens, actions)
    assert out.shape == (3, 5, 16)
    one = torch.stack([decoder(tokens, actions[:, k]) for k in range(5)], 1)
    torch.testing.assert_close(out, one, atol=1e-5, rtol=1e-5)  # packed actions never see each other
    torch.testing.assert_close(decoder(tokens[1:2], actions[1:2]), out[1:2], atol=1e-5, rtol=1e-5)


def test_action_decoder_depends_on_action_and_image():
    torch.manual_seed(0)
    decoder = ActionDecoder(32, out_dim=16, width=32, num_heads=2)
    tokens = torch.randn(2, 10, 32, requires_grad=True)
    actions = _actions(1, 4, torch.Generator().manual_seed(1)).expand(2, -1, -1)
    out = decoder(tokens, actions)
    assert (out[:, 0] - out[:, 1]).abs().amax() > 1e-4      # different actions
    assert (out[0] - out[1]).abs().amax() > 1e-4            # same actions, different images
    flipped = actions.clone()
    flipped[..., 4] = 1 - flipped[..., 4]
    assert (decoder(tokens, flipped) - out).abs().amax() > 1e-4  # the flip bit matters
    out.square().sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    masked = ActionDecoder(32, out_dim=16, width=32, num_heads=2, mask_actions=True)
    m = masked(tokens.detach(), actions)
    torch.testing.assert_close(m[:, 0], m[:, 1])  # mask tokens: the action is not seen, the image is
    assert (m[0] - m[1]).abs().amax() > 1e-4


def test_box_tokens_discretise_the_relative_box():
    from vispre.models.action_decoder import BoxTokens
    from vispre.views.boxes import relative_action, relative_box

    b1, b2 = torch.tensor([0.2, 0.2, 0.6, 0.6]), torch.tensor([0.4, 0.0, 0.6, 0.4])
    corners = relative_box(relative_action(b1, b2))  # b2 in b1's frame, where b1 spans [0, 1]
    torch.testing.assert_close(corners, torch.tensor([0.5, -0.5, 1.0, 0.5]))
    tokens = BoxTokens(8, bins=10, box_range=(-1.0, 2.0))
    assert tokens.discretize(corners).tolist() == [5, 1, 6, 5]  # floor((c + 1) / 3 * 10)
    assert tokens.discretize(torch.tensor([-9.0, 9.0])).tolist() == [0, 9]  # clamped


def test_text_tower_tiny():
    tower = build_text_tower("tiny").eval()
    captions = ["a photo of a dog", "a red car on the street", "two digits on a photo"]
    tokens = tower.tokenize(captions)
    assert tokens.shape == (3, 32)
    with torch.no_grad():
        emb = tower(captions)
        assert torch.allclose(emb, tower(tokens), atol=1e-6)
    assert emb.shape == (3, tower.embed_dim) == (3, 128)
    assert torch.cdist(emb, emb)[~torch.eye(3, dtype=bool)].min() > 1e-3
    unit = build_text_tower("tiny", embed_dim=64, normalize=True)
    assert torch.allclose(unit(captions).norm(dim=-1), torch.ones(3), atol=1e-5)


def test_text_preset_vit_b16():
    from vispre.models.text import text_preset

    embed_dim, cfg = text_preset("ViT-B-16")
    assert embed_dim == 512 and cfg["width"] == 512 and cfg["layers"] == 12 and cfg["context_length"] == 77
