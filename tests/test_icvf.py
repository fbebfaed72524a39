"""ICVF: the (s, s', s+, z) sampler, the loss by hand, the multilinear identity, training through the loop."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vispre.data import DataConfig
from vispre.data.goals import (
    CURRENT,
    FUTURE,
    GOAL,
    INTENT,
    POOL,
    RANDOM,
    S_NEXT,
    ClipQuadruples,
    GoalMix,
    S,
    draw_samples,
    resolve_random,
)
from vispre.data.shard_writer import ShardWriter
from vispre.data.trajectories import TrajectoryLoader
from vispre.envs import save_npz
from vispre.methods import ICVF, ICVFConfig
from vispre.models import build_encoder
from vispre.models.icvf import MultilinearValue, ValueEnsemble
from vispre.utils.diagnostics import spearman

TINY = {"name": "test_vit", "img_size": 16, "patch_size": 8}


def tiny_icvf(**cfg) -> ICVF:
    torch.manual_seed(0)
    encoder = build_encoder(TINY["name"], img_size=TINY["img_size"], patch_size=TINY["patch_size"])
    return ICVF(encoder, ICVFConfig(hidden_dims=[16, 16], **cfg))


def coded_frame(clip: int, index: int, size: int = 16) -> np.ndarray:
    """A frame whose red channel is its index and green channel its clip: decodes back to both."""
    frame = np.zeros((size, size, 3), np.uint8)
    frame[..., 0], frame[..., 1] = index, clip
    return frame


def png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


# -- sampling -----------------------------------------------------------------------------------------------
def test_goal_mix_frequencies_match_the_release():
    """20k draws on clips of 40 frames: kinds 0.2 / 0.5 / 0.3 for s+ and z, s+ = z half the time, uniform
    future indices in [t, last] with the release's rounding, and geometric offsets with mean 1 / (1 - gamma)."""
    n, tol = 20000, 0.02  # 4 standard errors of a frequency near 0.5
    gen = torch.Generator().manual_seed(0)
    last = torch.full((n,), 39)
    t = torch.randint(0, 39, (n,), generator=gen)
    draw = draw_samples(t, last, GoalMix(), gen)
    for kind in ("z_kind", "g_kind"):
        freq = torch.bincount(draw[kind], minlength=3).float() / n
        assert torch.allclose(freq, torch.tensor([0.2, 0.5, 0.3]), atol=tol), (kind, freq)
    assert abs(draw["g_is_z"].float().mean() - 0.5) < tol
    same = draw["g_is_z"]
    assert torch.equal(draw["g_index"][same], draw["z_index"][same])
    future = draw["z_kind"] == FUTURE
    zi, zt = draw["z_index"][future], t[future]
    assert ((zi >= zt) & (zi <= 39)).all()
    # round(t u + last (1 - u)): mean t + (last - t) / 2
    assert abs((zi - zt).float().mean() - ((39 - zt).float() / 2).mean()) < 0.3
    assert torch.equal(draw["z_index"][draw["z_kind"] == CURRENT], t[draw["z_kind"] == CURRENT])
    assert (draw["z_index"][draw["z_kind"] == RANDOM] == -1).all()

    geometric = draw_samples(torch.zeros(n, dtype=torch.long), torch.full((n,), 10**6),
                             GoalMix(future="geometric", discount=0.9), gen)
    offsets = geometric["z_index"][geometric["z_kind"] == FUTURE].float()
    assert offsets.min() >= 1 and abs(offsets.mean() - 10) < 0.5
    with pytest.raises(ValueError, match="p_current"):
        GoalMix(p_random=0.5).check()


def test_clip_sampler_frames_rewards_and_masks():
    """Decoded frames are the sampled indices; rewards 0 / masks 0 exactly where s+ (z) is s by index;
    random goals are another clip's pool frame."""
    frames = [[png(coded_frame(c, i)) for i in range(6)] for c in range(8)]
    sampler = ClipQuadruples(GoalMix(), size=16)
    reached = total = 0
    for rep in range(40):
        samples = [sampler(frames[c], torch.Generator().manual_seed(rep * 100 + c)) for c in range(8)]
        batch = {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in samples[0]}
        px = batch["frames"][:, :, :2, 0, 0].long()  # [B, 5, (index, clip)]
        assert torch.equal(px[:, S, 0], batch["t"]) and torch.equal(px[:, S_NEXT, 0], batch["t"] + 1)
        assert (batch["t"] <= 4).all() and torch.equal(px[:, S, 1], torch.arange(8))
        for slot, kind, index in ((GOAL, "g_kind", "g_index"), (INTENT, "z_kind", "z_index")):
            real = batch[kind] != RANDOM
            assert torch.equal(px[real, slot, 0], batch[index][real])
        q = resolve_random(batch, torch.Generator().manual_seed(rep))
        goal_px, intent_px = q["goal"][:, :2, 0, 0].long(), q["intent"][:, :2, 0, 0].long()
        pool = px[:, POOL]
        for i in range(8):
            for kind, got in (("g_kind", goal_px[i]), ("z_kind", intent_px[i])):
                if batch[kind][i] == RANDOM:  # another clip's pool frame
                    assert got[1] != i and torch.equal(got, pool[got[1]])
        # intents from the same video: a random intent is the sample's own clip's pool frame
        same = resolve_random(batch, torch.Generator().manual_seed(rep), intent_same_clip=True)
        own = same["intent"][:, :2, 0, 0].long()
        random_z = batch["z_kind"] == RANDOM
        assert torch.equal(own[random_z], pool[random_z]) and (own[random_z][:, 1] == torch.arange(8)[random_z]).all()
        hit_g = (batch["g_kind"] != RANDOM) & (batch["g_index"] == batch["t"])
        hit_z = (batch["z_kind"] != RANDOM) & (batch["z_index"] == batch["t"])
        assert torch.equal(q["reward_g"], hit_g.float() - 1) and torch.equal(q["mask_g"], 1 - hit_g.float())
        assert torch.equal(q["reward_z"], hit_z.float() - 1) and torch.equal(q["mask_z"], 1 - hit_z.float())
        reached, total = reached + int(hit_g.sum()), total + 8
    # P(reach) = P(current) + P(future lands on t): at least 0.2
    assert 0.15 < reached / total < 0.5


def test_trajectory_loader_resumes_exactly_and_respects_episodes(tmp_path):
    obs = np.stack([coded_frame(e, i) for e in range(5) for i in range(7)])
    terminals = np.tile(np.eye(7)[-1], 5)
    save_npz(tmp_path / "t.npz", {"observations": obs, "terminals": terminals})
    a = TrajectoryLoader(tmp_path / "t.npz", GoalMix(), 16, seed=3, samples_per_epoch=64)
    it = iter(a)
    next(it), next(it)
    state = json.loads(json.dumps(a.state_dict()))
    expected = next(it)
    b = TrajectoryLoader(tmp_path / "t.npz", GoalMix(), 16, seed=3, samples_per_epoch=64)
    b.load_state_dict(state)
    got = next(iter(b))
    assert torch.equal(got["frames"], expected["frames"]) and torch.equal(got["t"], expected["t"])
    px = got["frames"][:, :, :2, 0, 0].long()
    assert torch.equal(px[:, S_NEXT, 0], px[:, S, 0] + 1) and (px[:, S, 0] < 6).all()  # never a terminal row
    same_episode = got["g_kind"] != RANDOM
    assert torch.equal(px[same_episode, GOAL, 1], px[same_episode, S, 1])
    with pytest.raises(ValueError, match="'terminals'"):
        save_npz(tmp_path / "bad.npz", {"observations": obs})
        TrajectoryLoader(tmp_path / "bad.npz", GoalMix(), 4)


# -- heads and loss ----------------------------------------------------------------------------------------
def test_multilinear_identity():
    """V(s, s+, z) = [phi(s), 1] M(z) [psi(s+), 1]^T with M(z) built explicitly from T(z), A, B."""
    torch.manual_seed(0)
    head = MultilinearValue(12, [10, 8]).double()
    for p in (head.A.bias, head.B.bias):
        torch.nn.init.normal_(p)  # zero at init: make the affine part count
    s, g, z = (torch.randn(5, 12, dtype=torch.float64) for _ in range(3))
    phi1 = torch.cat([head.phi(s), torch.ones(5, 1, dtype=torch.float64)], 1)
    psi1 = torch.cat([head.psi(g), torch.ones(5, 1, dtype=torch.float64)], 1)
    explicit = torch.einsum("bi,bij,bj->b", phi1, head.intent_matrix(z), psi1)
    assert torch.allclose(head(s, g, z), explicit, atol=1e-10)
    assert head.intent_matrix(z).shape == (5, 9, 9)
    # V for intent z is linear in phi(s): two states' values combine with their phi's weights
    ensemble = ValueEnsemble("multilinear", 12, [10, 8], k=2)
    assert ensemble(s.float(), g.float(), z.float()).shape == (2, 5)
    assert torch.equal(ensemble.phi(s.float()), ensemble.heads[0].phi(s.float()))


def test_spearman_with_ties():
    """Tied values share their average rank: ranks (0, 1.5, 1.5, 3) and (0, 2, 1, 3) correlate 4.5 / sqrt(22.5)."""
    x, y = torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0, 4.0])
    assert spearman(x, y) == pytest.approx(4.5 / 22.5 ** 0.5)
    assert spearman(x, -x) == pytest.approx(-1.0)


def hand_batch(b: int = 4) -> dict:
    gen = torch.Generator().manual_seed(5)
    frames = torch.randint(0, 256, (b, 5, 3, 16, 16), dtype=torch.uint8, generator=gen)
    return {"frames": frames, "t": torch.tensor([3, 1, 2, 0]), "g_index": torch.tensor([3, 4, 5, 0]),
            "g_kind": torch.tensor([CURRENT, FUTURE, FUTURE, CURRENT]), "z_index": torch.tensor([3, 2, 4, 1]),
            "z_kind": torch.tensor([CURRENT, FUTURE, FUTURE, FUTURE]), "g_is_z": torch.tensor([1, 0, 1, 0]).bool(),
            "valid": torch.ones(b, dtype=torch.bool)}


@pytest.mark.parametrize("min_q", [True, False])
def test_loss_equals_hand_computation(min_q):
    method = tiny_icvf(min_q=min_q, discount=0.9, expectile=0.8)
    with torch.no_grad():  # a target network that differs from the online one
        for p in method.target.module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = hand_batch()
    same = batch["g_is_z"]  # as the sampler makes them: s+ is z's frame, index and kind where s+ := z
    batch["frames"][same, GOAL] = batch["frames"][same, INTENT]
    batch["g_index"][same], batch["g_kind"][same] = batch["z_index"][same], batch["z_kind"][same]
    loss, metrics = method(batch)
    loss = loss.detach()

    def encode(net, slot):
        images = method.prepare(batch["frames"][:, slot])
        return net["encoder"](images).pooled

    on, tg = method.online, method.target.module

    def target_values(i, a, b, c) -> list[float]:  # V-bar_k(a_i, b_i, c_i) for every head k
        return [float(h(ft[a][i:i + 1], ft[b][i:i + 1], ft[c][i:i + 1])) for h in tg["value"].heads]

    with torch.no_grad():
        fo = {k: encode(on, k) for k in (S, GOAL, INTENT)}
        ft = {k: encode(tg, k) for k in (S, S_NEXT, GOAL, INTENT)}
        expected = 0.0
        for i in range(4):
            r_g = 0.0 if batch["g_index"][i] == batch["t"][i] else -1.0
            r_z = 0.0 if batch["z_index"][i] == batch["t"][i] else -1.0
            m_g, m_z = -r_g, -r_z  # masks: 0 where reached, else 1
            next_zz = target_values(i, S_NEXT, INTENT, INTENT)
            next_zz = min(next_zz) if min_q else sum(next_zz) / 2
            adv = r_z + 0.9 * m_z * next_zz - sum(target_values(i, S, INTENT, INTENT)) / 2
            weight = 0.8 if adv >= 0 else 0.2
            for k, head in enumerate(on["value"].heads):
                y = r_g + 0.9 * m_g * target_values(i, S_NEXT, GOAL, INTENT)[k]
                v = float(head(fo[S][i:i + 1], fo[GOAL][i:i + 1], fo[INTENT][i:i + 1]))
                expected += weight * (y - v) ** 2 / 4
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["reached"]) == 0.5  # rows 0 (current) and 3 (current)


def test_export_hooks_and_polyak_target():
    method = tiny_icvf()
    assert set(method.export_modules("target")) == {"phi", "value"}
    assert method.export_encoder("online") is method.online["encoder"]
    assert method.export_encoder("target") is method.target.module["encoder"]
    with torch.no_grad():
        for p in method.online.parameters():
            p.fill_(1.0)
    before = [p.clone() for p in method.target.module.parameters()]
    method.update_target(0.99)  # V-bar <- 0.99 V-bar + 0.01 V
    for old, new in zip(before, method.target.module.parameters()):
        assert torch.allclose(new, 0.99 * old + 0.01)
    assert set(tiny_icvf(head="monolithic").export_modules("target")) == {"value"}  # no phi to export


# -- through the training loop -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_shards(tmp_path_factory):
    """16 clips of 12 frames: a bright block walking along its own row (a tiny passive 'video')."""
    out = tmp_path_factory.mktemp("clips")
    with ShardWriter(out, prefix="c", samples_per_shard=4) as writer:
        for c in range(16):
            frames = []
            for i in range(12):
                f = np.zeros((32, 32, 3), np.uint8)
                f[c * 2:c * 2 + 2, i * 2:i * 2 + 4] = 255
                frames.append(f)
            sample = {"__key__": f"clip-{c:03d}", "json": {"distances": list(range(11, -1, -1)), "success": True}}
            sample.update({f"{i:03d}.png": png(f) for i, f in enumerate(frames)})
            writer.write(sample)
    return out


def test_short_training_run_loss_falls(tmp_path, clip_shards):
    """Through the Trainer on clip shards. The raw ICVF loss is not monotone early in a run (the expectile
    weights move from 1 - alpha to alpha as advantages turn positive, and bootstrapped targets grow), so
    this run uses alpha = 0.5 (constant weights) and gamma = 0 (targets r = 0 reached / -1 not): a plain
    regression that must fall. The bootstrapped loss itself is checked by hand above."""
    from vispre.pretrain.loop import Trainer
    from vispre.pretrain.recipe import load_recipe

    cfg = load_recipe(None, [
        f"model.name={TINY['name']}", "model.kwargs={img_size: 32, patch_size: 8}", "method.name=icvf",
        "method.augment=none", "method.icvf.hidden_dims=[32, 32]", "method.icvf.features=grid", "method.icvf.grid=2",
        "method.icvf.expectile=0.5", "method.icvf.discount=0.0", f"data.spec={clip_shards}", "data.format=clip",
        "data.frame_size=32", "data.batch_size=16", "data.workers=0", "data.samples_per_epoch=160",
        "data.shuffle_buffer=8", "optim.lr=4e-3", "optim.min_lr=1e-3", "optim.warmup_fraction=0",
        "optim.weight_decay=0", "optim.weight_decay_end=0", "optim.ema_momentum=0.99", "optim.ema_momentum_end=0.99",
        "train.steps=40", "train.log_every=5", "train.diagnostics_every=40", "train.probe_images=48",
        "train.trackers=[]", "train.threads=1", f"train.output_dir={tmp_path}", "train.checkpoint_every_steps=100"])
    Trainer(cfg).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0], losses
    last = rows[-1]
    assert {"spearman_gap", "spearman_goal_distance", "srank_phi", "srank"} <= set(last)
    assert (tmp_path / "checkpoints" / "checkpoint-00000040" / "model.safetensors").exists()

    # vispre export: the encoder as a timm folder and phi (grid pooling + MLP) as its own module
    from vispre.export.read import load_encoder, load_exported_module
    from vispre.export.write import export, load_method

    out = export(tmp_path, tmp_path / "export")
    encoder, phi = load_encoder(out), load_exported_module(out, "phi").module
    method = load_method(tmp_path / "checkpoints" / "checkpoint-00000040")[0]
    images = method.prepare(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8))
    with torch.no_grad():
        expected = method.net("target")["value"].phi(method.encode(method.net("target"), images))
        assert torch.allclose(phi(encoder(images).tokens), expected, atol=1e-5)
        # the whole value function V(s, s+, z), rebuilt from value.json alone, equals the method's on the same images
        value = load_exported_module(out, "value")
        assert value.spec.reads == "tokens" and value.spec.builder == "icvf_value"
        t = encoder(images).tokens
        target = method.net("target")
        f = method.encode(target, images)
        torch.testing.assert_close(value.module(t, t.roll(1, 0), t.roll(2, 0)),
                                   target["value"](f, f.roll(1, 0), f.roll(2, 0)), atol=1e-5, rtol=1e-5)
        # the offline-RL arms read the same phi(s) from uint8 frames (features: phi)
        from vispre.rl.arms import _pixel_encoder
        from vispre.rl.rl_recipe import ArmConfig

        frames = torch.randint(0, 256, (3, 1, 32, 32, 3), dtype=torch.uint8)
        pixels = _pixel_encoder(ArmConfig(kind="frozen", features="phi"), str(out), 1, random_init=False).eval()
        assert pixels.num_features == 32  # hidden_dims[-1]
        direct = method.net("target")["value"].phi(method.encode(method.net("target"), method.prepare(
            frames[:, 0].permute(0, 3, 1, 2))))
        assert torch.allclose(pixels(frames), direct, atol=1e-4)


def test_td_targets_do_not_depend_on_the_rest_of_the_batch():
    """A BatchNorm encoder in train mode would make a frame's target value depend on the frames batched with it;
    the target network stays in eval mode through method.train(), so targets are per-sample functions."""
    torch.manual_seed(0)
    method = ICVF(build_encoder("resnet10t", channels=[8, 8, 8, 8], stem_width=8),
                  ICVFConfig(hidden_dims=[16, 16]))
    method.train()
    assert method.online.training and not any(m.training for m in method.target.modules())
    x = torch.randn(4, 3, 32, 32)
    others = [torch.randn(4, 3, 32, 32) * 3 + 1, torch.randn(4, 3, 32, 32) - 2]
    with torch.no_grad():
        target = method.net("target")
        first = [method.encode(target, torch.cat([x, o]))[:4] for o in others]
        online = [method.encode(method.online, torch.cat([x, o]))[:4] for o in others]
    torch.testing.assert_close(first[0], first[1])
    assert not torch.allclose(online[0], online[1])  # the online BatchNorm does see the batch: the test can fail


def test_crop_pad_shifts_each_of_the_four_images_on_its_own(tmp_path, monkeypatch):
    """Video ICVF crops s, s', s+ and z independently: on a video whose frames are all one textured image, the
    encoder sees four different crops of it with crop_pad > 0 and four equal images without."""
    frame = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    save_npz(tmp_path / "t.npz", {"observations": np.stack([frame] * 12), "terminals": np.tile(np.eye(6)[-1], 2)})
    for pad, distinct in ((0, 1), (4, 4)):
        method = tiny_icvf(crop_pad=pad)
        seen = []
        encode = method.encode
        monkeypatch.setattr(method, "encode", lambda net, images, encode=encode, seen=seen: seen.append(images) or
                            encode(net, images))
        loader = method.build_loader(DataConfig(spec=str(tmp_path / "t.npz"), format="trajectories", batch_size=1,
                                                frame_size=16))
        method(next(iter(loader)))
        s_, s_next, goal, intent = seen[0].split(1)  # the target network's pass over all four
        assert len({tuple(t.flatten().tolist()) for t in (s_, s_next, goal, intent)}) == distinct, pad
