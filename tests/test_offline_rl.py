"""Offline RL from pixels (vispre.rl): OGBench readers, sampling, augmentation, IQL's losses, BC, HIQL, the run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vispre.data.ogbench_npz import is_memory_mapped, load_ogbench, read_npz
from vispre.rl.agent import to_torch
from vispre.rl.bc import BCConfig
from vispre.rl.encoders import FeatureEncoder, NatureCNN, PixelEncoder
from vispre.rl.evaluate import monte_carlo_returns
from vispre.rl.hiql import HIQL, HIQLConfig
from vispre.rl.iql import IQL, IQLConfig, awr_weights, expectile_loss, td_target
from vispre.rl.networks import ActionSpace
from vispre.rl.rl_recipe import load_offline_rl_config
from vispre.rl.transitions import Transitions, goal_rewards
from vispre.utils.typed_config import ConfigError
from vispre.views.shift import random_shift, shift_frames

ROOT = Path(__file__).resolve().parents[1]


def raw_dataset(lengths=(4, 3, 5)) -> dict[str, np.ndarray]:
    """Trajectories of ``lengths`` frames; frame r is filled with r, action r, reward 1 / mask 0 on the
    row reaching the goal in the first trajectory only (the others time out)."""
    rows = sum(lengths)
    terminals = np.zeros(rows, np.float32)
    terminals[np.cumsum(lengths) - 1] = 1
    rewards = np.zeros(rows, np.float32)
    rewards[lengths[0] - 2] = 1  # the first trajectory's last action reaches the goal
    frames = np.broadcast_to(np.arange(rows, dtype=np.uint8)[:, None, None, None], (rows, 8, 8, 3)).copy()
    return {"observations": frames, "actions": np.arange(rows, dtype=np.int64), "rewards": rewards,
            "masks": 1 - rewards, "terminals": terminals}


def frame_ids(stack: np.ndarray) -> np.ndarray:
    return stack[..., 0, 0, 0].astype(int)


@pytest.fixture
def npz_file(tmp_path) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **raw_dataset())
    return path


# ----- reading -------------------------------------------------------------------------------------------------
def test_npz_members_memory_mapped_when_stored_and_cached_when_compressed(tmp_path):
    arrays = raw_dataset()
    np.savez(tmp_path / "stored.npz", **arrays)
    np.savez_compressed(tmp_path / "packed.npz", **arrays)
    stored = read_npz(tmp_path / "stored.npz")
    assert is_memory_mapped(stored["observations"])
    packed = read_npz(tmp_path / "packed.npz")  # compressed, no cache: read into RAM
    assert not is_memory_mapped(packed["observations"])
    cached = read_npz(tmp_path / "packed.npz", cache_dir=tmp_path / "cache")
    assert is_memory_mapped(cached["observations"]) and len(list((tmp_path / "cache").glob("*.npy"))) == 5
    for got in (stored, packed, cached):
        for key, value in arrays.items():
            np.testing.assert_array_equal(got[key], value)
    with pytest.raises(KeyError, match="no array 'qpos'"):
        read_npz(tmp_path / "stored.npz", keys=["qpos"])


def test_regular_and_compact_layouts_as_ogbench_builds_them(npz_file):
    regular = load_ogbench(npz_file, compact=False)
    # rows 3, 6, 11 are last frames: dropped from observations, reached only as next_observations
    assert frame_ids(regular["observations"][:, None]).ravel().tolist() == [0, 1, 2, 4, 5, 7, 8, 9, 10]
    assert frame_ids(regular["next_observations"][:, None]).ravel().tolist() == [1, 2, 3, 5, 6, 8, 9, 10, 11]
    assert regular["terminals"].tolist() == [0, 0, 1, 0, 1, 0, 0, 0, 1]  # last transition of each trajectory
    assert regular["actions"].tolist() == [0, 1, 2, 4, 5, 7, 8, 9, 10]
    assert regular["rewards"].tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert regular["masks"].tolist() == [1, 1, 0, 1, 1, 1, 1, 1, 1]
    compact = load_ogbench(npz_file, compact=True)
    assert is_memory_mapped(compact["observations"])  # np.savez stores members uncompressed
    assert compact["valids"].tolist() == [1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0]
    assert compact["terminals"].tolist() == [0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 1, 1]


def test_bad_files_name_the_problem(tmp_path):
    arrays = raw_dataset()
    np.savez(tmp_path / "no_terminals.npz", **{k: v for k, v in arrays.items() if k != "terminals"})
    with pytest.raises(KeyError, match="missing array.*terminals"):
        load_ogbench(tmp_path / "no_terminals.npz")
    arrays["terminals"][-1] = 0
    np.savez(tmp_path / "open_end.npz", **arrays)
    with pytest.raises(ValueError, match=r"terminals\[-1\] must be 1"):
        load_ogbench(tmp_path / "open_end.npz")


def transition_set(data: Transitions, stack: int) -> set:
    batch = data.batch(data.valid, stack)
    return {(tuple(frame_ids(o).ravel()), tuple(frame_ids(n).ravel()), int(a), float(r), float(m))
            for o, n, a, r, m in zip(batch["observations"], batch["next_observations"], batch["actions"],
                                     batch["rewards"], batch["masks"])}


@pytest.mark.parametrize("stack", [1, 3])
def test_both_layouts_give_the_same_transitions(npz_file, stack):
    regular = Transitions.from_file(npz_file, compact=False)
    compact = Transitions.from_file(npz_file, compact=True)
    assert len(regular) == len(compact) == 9
    assert transition_set(regular, stack) == transition_set(compact, stack)


@pytest.mark.parametrize("compact", [False, True])
def test_frame_stacks_repeat_the_first_frame_at_a_trajectory_start(npz_file, compact):
    data = Transitions.from_file(npz_file, compact=compact)
    batch = data.batch(data.valid, frame_stack=3)
    obs, nxt = frame_ids(batch["observations"]).tolist(), frame_ids(batch["next_observations"]).tolist()
    # second trajectory: frames 4, 5, 6 (6 is its last frame)
    i = batch["actions"].tolist().index(4)
    assert obs[i] == [4, 4, 4] and nxt[i] == [4, 4, 5]
    assert obs[i + 1] == [4, 4, 5] and nxt[i + 1] == [4, 5, 6]
    # third trajectory, deep enough for a full stack
    j = batch["actions"].tolist().index(10)
    assert obs[j] == [8, 9, 10] and nxt[j] == [9, 10, 11]


def test_masks_not_terminals_stop_bootstrapping(npz_file):
    data = Transitions.from_file(npz_file)
    returns = monte_carlo_returns(data, discount=0.5)
    # trajectory 1 reaches the goal from row 2 (mask 0): G = 0.25, 0.5, 1; trajectories 2 and 3 time out: G = 0
    assert returns[[0, 1, 2]].tolist() == [0.25, 0.5, 1.0]
    assert np.all(returns[[4, 5, 7, 8, 9, 10]] == 0) and np.isnan(returns[[3, 6, 11]]).all()
    y = td_target(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([5.0, 5.0]), 0.5)
    assert y.tolist() == [1.0, 2.5]  # a terminal that is not a completion (mask 1) still bootstraps


def test_goal_sampling_follows_the_mixture(npz_file):
    data = Transitions.from_file(npz_file)
    rng = np.random.default_rng(0)
    rows = data.sample(4000, rng)
    assert np.array_equal(data.sample_goals(rows, rng, 1.0, 0.0, 0.0), rows)
    future = data.sample_goals(rows, rng, 0.0, 1.0, 0.0, discount=0.5)
    last = data.traj_last[rows]  # a trajectory's last transition (its last frame is never a goal)
    assert np.all(np.where(rows < last, future > rows, future == rows)) and np.all(future <= last)
    assert np.all(data.traj_start[future] == data.traj_start[rows])
    mixed = data.sample_goals(rows, rng)  # 0.2 current / 0.5 trajectory / 0.3 random (1 row in 9: the same)
    inner = rows < last
    assert abs(np.mean(mixed[inner] == rows[inner]) - (0.2 + 0.3 / 9)) < 0.03
    other_trajectory = 0.3 * (1 - (3**2 + 2**2 + 4**2) / 9**2)  # trajectories of 3, 2, 4 transitions
    assert abs(np.mean(data.traj_start[mixed] != data.traj_start[rows]) - other_trajectory) < 0.03
    uniform = data.future_rows(rows, rng)
    assert np.all(np.where(rows < last, uniform > rows, uniform == rows)) and np.all(uniform <= last)
    with pytest.raises(ValueError, match="sum to 1"):
        data.sample_goals(rows, rng, 0.5, 0.5, 0.5)
    r, m = goal_rewards(np.array([3, 4]), np.array([3, 5]))
    assert r.tolist() == [0.0, -1.0] and m.tolist() == [0.0, 1.0]


def test_geometric_goal_offsets_have_the_discount_horizon():
    data = Transitions.from_layout({"observations": np.zeros((10_001, 1)), "actions": np.zeros(10_001, np.int64),
                                    "valids": np.r_[np.ones(10_000), 0.0]})
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 5000, 20_000)
    offsets = data.future_rows(rows, rng, geometric_p=0.1) - rows
    assert offsets.min() >= 1 and abs(offsets.mean() - 10.0) < 0.3  # E[Geometric(0.1)] = 10


# ----- augmentation ------------------------------------------------------------------------------------------
def test_random_shift_keeps_shapes_and_crops_the_padded_image():
    x = torch.randint(0, 255, (6, 3, 16, 16), dtype=torch.uint8)
    assert random_shift(x, 0) is x
    g = torch.Generator().manual_seed(0)
    y = random_shift(x, 4, g)
    assert y.shape == x.shape and y.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="replicate")
    for i in range(6):  # each output is the padded image cropped at some offset in [0, 8]^2
        assert any(torch.equal(y[i], padded[i, :, dy:dy + 16, dx:dx + 16]) for dy in range(9) for dx in range(9))
    assert not all(torch.equal(y[i], x[i]) for i in range(6))
    stacks = torch.randint(0, 255, (5, 3, 16, 16, 3), dtype=torch.uint8)
    stacks[:, 1:] = stacks[:, :1]  # equal frames in a stack stay equal: one shift per stack
    shifted = shift_frames(stacks, 3, g)
    assert shifted.shape == stacks.shape and torch.equal(shifted[:, 0], shifted[:, 2])
    assert torch.equal(shift_frames(stacks, 0), stacks)


# ----- IQL -------------------------------------------------------------------------------------------------------
def test_iql_building_blocks_by_hand():
    assert expectile_loss(torch.tensor([1.0, -2.0]), 0.9).item() == pytest.approx((0.9 * 1 + 0.1 * 4) / 2)
    assert td_target(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]), torch.tensor([2.0, 3.0]), 0.5).tolist() \
        == [1.0, 1.0]
    w = awr_weights(torch.tensor([0.0, 1.0, 10.0]), beta=2.0, max_weight=100.0)
    assert w.tolist() == pytest.approx([1.0, math.exp(2.0), 100.0])


def _constant(net: torch.nn.Sequential, value: float) -> None:
    """Every weight 0 and the output bias ``value``: the MLP outputs ``value`` whatever its input."""
    for p in net.parameters():
        torch.nn.init.zeros_(p)
    net[-1].bias.data.fill_(value)


def test_iql_losses_equal_hand_computed_values():
    cfg = IQLConfig(expectile=0.9, beta=10.0, max_weight=100.0, discount=0.99, hidden=[8], augment_pad=0)
    agent = IQL(FeatureEncoder(4), ActionSpace(True, 3), cfg)
    _constant(agent.critic.q.q1, 1.0)
    _constant(agent.critic.q.q2, 2.0)
    _constant(agent.v, 0.5)
    _constant(agent.policy.net, 0.0)  # uniform policy: log pi = -log 3
    agent.critic_target.module.load_state_dict(agent.critic.state_dict())  # target = online
    batch = {"observations": torch.randn(2, 1, 4), "next_observations": torch.randn(2, 1, 4),
             "actions": torch.tensor([0, 2]), "rewards": torch.tensor([0.0, 1.0]), "masks": torch.tensor([1.0, 0.0])}
    _, m = agent.losses(batch)
    # V: u = min(1, 2) - 0.5 = 0.5 > 0 -> weight tau = 0.9: 0.9 * 0.25
    assert m["value_loss"].item() == pytest.approx(0.225)
    # Q: y = r + 0.99 * m * V(s') = [0.495, 1.0]; sum over the two heads of the mean squared error
    y = np.array([0.495, 1.0])
    assert m["q_loss"].item() == pytest.approx(np.mean((1 - y) ** 2) + np.mean((2 - y) ** 2))
    # pi: exp(10 * 0.5) = 148.4 clipped to 100; -E[w log pi] = 100 * log 3
    assert m["weight_mean"].item() == pytest.approx(100.0)
    assert m["actor_loss"].item() == pytest.approx(100 * math.log(3), rel=1e-5)


def test_iql_trains_the_critic_and_moves_the_polyak_target():
    torch.manual_seed(0)
    cfg = IQLConfig(hidden=[16], tau=0.5, augment_pad=2)
    agent = IQL(PixelEncoder(NatureCNN(3, 32, image_size=36)), ActionSpace(True, 3), cfg).configure()
    before = [p.clone() for p in agent.critic_target.module.parameters()]
    batch = {"observations": torch.randint(0, 255, (4, 1, 36, 36, 3), dtype=torch.uint8),
             "next_observations": torch.randint(0, 255, (4, 1, 36, 36, 3), dtype=torch.uint8),
             "actions": torch.tensor([0, 1, 2, 0]), "rewards": torch.ones(4), "masks": torch.ones(4)}
    agent.update(batch)
    online = dict(agent.critic.named_parameters())
    for (name, p), old in zip(agent.critic_target.module.named_parameters(), before):
        assert torch.allclose(p, 0.5 * old + 0.5 * online[name].detach(), atol=1e-6), name
    conv = agent.encoder.backbone.convs[0].weight
    assert agent.optimizer.state[conv]["step"] == 1  # the encoder is trained by the critic


def test_continuous_iql_policy_stays_in_the_box():
    cfg = IQLConfig(hidden=[16], augment_pad=0)
    agent = IQL(FeatureEncoder(5), ActionSpace(False, 2), cfg).configure()
    batch = {"observations": torch.randn(8, 1, 5), "next_observations": torch.randn(8, 1, 5),
             "actions": torch.rand(8, 2) * 2 - 1, "rewards": torch.zeros(8), "masks": torch.ones(8)}
    metrics = agent.update(batch)
    assert all(math.isfinite(v) for v in metrics.values())
    actions = agent.act(torch.randn(64, 1, 5))
    assert actions.shape == (64, 2) and actions.abs().max() <= 1


# ----- HIQL ------------------------------------------------------------------------------------------------------
def test_hiql_value_learns_steps_to_the_goal():
    """A 1-D chain of 12 cells (one-hot observations) walked right: V(s, g) is the discounted count of
    steps to g; g = the last state a transition starts from (OGBench never uses the last frame as a goal)."""
    torch.manual_seed(0)
    n, walks = 12, 40
    obs = np.tile(np.eye(n, dtype=np.float32), (walks, 1))
    valids = np.tile(np.r_[np.ones(n - 1), 0.0], walks)
    data = Transitions.from_layout({"observations": obs, "actions": np.ones(len(obs), np.int64), "valids": valids})
    cfg = HIQLConfig(hidden=[64, 64], lr=3e-3, discount=0.9, tau=0.05, expectile=0.7,
                      subgoal_steps=3, augment_pad=0)
    agent = HIQL(FeatureEncoder(n), ActionSpace(True, 2), cfg).configure()
    rng = np.random.default_rng(0)
    for _ in range(400):
        agent.update(to_torch(agent.make_batch(data, data.sample(128, rng), rng), "cpu"))
    states = torch.eye(n)[: n - 1, None]
    v = agent.value(states, torch.eye(n)[[n - 2] * (n - 1), None]).numpy()
    steps = np.arange(n - 2, -1, -1)
    truth = -(1 - 0.9 ** steps) / (1 - 0.9)  # -6.5 ten steps away ... 0 at the goal
    assert np.abs(v - truth).mean() < 0.5 and np.corrcoef(v, truth)[0, 1] > 0.98
    assert agent.act(states[:3], torch.eye(n)[[5, 5, 5], None]).shape == (3,)


# ----- arms, recipes, BC on oracle data, the whole run -------------------------------------------------------
def test_recipes_load_and_bad_fields_are_named():
    cpu = load_offline_rl_config(ROOT / "eval/offline_rl_minigrid.yaml")
    assert [a.kind for a in cpu.arms][:1] == ["scratch"] and len(cpu.seeds) == 3
    gpu = load_offline_rl_config(ROOT / "eval/offline_rl_ogbench.yaml")
    assert gpu.env.kind == "ogbench" and gpu.agent.name == "hiql"
    with pytest.raises(ConfigError, match=r"arms\.0\.kind"):
        load_offline_rl_config(ROOT / "eval/offline_rl_minigrid.yaml", ["arms=[{kind: pretrained}]"])
    with pytest.raises(ConfigError, match="agent.stepz"):
        load_offline_rl_config(ROOT / "eval/offline_rl_minigrid.yaml", ["agent.stepz=3"])
    # an override reaches one item of a list the recipe defines (make rl-compare sets arms.2.encoder)
    compare = load_offline_rl_config(ROOT / "eval/offline_rl_minigrid_compare.yaml", ["arms.2.encoder=elsewhere"])
    held_out = "runs/minigrid/icvf_cpu-held_out-export"
    assert [a.encoder for a in compare.arms] == ["", held_out, "elsewhere", held_out]
    assert compare.arms[1].features == "phi" and compare.agent.steps == cpu.agent.steps  # the rest from _base_
    with pytest.raises(ConfigError, match=r"arms\.x\.encoder"):
        load_offline_rl_config(ROOT / "eval/offline_rl_minigrid_compare.yaml", ["arms.x.encoder=elsewhere"])
    with pytest.raises(ConfigError, match=r"arms\.0\.features"):
        load_offline_rl_config(ROOT / "eval/offline_rl_minigrid.yaml", ["arms=[{kind: scratch, features: phi}]"])


def test_arms_without_their_export_fail_before_any_work(tmp_path):
    """A frozen arm with no --encoder and no encoder field, or one naming a folder that is no export, is
    refused before data are generated (a 20-minute comparison must not die at its second arm)."""
    from vispre.rl import run_offline_rl

    base = ["arms=[{kind: scratch}, {name: icvf, kind: frozen}]", f"output_dir={tmp_path / 'out'}"]
    cfg = load_offline_rl_config(ROOT / "eval/offline_rl_minigrid.yaml", base)
    with pytest.raises(ConfigError, match=r"arms\.1\.encoder: arm 'icvf'"):
        run_offline_rl(cfg)
    cfg = load_offline_rl_config(ROOT / "eval/offline_rl_minigrid.yaml",
                                 [*base[:1], f"arms.1.encoder={tmp_path / 'missing'}", *base[1:]])
    with pytest.raises(FileNotFoundError, match="missing is not a vispre export"):
        run_offline_rl(cfg)
    assert not (tmp_path / "out" / "data").exists()


def test_a_finished_run_is_reused_only_when_what_it_depends_on_is_unchanged(tmp_path):
    """run_key: a progress bar or the random-policy reference do not change a run (a comparison run arm by
    arm and then whole reuses every finished run); the evaluation episodes, the agent and the data do."""
    from vispre.rl.run import run_key

    train = tmp_path / "train.npz"
    train.write_bytes(b"x")

    def key(*overrides):
        cfg = load_offline_rl_config(ROOT / "eval/offline_rl_minigrid.yaml", list(overrides))
        return run_key(cfg, cfg.arms[0], "", train)

    base = key()
    assert key("eval.progress=false") == base and key("eval.random_reference=false") == base
    assert len({base, key("eval.episodes=7"), key("agent.steps=11"), key("data.frame_stack=2")}) == 4
    train.write_bytes(b"yy")
    assert key() != base


@pytest.fixture(scope="module")
def oracle_layout0(tmp_path_factory) -> Path:
    """Noise-free oracle episodes from the environment's start on one SimpleCrossing layout (train layout 0)."""
    from vispre.envs.recordings import build_minigrid_video
    from vispre.envs.rollouts import Behaviour

    out = tmp_path_factory.mktemp("oracle")
    info = build_minigrid_video(out, task="simple_crossing", episodes=20, val_episodes=2, episodes_per_layout=20,
                                behaviour=Behaviour("noisy", (0.0,), 60, random_start=False), formats=("npz",))
    return out / info["splits"]["train"]["npz"]


def test_bc_on_oracle_data_solves_the_easiest_task(oracle_layout0):
    """The easiest task: one SimpleCrossing layout, the environment's own start. BC from pixels (NatureCNN
    trained end to end) on noise-free oracle data reaches the goal in every episode, as fast as the oracle."""
    from vispre.rl.bc import BC
    from vispre.rl.eval_envs import MiniGridEval
    from vispre.rl.evaluate import rollouts

    torch.manual_seed(0)
    data = Transitions.from_file(oracle_layout0)
    assert data.rewards.sum() == 20  # every oracle episode succeeds
    oracle_steps = int(np.flatnonzero(data.rewards)[0] + 1)  # actions of the first episode
    cfg = BCConfig(hidden=[64], lr=1e-3, augment_pad=0)
    agent = BC(PixelEncoder(NatureCNN(3, 64)), ActionSpace(True, 3), cfg).configure()
    rng = np.random.default_rng(0)
    for _ in range(250):
        agent.update(to_torch(agent.make_batch(data, data.sample(32, rng), rng), "cpu"))
    result = rollouts(agent, lambda: MiniGridEval("simple_crossing", [0] * 4, max_steps=60), 4, "cpu",
                      mode="greedy", num_envs=4)
    assert all(result["success"]) and result["length"] == [oracle_steps] * 4, (result, oracle_steps)


def test_the_comparison_runs_end_to_end(tmp_path):
    """Generate data, train two arms x two seeds briefly, evaluate on held-out layouts, write the report."""
    from vispre.export.write import save_encoder
    from vispre.models import Encoder
    from vispre.rl import run_offline_rl

    export = tmp_path / "export"
    export.mkdir()
    save_encoder(Encoder("test_vit", img_size=64, patch_size=16), export,
                 {"input_size": (3, 64, 64), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear",
                  "crop_pct": 1.0, "crop_mode": "center"})
    cfg = load_offline_rl_config(ROOT / "eval/offline_rl_minigrid.yaml", [
        "data.generate.episodes=30", "data.generate.val_episodes=4", "env.holdout_layouts=2",
        "agent.steps=20", "agent.batch_size=16", "arms=[{kind: scratch}, {kind: random_frozen}]", "seeds=[0,1]",
        "eval.episodes=3", "eval.curve_points=1", "eval.curve_episodes=2", "eval.max_steps=20",
        f"output_dir={tmp_path / 'out'}", "threads=1"])
    results = run_offline_rl(cfg, str(export))
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    protocol = saved["protocol"]
    assert protocol["env"]["eval_episodes_on_a_training_layout"] == 0  # the 2 evaluation layouts are held out
    assert protocol["env"]["distinct_eval_layouts"] == 2 and protocol["env"]["train_rows_dropped"] > 0
    assert protocol["agent"]["steps"] == 20 and protocol["seeds"] == [0, 1]
    assert protocol["arms"][1]["encoder"] == str(export)
    for arm in ("scratch", "random_frozen"):
        summary = saved["arms"][arm]
        assert len(summary["success"]["per_seed"]) == 2 and 0 <= summary["success"]["mean"] <= 1
        assert summary["success"]["mean"] == pytest.approx(np.mean(summary["success"]["per_seed"]))
        assert all(1 <= n <= 20 for n in summary["length"]["per_seed"])
        assert (out / "curves" / f"{arm}.png").stat().st_size > 1000
    runs = [r for r in saved["runs"] if r["arm"] == "scratch"]
    assert [p["step"] for p in runs[0]["curve"]] == [10, 20]
    assert [p["episodes"] for p in runs[0]["curve"]] == [2, 3]
    assert math.isfinite(runs[0]["final"]["value_mae"])
    table = (out / "results.md").read_text()
    assert "| scratch | nature |" in table and f"| random_frozen | {export} |" in table
    scratch_row = next(line for line in table.splitlines() if line.startswith("| scratch |")).split(" | ")
    header = next(line for line in table.splitlines() if line.startswith("| arm |")).split(" | ")
    eval_s = saved["arms"]["scratch"]["eval_seconds"]["mean"]
    assert eval_s > 0 and scratch_row[header.index("eval s / seed")] == f"{eval_s:.0f}"
    random_policy = protocol["reference"]["uniform_random_policy"]
    assert 0 <= random_policy["success"] <= 1 and 1 <= random_policy["length"] <= 20
    assert f"success {random_policy['success']:.2f}" in table and "episodes on a layout that occurs" in table
    assert results["arms"].keys() == saved["arms"].keys()
    # a rerun of the same recipe reuses the finished runs (an interrupted comparison resumes)
    log_file = out / "runs" / "scratch" / "seed0" / "metrics.jsonl"
    written = log_file.stat().st_mtime_ns
    again = run_offline_rl(cfg, str(export))
    assert log_file.stat().st_mtime_ns == written and again["runs"] == saved["runs"]


def test_arms_run_alone_by_name_and_an_unknown_one_is_named(capsys):
    """vispre eval RECIPE --arms a,b runs those arms only (the rest of the recipe unchanged), so a comparison
    can run in several processes and then whole, reusing every finished run."""
    from vispre.cli import main

    recipe = str(ROOT / "eval/offline_rl_ogbench_cube_cpu.yaml")
    assert main(["eval", recipe, "--arms", "icvf,simclr", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("kind: frozen") == 2 and "name: icvf\n" in printed and "scratch" not in printed
    assert main(["eval", recipe, "--arms", "icvf,bogus"]) != 0
    assert "--arms: bogus not among the recipe's arms (scratch, icvf," in capsys.readouterr().err
