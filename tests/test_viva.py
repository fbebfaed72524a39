"""ViVa: the shaping term equals c * V(s', g, g) of the exported ICVF value (and the potential form), the value
fine-tuning loss by hand and its export round trip, and online RL (DQN with RLPD-style mixing) learning a
1-D chain."""

import copy

import numpy as np
import pytest
import torch

from vispre.export.read import load_encoder, load_exported_module
from vispre.export.write import save_encoder, save_modules
from vispre.methods import ICVF, ICVFConfig
from vispre.models import build_encoder
from vispre.rl.networks import ActionSpace
from vispre.rl.online import DQN, ChainEnv, DQNConfig, FlatPixelEncoder, OnlineConfig, evaluate_online, run_online
from vispre.rl.transitions import Transitions
from vispre.rl.viva import (
    FrozenValue,
    ValueFinetuneConfig,
    ValueShaper,
    finetune_value,
    icvf_loss,
    sample_quadruples,
)
from vispre.views.photometric import IMAGENET_MEAN, IMAGENET_STD

torch.set_num_threads(1)
SIZE = 16


@pytest.fixture(scope="module")
def icvf_export(tmp_path_factory):
    """A tiny ICVF (ViT 16 px, monolithic head as ViVa uses) exported as the export command writes it."""
    torch.manual_seed(0)
    encoder = build_encoder("test_vit", img_size=SIZE, patch_size=8)
    method = ICVF(encoder, ICVFConfig(head="monolithic", hidden_dims=[16, 16]))
    out = tmp_path_factory.mktemp("export")
    data_config = {"input_size": (3, SIZE, SIZE), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                   "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}
    save_encoder(method.export_encoder("online"), out, data_config)
    save_modules(method.export_modules("online"), out, "online")
    return out, method


def frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def method_goal_value(method, x: np.ndarray, goal: np.ndarray) -> torch.Tensor:
    """V(s, g, g) = mean_k V_k(s, g, g) through the training side's own network and preprocessing."""
    net = method.net("online")
    with torch.no_grad():
        f = method.encode(net, method.prepare(torch.from_numpy(x).permute(0, 3, 1, 2)))
        g = method.encode(net, method.prepare(torch.from_numpy(goal[None]).permute(0, 3, 1, 2))).expand_as(f)
        return net["value"](f, g, g).mean(0)


def test_shaping_term_equals_c_times_the_exported_value(icvf_export):
    out, method = icvf_export
    s, s_next, goal = frames(5, 1), frames(5, 2), frames(1, 3)[0]
    c, gamma = 0.01, 0.9
    v_next, v = method_goal_value(method, s_next, goal).numpy(), method_goal_value(method, s, goal).numpy()
    value = FrozenValue(out)
    shaper = ValueShaper(value, goal, c, "value", gamma)
    np.testing.assert_allclose(shaper.bonus(s[:, None], s_next[:, None]), c * v_next, rtol=1e-4, atol=1e-6)
    # the export read back directly: the encoder and the whole value function V(s, s+, z)
    enc, vf = load_encoder(out), load_exported_module(out, "value").module
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        fs = enc((torch.from_numpy(s_next).permute(0, 3, 1, 2).float() / 255 - mean) / std).pooled
        fg = enc((torch.from_numpy(goal[None]).permute(0, 3, 1, 2).float() / 255 - mean) / std).pooled.expand_as(fs)
        direct = vf(fs, fg, fg).mean(0).numpy()
    np.testing.assert_allclose(shaper.bonus(s, s_next), c * direct, rtol=1e-4, atol=1e-6)
    # the potential form: c * (gamma V(s', g, g) - V(s, g, g)); the cache changes nothing
    potential = ValueShaper(value, goal, c, "potential", gamma, cache=False)
    np.testing.assert_allclose(potential.bonus(s, s_next), c * (gamma * v_next - v), rtol=1e-4, atol=1e-6)
    # frozen: no parameter takes gradients
    assert not any(p.requires_grad for p in value.parameters())


def video_file(path, clips=4, length=6):
    obs = np.concatenate([frames(length, seed=10 + i) for i in range(clips)])
    terminals = np.zeros(len(obs), np.float32)
    terminals[length - 1::length] = 1
    np.savez(path, observations=obs, terminals=terminals)
    return path


def test_value_finetuning_loss_by_hand_and_the_export_round_trip(icvf_export, tmp_path):
    out, _ = icvf_export
    video = video_file(tmp_path / "video.npz")
    cfg = ValueFinetuneConfig(steps=3, batch_size=8, sources=[str(video), str(video)], weights=[0.5, 0.5],
                              lr=1e-3)
    from vispre.rl.viva import load_frames

    data: Transitions = load_frames(video)
    q, r = sample_quadruples(data, 6, np.random.default_rng(0), cfg)
    net = FrozenValue(out, trainable=True)
    target = copy.deepcopy(net)
    fr = {k: torch.from_numpy(v) for k, v in q.items()}
    rw = {k: torch.from_numpy(v) for k, v in r.items()}
    loss, _ = icvf_loss(net, target, fr, rw, 0.9, 0.8)
    with torch.no_grad():
        f = {k: net.features(v) for k, v in fr.items()}
        vzz_next = net(f["next"], f["z"], f["z"])  # [k, B]
        adv = rw["r_z"] + 0.9 * rw["m_z"] * vzz_next.min(0).values - net(f["s"], f["z"], f["z"]).mean(0)
        hand = 0.0
        for k in range(2):
            y = rw["r_g"] + 0.9 * rw["m_g"] * net(f["next"], f["g"], f["z"])[k]
            w = np.where(adv.numpy() >= 0, 0.8, 0.2)
            hand += float(np.mean(w * (y - net(f["s"], f["g"], f["z"])[k]).numpy() ** 2))
    assert loss.item() == pytest.approx(hand, rel=1e-5)
    # rewards: 0 where s is the target, -1 elsewhere; masks the complement
    assert set(np.unique(r["r_g"])) <= {-1.0, 0.0} and np.array_equal(r["m_g"], -r["r_g"])

    tuned = finetune_value(out, tmp_path / "tuned", cfg)
    again = FrozenValue(tuned)
    before = FrozenValue(out)
    s, goal = frames(3, 5), frames(1, 6)[0]
    changed = again.goal_value(torch.from_numpy(s), torch.from_numpy(goal))
    assert not torch.allclose(changed, before.goal_value(torch.from_numpy(s), torch.from_numpy(goal)))
    assert not (tuned / "phi.json").exists() and (tuned / "viva_finetune.json").exists()


def test_online_dqn_learns_a_chain(tmp_path):
    """Chain of 6 cells, reward 1 at the right end: from random exploration to the greedy policy walking
    right in every cell, in 2500 env steps (with and without RLPD-style offline mixing)."""
    torch.manual_seed(0)
    env = ChainEnv(6, 20)
    cfg = DQNConfig(lr=1e-3, batch_size=32, discount=0.9, tau=0.02, hidden=[32], eps_decay_steps=1000,
                    augment_pad=0)
    agent = DQN(FlatPixelEncoder((1, 6, 3)), ActionSpace(True, 2), cfg).configure(seed=0)
    online = OnlineConfig(env_steps=2500, start_training=300, eval_every=500, eval_episodes=2, log_every=500,
                          checkpoint_every=2500)
    result = run_online(agent, lambda: ChainEnv(6, 20), online, tmp_path / "run", seed=0)
    assert result["curve"][-1]["success"] == 1.0
    with torch.no_grad():
        obs = torch.from_numpy(np.stack([env.frame(i) for i in range(5)])[:, None])
        assert agent.act(obs, sample=False).tolist() == [1] * 5
    assert evaluate_online(agent, lambda: ChainEnv(6, 20), 1, "cpu")["return"] == 1.0
    assert any(e["success"] for e in result["episodes"])


def chain_agent(seed):
    torch.manual_seed(seed)
    cfg = DQNConfig(lr=1e-3, batch_size=16, discount=0.9, tau=0.02, hidden=[16], eps_decay_steps=300,
                    augment_pad=0)
    return DQN(FlatPixelEncoder((1, 6, 3), 16), ActionSpace(True, 2), cfg).configure(seed=0)


def test_online_run_resumes_exactly(tmp_path):
    """600 env steps with offline mixing and shaping-free batches, uninterrupted vs interrupted at the first
    checkpoint after step 200 and resumed by a freshly built agent: equal parameters, episodes and curves."""
    online = OnlineConfig(env_steps=600, start_training=100, eval_every=300, eval_episodes=1, checkpoint_every=200,
                          log_every=100, offline_ratio=0.5)
    rng = np.random.default_rng(0)
    env = ChainEnv(6, 20)
    obs = np.stack([env.frame(int(i)) for i in rng.integers(0, 6, 40)])
    terminals = np.zeros(40, np.float32)
    terminals[9::10] = 1
    offline = Transitions.from_layout({"observations": obs, "actions": rng.integers(0, 2, 40),
                                       "rewards": np.zeros(40, np.float32), "masks": np.ones(40, np.float32),
                                       "terminals": terminals, "valids": 1.0 - terminals})
    a = chain_agent(0)
    ra = run_online(a, lambda: ChainEnv(6, 20), online, tmp_path / "a", seed=0, offline=offline)
    b = chain_agent(0)
    rb = run_online(b, lambda: ChainEnv(6, 20), online, tmp_path / "b", seed=0, offline=offline, stop_at=200)
    stopped = rb["episodes"][-1]["env_step"]
    assert 200 <= stopped < 600
    c = chain_agent(1)  # other initial weights: everything comes from the checkpoint
    rc = run_online(c, lambda: ChainEnv(6, 20), online, tmp_path / "b", seed=0, offline=offline)
    assert rc["episodes"] == ra["episodes"] and rc["curve"] == ra["curve"]
    for (k, x), (_, y) in zip(a.state_dict().items(), c.state_dict().items()):
        assert torch.equal(x, y), k


def test_dqn_and_sac_targets_by_hand():
    """Double DQN: y = r + gamma m Qbar(s', argmax_a Q(s', a)); SAC: y = r + gamma m (min_i Qbar_i(s', a') -
    alpha log pi(a'|s')), a' the agent's own (replayed) draw."""
    from vispre.rl.encoders import FeatureEncoder
    from vispre.rl.online import SAC, SACConfig

    torch.manual_seed(0)
    batch = {"observations": torch.randn(4, 1, 3), "next_observations": torch.randn(4, 1, 3),
             "rewards": torch.tensor([0.0, 1.0, 0.0, 0.5]), "masks": torch.tensor([1.0, 0.0, 1.0, 1.0])}
    dqn = DQN(FeatureEncoder(3), ActionSpace(True, 3), DQNConfig(hidden=[8], huber=False)).configure()
    with torch.no_grad():  # make the target differ from the online network
        for p in dqn.critic_target.module.parameters():
            p.add_(0.1)
    batch_d = {**batch, "actions": torch.tensor([0, 1, 2, 1])}
    _, m = dqn.losses(batch_d)
    with torch.no_grad():
        xn, x = batch["next_observations"].flatten(1), batch["observations"].flatten(1)
        best = dqn.critic["q"](xn).argmax(-1)
        nv = dqn.critic_target.module["q"](xn)[torch.arange(4), best]
        y = batch["rewards"] + 0.99 * batch["masks"] * nv
        q = dqn.critic["q"](x)[torch.arange(4), batch_d["actions"]]
    assert m["q_loss"].item() == pytest.approx(((q - y) ** 2).mean().item(), rel=1e-5)

    sac = SAC(FeatureEncoder(3), ActionSpace(False, 2), SACConfig(hidden=[8], init_temperature=0.3)).configure(seed=1)
    batch_s = {**batch, "actions": torch.rand(4, 2) * 2 - 1}
    state = sac.generator.get_state()
    _, m = sac.losses(batch_s)
    sac.generator.set_state(state)
    with torch.no_grad():
        a_next, logp = sac.policy.sample(xn, sac.generator)
        t = sac.critic_target.module
        y = batch["rewards"] + 0.99 * batch["masks"] * (torch.min(*t["q"](xn, a_next)) - 0.3 * logp)
        q1, q2 = sac.critic["q"](x, batch_s["actions"])
    assert m["critic_loss"].item() == pytest.approx(((q1 - y) ** 2 + (q2 - y) ** 2).mean().item(), rel=1e-5)


def test_viva_runner_on_minigrid(tmp_path):
    """The recipe path end to end: the export's value fine-tuned on env play + a video file, then frozen; shaped,
    unshaped and random-value DQN arms online with 50/50 offline mixing; curves and the table."""
    import json

    from vispre.rl.viva_run import load_viva_config, run_viva

    torch.manual_seed(0)
    encoder = build_encoder("test_vit", img_size=64, patch_size=16)
    method = ICVF(encoder, ICVFConfig(head="monolithic", hidden_dims=[16]))
    export = tmp_path / "export"
    export.mkdir()
    save_encoder(method.export_encoder("online"), export, {"input_size": (3, 64, 64), "mean": IMAGENET_MEAN,
                 "std": IMAGENET_STD, "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"})
    save_modules(method.export_modules("online"), export, "online")
    obs = np.random.default_rng(0).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    np.savez(tmp_path / "video.npz", observations=obs, terminals=np.tile(np.r_[np.zeros(5), 1.0], 2))
    gen = "val_episodes: 1, max_steps: 20"
    recipe = tmp_path / "viva.yaml"
    recipe.write_text(f"""
kind: viva
env: {{task: simple_crossing, layout_seed: 2000000, max_steps: 15}}
encoder: {export}
value_finetune: {{steps: 2, batch_size: 8, crop_pad: 2}}
value_sources:
  - {{name: play, generate: {{task: simple_crossing, episodes: 2, kind: play, {gen}, seed: 1}}}}
  - {{name: video, path: {tmp_path / "video.npz"}}}
offline: {{name: offline, generate: {{task: simple_crossing, episodes: 2, kind: noisy, {gen}, seed: 2}}}}
agent: {{name: dqn, batch_size: 8, hidden: [16]}}
online: {{env_steps: 40, start_training: 20, eval_every: 20, eval_episodes: 1, log_every: 20}}
shaping: {{coefficient: 0.5, form: potential}}
seeds: [0]
output_dir: {tmp_path / "out"}
threads: 1
""")
    results = run_viva(load_viva_config(recipe))
    out = tmp_path / "out"
    assert set(results["summary"]) == {"shaped", "unshaped", "random_value"}
    assert results["summary"]["shaped"]["env_step"] == [20, 40]
    shaped = next(r for r in results["runs"] if r["arm"] == "shaped")  # the training rate per point, per arm
    assert results["summary"]["shaped"]["train_success_mean"] == [p["train_success"] for p in shaped["curve"]]
    assert f"| shaped | {shaped['curve'][-1]['success']:.2f} ± 0.00 |" in (out / "results.md").read_text()
    assert (out / "curves.png").stat().st_size > 0 and (out / "value_finetuned" / "viva_finetune.json").is_file()

    def logged(arm):
        rows = [json.loads(x) for x in (out / "runs" / arm / "seed0" / "metrics.jsonl").read_text().splitlines()]
        return [r for r in rows if "env_step" in r and "q_loss" in r]

    assert all("shaping" in r and r["shaping"] != 0 for r in logged("shaped") + logged("random_value"))
    assert all("shaping" not in r for r in logged("unshaped"))


def test_a_diverging_value_finetune_stops_with_the_fields_to_change(icvf_export, tmp_path):
    from vispre.rl.viva import check_value_range

    cfg = ValueFinetuneConfig(discount=0.9)  # values lie in [-10, 0]
    check_value_range({"step": 100, "v": -9.5}, cfg)  # inside: no error
    for v in (-16.0, 6.0, float("nan")):
        with pytest.raises(ValueError, match=r"diverged at step 100.*\[-10, 0\].*value_finetune.lr"):
            check_value_range({"step": 100, "v": v}, cfg)
    out, _ = icvf_export
    video = video_file(tmp_path / "video.npz")
    wild = ValueFinetuneConfig(steps=100, batch_size=8, sources=[str(video)], lr=10.0, eps=1e-8, tau=1.0,
                               discount=0.9)
    with pytest.raises(ValueError, match="value fine-tuning diverged"):
        finetune_value(out, tmp_path / "wild", wild)
    assert not (tmp_path / "wild").exists()  # nothing half-written to shape rewards with
