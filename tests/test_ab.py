"""Annotation Bootstrapping as the preprint specifies it: at gamma = 0 the loss is Eq. 5 (with Eqs. 3-4) for
DINO, SimCLR and CLIP bases, computed here by hand; targets score bootstrap views against the annotation
batch only; bootstrap views are geometry only; psi_AB is AB's own and trained; the target side is not."""

import pytest
import torch
import torch.nn.functional as F

from tests.test_methods import build, fake_batch, tiny_recipe
from vispre.views.boxes import relative_action
from vispre.views.photometric import IMAGENET_MEAN, IMAGENET_STD

B_ANNOTATION, B_BOOTSTRAP, N_VIEWS = 4, 3, 4


def make_ab(tmp_path, base, *overrides):
    ab = build(tiny_recipe(tmp_path, "unused", "method.name=ab", f"method.base={base}", *overrides))
    with torch.no_grad():  # an EMA target that differs from the online network, as after training
        for p in ab.base.target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ab


def batches(seed=0):
    annotation = fake_batch(B_ANNOTATION, seed=seed)
    annotation["txt"] = [f"caption number {i}" for i in range(B_ANNOTATION)]
    bootstrap = fake_batch(B_BOOTSTRAP, groups=((N_VIEWS, 32),), seed=seed + 1)
    return {"annotation": annotation, "bootstrap": bootstrap}


def normalised(crops):
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (crops.float() / 255 - mean) / std


def hand_targets(ab, base_name, step, x):
    """Eq. 3 by hand: p_target(l | x_j) for bootstrap images x [N, 3, S, S] over the annotation set."""
    target, online = ab.base.target.module, ab.base.online
    f = target["encoder"](x).pooled
    if base_name == "dino":
        return F.softmax((target["head"](f) - ab.base.center) / ab.base.teacher_temp, -1), \
            F.normalize(online["ab_head"].table, dim=-1)
    if base_name == "simclr":
        annotation_images = step.views.images[0][:, 0]
        keys = F.normalize(target["proj"](target["encoder"](annotation_images).pooled), dim=-1)
        p = F.softmax(F.normalize(target["proj"](f), dim=-1) @ keys.T / ab.base.cfg.annotation_temperature, -1)
        return p, F.normalize(online["ab_head"].mlp(online["encoder"](annotation_images).pooled), dim=-1)
    captions = step.batch["txt"]
    keys = F.normalize(target["text"](captions), dim=-1)
    scale = target["logit_scale"](ab.base.cfg.max_logit_scale)
    p = F.softmax(scale * F.normalize(target["proj"](f), dim=-1) @ keys.T, -1)
    return p, F.normalize(online["ab_head"].mlp(online["text"](captions)), dim=-1)


def hand_ab_loss(ab, base_name, batch) -> torch.Tensor:
    """Eq. 5 at gamma = 0: mean over images and ordered pairs i != j of KL(p_target(. | x_j) || p_AB(. | x_i, bb_ij)),
    p_AB = softmax_l(t_AB <phi_AB(x_i, bb_ij), psi_AB(l)>) (Eq. 4), one pair at a time."""
    step = ab.base.begin(batch["annotation"])
    boot = batch["bootstrap"]
    online = ab.base.online
    terms = []
    for b in range(B_BOOTSTRAP):
        x = normalised(boot["views"][0][b])  # the 4 views of image b, no colour augmentation
        with torch.no_grad():
            p, _ = hand_targets(ab, base_name, step, x)
        _, psi = hand_targets(ab, base_name, step, x)
        out = online["encoder"](x)
        tokens = torch.cat([out.pooled[:, None], out.tokens], 1)
        t_ab = online["ab_head"].scale(100.0)
        for i in range(N_VIEWS):
            for j in range(N_VIEWS):
                if i == j:
                    continue
                a = relative_action(boot["boxes"][b, i], boot["boxes"][b, j], boot["flips"][b, i], boot["flips"][b, j])
                phi = F.normalize(online["ab_decoder"](tokens[i:i + 1], a[None]), dim=-1)
                log_q = F.log_softmax(t_ab * phi @ psi.T, -1)[0]
                terms.append((p[j] * (p[j].log() - log_q)).sum())
    return torch.stack(terms).mean()


@pytest.mark.parametrize("base_name", ["dino", "simclr", "clip"])
def test_gamma_zero_is_the_preprint_kl(tmp_path, base_name):
    ab = make_ab(tmp_path, base_name, "method.ab.gamma=0", "method.augment=none")
    if base_name == "dino":
        with torch.no_grad():
            ab.base.center.normal_(0, 0.1)  # the target's centring is part of p_target
    batch = batches()
    expected = hand_ab_loss(ab, base_name, batch)
    step = ab.base.begin(batch["annotation"])
    loss, metrics = ab.bootstrap_loss(step, ab.bootstrap_views(batch["bootstrap"]))
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    assert float(metrics["ab/reward_weight"]) == 1.0
    # the whole step: annotation loss + bootstrap loss, the centre moved only after both
    base_loss, _ = ab.base.base_loss(ab.base.begin(batch["annotation"]))
    centre = ab.base.center.clone() if base_name == "dino" else None
    total, _ = ab(batch)
    torch.testing.assert_close(total, base_loss + expected, atol=1e-5, rtol=1e-5)
    if base_name == "dino":
        assert not torch.equal(ab.base.center, centre)


@pytest.mark.parametrize("base_name", ["simclr", "clip"])
def test_bootstrap_targets_score_the_annotation_batch_only(tmp_path, base_name):
    ab = make_ab(tmp_path, base_name)
    batch = batches()
    step = ab.base.begin(batch["annotation"])
    views = ab.bootstrap_views(batch["bootstrap"])
    with torch.no_grad():
        _, p = ab.base.target_distribution(ab.base.encode("target", views).all_pooled(), step)
        hand, _ = hand_targets(ab, base_name, step, normalised(batch["bootstrap"]["views"][0].flatten(0, 1)))
    assert p.shape == (B_BOOTSTRAP, N_VIEWS, B_ANNOTATION)  # B_b x B_a: no bootstrap image among the l
    torch.testing.assert_close(p.flatten(0, 1), hand, atol=1e-5, rtol=1e-5)
    # the annotation set does not depend on the bootstrap batch at all
    other = batches(seed=7)["bootstrap"]
    with torch.no_grad():
        _, q = ab.base.target_distribution(ab.base.encode("target", ab.bootstrap_views(other)).all_pooled(), step)
    assert q.shape == p.shape and not torch.allclose(q, p)


def test_separate_streams_draw_other_images(tmp_path, image_shards):
    from vispre.data.paired import PairedLoader

    cfg = tiny_recipe(tmp_path, image_shards[0], "method.name=ab", "data.batch_size=8")
    ab = build(cfg)
    loader = ab.build_loader(cfg.data)
    assert isinstance(loader, PairedLoader) and list(loader.loaders) == ["bootstrap", "annotation"]
    batch = next(iter(loader))
    assert batch["bootstrap"]["views"][0].shape[1:] == (4, 3, 32, 32) and len(batch["annotation"]["views"]) == 2
    assert batch["annotation"]["views"][0].shape[0] == 8 and batch["bootstrap"]["views"][0].shape[0] == 4
    assert set(batch["bootstrap"]["__key__"]) != set(batch["annotation"]["__key__"][:4])  # another seed, other draws


def test_bootstrap_views_are_geometry_only_by_default(tmp_path):
    ab = make_ab(tmp_path, "dino")
    assert ab.cfg.bootstrap_augment == "none" and not ab.cfg.bootstrap_flip
    assert [(g.count, g.scale) for g in ab.cfg.bootstrap_views] == [(4, [0.05, 1.0])]
    batch = batches()
    views = ab.bootstrap_views(batch["bootstrap"])
    torch.testing.assert_close(views.images[0], normalised(batch["bootstrap"]["views"][0]))  # normalised only
    annotation = ab.base.prepare(batch["annotation"])  # the base's own augmentation: colour-jittered
    assert (annotation.images[0] - normalised(batch["annotation"]["views"][0])).abs().max() > 0.1
    augmented = make_ab(tmp_path, "dino", "method.ab.bootstrap_augment=simclr").bootstrap_views(batch["bootstrap"])
    assert (augmented.images[0] - views.images[0]).abs().max() > 0.1  # the ablation switch does augment


@pytest.mark.parametrize("base_name", ["dino", "simclr"])
def test_psi_ab_is_its_own_and_only_the_online_side_learns(tmp_path, base_name):
    ab = make_ab(tmp_path, base_name)
    online, target = ab.base.online, ab.base.target.module
    own = {p.data_ptr() for p in online["ab_head"].parameters()}
    others = {p.data_ptr() for name, m in online.items() if name != "ab_head" for p in m.parameters()}
    assert own and not own & others  # psi_AB and t_AB share no tensor with the base's heads or the encoder
    batch = batches()
    step = ab.base.begin(batch["annotation"])
    views = ab.bootstrap_views(batch["bootstrap"])
    loss, _ = ab.bootstrap_loss(step, views)
    loss.backward()
    head = online["ab_head"]
    assert head.table.grad.abs().sum() > 0 if base_name == "dino" else \
        all(p.grad.abs().sum() > 0 for p in head.mlp.parameters())  # psi_AB: online, with gradient
    assert head.scale.value.grad.abs() > 0  # t_AB is learned
    assert all(not p.requires_grad and p.grad is None for p in target.parameters())  # stop-gradient side
    if base_name == "dino":  # L_AB never reaches DINO's own prototype head: the AB head is separate
        assert all(p.grad is None for p in online["head"].parameters())
    assert online["ab_decoder"].out.weight.grad.abs().sum() > 0  # phi_AB, and through it the encoder
    assert online["encoder"].timm_model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_td_target_units_and_normalisation(tmp_path):
    ab = make_ab(tmp_path, "dino", "method.ab.gamma=0.6")
    batch = batches()
    step = ab.base.begin(batch["annotation"])
    views = ab.bootstrap_views(batch["bootstrap"])
    with torch.no_grad():
        target = ab.base.encode("target", views, tokens=True)
        _, p = ab.base.target_distribution(target.all_pooled(), step)
        psi = ab.annotation_embeddings("target", step)
        y, metrics = ab.td_target(p, views, target, psi)
        ab.cfg.target_norm = "total"
        y_total, metrics_total = ab.td_target(p, views, target, psi)
    torch.testing.assert_close(y.sum(-1), torch.ones(B_BOOTSTRAP, N_VIEWS))  # future: y sums to 1
    future = (y - 0.4 * p) / 0.6  # the normalised max term: a distribution over l
    torch.testing.assert_close(future.sum(-1), torch.ones(B_BOOTSTRAP, N_VIEWS))
    assert future.min() >= -1e-6
    assert float(metrics["ab/reward_weight"]) == pytest.approx(0.4, abs=1e-5)
    assert float(metrics["ab/future_mass"]) > 1  # a per-l max of distributions has mass above 1
    # total: y renormalised after the max, so the reward's effective weight drops below 1 - gamma
    mass = float(metrics["ab/future_mass"])
    assert 0 < float(metrics_total["ab/reward_weight"]) < 0.4
    assert float(metrics_total["ab/reward_weight"]) == pytest.approx(0.4 / (0.4 + 0.6 * mass), rel=0.2)
    torch.testing.assert_close(y_total.sum(-1), torch.ones(B_BOOTSTRAP, N_VIEWS))


def test_overlap_sampler_moves_the_mean_iou_with_the_box_marginal_fixed():
    from vispre.data.crop_boxes import sample_boxes
    from vispre.views.boxes import box_iou

    def draw(rho, groups=1500):
        g = torch.Generator().manual_seed(0)
        boxes = torch.stack([sample_boxes(4, 200, 160, (0.05, 1.0), generator=g, overlap=rho) for _ in range(groups)])
        iou = box_iou(boxes[:, :, None], boxes[:, None])[:, ~torch.eye(4, dtype=torch.bool)].mean()
        area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).flatten()
        centre = ((boxes[..., 0] + boxes[..., 2]) / 2).flatten()
        return float(iou), area, centre

    q = torch.tensor([0.1, 0.5, 0.9])
    results = {rho: draw(rho) for rho in (-1 / 3, 0.0, 0.5, 0.9)}
    ious = [results[rho][0] for rho in sorted(results)]
    assert ious == sorted(ious) and ious[-1] - ious[0] > 0.2  # the mean IoU moves with the correlation
    for _, area, centre in results.values():  # each box is still RandomResizedCrop(0.05, 1)'s
        torch.testing.assert_close(area.quantile(q), results[0.0][1].quantile(q), atol=0.04, rtol=0)
        torch.testing.assert_close(centre.quantile(q), results[0.0][2].quantile(q), atol=0.04, rtol=0)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sample_boxes(4, 64, 64, generator=g1), sample_boxes(4, 64, 64, generator=g2, overlap=0.0))
    with pytest.raises(ValueError, match="overlap"):
        sample_boxes(4, 64, 64, overlap=-0.5)  # below -1 / (n - 1): no such correlation


def test_photometric_tokens_are_an_option_off_by_default(tmp_path):
    batch = batches()
    plain = make_ab(tmp_path, "dino")
    assert plain.base.online["ab_decoder"].photometric is None  # default: geometry only
    assert plain.bootstrap_views(batch["bootstrap"]).photometric is None
    ab = make_ab(tmp_path, "dino", "method.ab.photometric_tokens=true", "method.ab.bootstrap_augment=simclr")
    views = ab.bootstrap_views(batch["bootstrap"])
    assert views.photometric.shape == (B_BOOTSTRAP, N_VIEWS, 7)
    jittered = (views.photometric[..., :3] != 1).any(-1)
    assert jittered.any() and (~jittered).any()  # SimCLR's jitter p 0.8: some views jittered, some not
    decoder = ab.base.online["ab_decoder"]
    tokens = torch.randn(2, 17, 64)
    a = torch.zeros(2, 3, 12)
    a[..., 5:8] = 1.0  # identity photometric parameters
    b = a.clone()
    b[..., 5] = 1.4  # brighter target view
    assert (decoder(tokens, a) - decoder(tokens, b)).abs().amax() > 1e-5  # the action now carries them
    step = ab.base.begin(batch["annotation"])
    loss, _ = ab.bootstrap_loss(step, views)
    loss.backward()
    assert decoder.photometric.weight.grad.abs().sum() > 0


def test_ab_clip_runs_the_target_text_tower_once_per_step(tmp_path):
    ab = make_ab(tmp_path, "clip")
    calls = []
    ab.base.net("target")["text"].register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    loss, _ = ab(batches())
    assert calls == [B_ANNOTATION]  # keys and psi_AB's target inputs share one pass over the captions
    loss.backward()
