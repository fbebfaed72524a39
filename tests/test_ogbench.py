"""OGBench for real: datasets made with OGBench's own environments and oracles (vispre.envs.ogbench_data), read by
OGBench's loader and vispre's; OGBench's agents (gcbc, gcivl, gciql, hiql) on tiny generated datasets. Skipped
when the ogbench package (vispre[ogbench]) is missing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
ogbench = pytest.importorskip("ogbench", reason="needs vispre[ogbench]")

from vispre.data.ogbench_npz import load_ogbench  # noqa: E402
from vispre.envs.ogbench_data import DatasetSpec, generate, read_metadata, spec_from_name  # noqa: E402


@pytest.fixture(scope="module")
def state_data(tmp_path_factory):
    """cube-single play (plan oracle), 3 + 1 episodes of 12 steps (the protocol's, shortened)."""
    out = tmp_path_factory.mktemp("ogb_state")
    spec = spec_from_name("cube-single-play-v0", episodes=3, episode_steps=12, seed=3)
    return out, spec, generate(spec, out, chunk_episodes=2, progress=False)


@pytest.fixture(scope="module")
def pixel_data(tmp_path_factory):
    """visual-cube-single play at lean rendering, 1 + 1 episodes of 8 steps (64x64 frames)."""
    out = tmp_path_factory.mktemp("ogb_pixels")
    spec = spec_from_name("visual-cube-single-play-v0", episodes=1, episode_steps=8, render_quality="lean")
    return out, spec, generate(spec, out, progress=False)


# ----- the dataset tool ------------------------------------------------------------------------------------------
def test_names_and_protocol_defaults():
    spec = spec_from_name("visual-puzzle-3x3-noisy-v0")
    assert (spec.env_name, spec.dataset_type, spec.family, spec.pixels) == ("visual-puzzle-3x3-v0", "noisy", "puzzle",
                                                                            True)
    assert spec.p_random_action == 0.2 and spec_from_name("cube-double-noisy-v0").p_random_action == 0.1
    assert spec_from_name("scene-play-v0").p_random_action == 0.0
    assert (spec.episodes, spec.val_episodes, spec.episode_steps, spec.noise) == (1000, 100, 1001, 0.1)
    assert spec.name == "visual-puzzle-3x3-noisy-v0"
    with pytest.raises(ValueError, match="play,noisy"):
        spec_from_name("cube-single-v0")
    with pytest.raises(ValueError, match="oracles"):
        DatasetSpec(env_name="antmaze-medium-v0")


def test_state_dataset_loads_with_ogbench_and_vispre(state_data):
    out, spec, meta = state_data
    train = out / "cube-single-play-v0.npz"
    theirs = ogbench.utils.load_dataset(str(train), compact_dataset=False)
    ours = load_ogbench(train, compact=False)
    assert theirs["observations"].shape == (3 * 11, 28) and theirs["actions"].shape == (33, 5)
    for key in ("observations", "next_observations", "actions", "terminals"):
        np.testing.assert_array_equal(theirs[key], ours[key])
    raw = np.load(train)
    assert raw["terminals"].tolist() == ([0] * 11 + [1]) * 3  # 12-step episodes, the last step marked
    assert raw["qpos"].shape[0] == 36 and np.abs(raw["actions"]).max() <= 1
    assert np.abs(np.diff(raw["actions"], axis=0)).sum() > 0  # the oracle moves
    # OGBench's own entry point reads the local files (and never downloads them)
    env, tr, va = ogbench.make_env_and_datasets("cube-single-play-v0", dataset_path=str(train), compact_dataset=True)
    assert len(tr["observations"]) == 36 and len(va["observations"]) == 12 and tr["valids"].sum() == 33
    env.close()
    assert meta["train_rows"] == 36 and meta["val_rows"] == 12 and meta["observation"] == "states"
    assert read_metadata(train)["dataset"] == "cube-single-play-v0"


def test_generation_resumes_from_its_chunks_with_the_same_result(state_data, tmp_path):
    out, spec, _ = state_data
    before = dict(np.load(out / "cube-single-play-v0.npz"))
    again = tmp_path / "again"
    generate(spec, again, chunk_episodes=2, progress=False)
    # interrupted: the files and one chunk gone; the rerun makes only that chunk and the same dataset
    (again / "cube-single-play-v0.npz").unlink()
    (again / ".parts" / spec.name / "chunk_00001.npz").unlink()
    kept = (again / ".parts" / spec.name / "chunk_00000.npz").stat().st_mtime_ns
    meta = generate(spec, again, chunk_episodes=2, progress=False)
    assert (again / ".parts" / spec.name / "chunk_00000.npz").stat().st_mtime_ns == kept
    assert meta["steps_made"] == 2 * 12  # the second chunk: episodes 2 and 3
    after = dict(np.load(again / "cube-single-play-v0.npz"))
    for key in ("observations", "actions", "terminals", "qpos"):
        np.testing.assert_array_equal(before[key], after[key])
    other = DatasetSpec(**{**json.loads((again / ".parts" / spec.name / "spec.json").read_text()), "seed": 9})
    (again / "cube-single-play-v0.json").unlink()
    with pytest.raises(ValueError, match="another spec"):
        generate(other, again, progress=False)


def test_pixel_dataset_records_its_render_quality(pixel_data):
    out, spec, meta = pixel_data
    train = out / "visual-cube-single-play-v0.npz"
    theirs = ogbench.utils.load_dataset(str(train), ob_dtype=np.uint8, compact_dataset=True)
    assert theirs["observations"].shape == (8, 64, 64, 3) and theirs["observations"].dtype == np.uint8
    ours = load_ogbench(train, compact=True)
    np.testing.assert_array_equal(theirs["observations"], ours["observations"])
    np.testing.assert_array_equal(theirs["valids"], ours["valids"])
    assert theirs["observations"].std() > 10  # a rendered scene, not a blank frame
    assert meta["render_quality"] == "lean" and meta["render"]["shadowsize"] == 0
    assert read_metadata(train)["render_quality"] == "lean"


# ----- OGBench's agents --------------------------------------------------------------------------------------------
import torch  # noqa: E402

from vispre.rl import rl_recipe  # noqa: E402,F401  (registers the agents)
from vispre.rl.agent import to_torch  # noqa: E402
from vispre.rl.encoders import FeatureEncoder  # noqa: E402
from vispre.rl.networks import ActionSpace  # noqa: E402
from vispre.rl.ogbench_layout import ImpalaEncoder, shift_shared  # noqa: E402
from vispre.rl.registry import AGENTS  # noqa: E402
from vispre.rl.transitions import Transitions  # noqa: E402

OGBENCH_AGENTS = ("gcbc", "gcivl", "gciql", "hiql")
# DDPG+BC with a BC weight that dominates its (scale-free) Q term, so that the likelihood of the actions must rise
SMALL = {"actor_hidden": [64, 64], "value_hidden": [64, 64], "subgoal_steps": 3, "alpha": 10.0}


def small_config(name: str, **kw):
    cls = AGENTS[name].config
    fields = cls.__dataclass_fields__
    return cls(**{k: v for k, v in {**SMALL, **kw}.items() if k in fields})


def train(agent, data, steps: int, batch: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [agent.update(to_torch(agent.make_batch(data, data.sample(batch, rng), rng), "cpu")) for _ in range(steps)]


def early_late(history: list[dict], key: str, n: int = 10) -> tuple[float, float]:
    return float(np.mean([h[key] for h in history[:n]])), float(np.mean([h[key] for h in history[-n:]]))


@pytest.mark.parametrize("name", [*OGBENCH_AGENTS, "gciql_awr"])
def test_agents_learn_on_a_generated_state_dataset(state_data, name):
    """OGBench's state layout (no encoder, [s, g] concatenated): the value loss falls and the actor's likelihood of
    the oracle's actions rises; greedy actions are boxes in [-1, 1], V(s, g) one number per state."""
    out, _, _ = state_data
    data = Transitions.from_file(out / "cube-single-play-v0.npz")
    torch.manual_seed(0)
    name, extra = ("gciql", {"actor_loss": "awr", "alpha": 1.0}) if name == "gciql_awr" else (name, {})
    cfg = small_config(name, lr=1e-3, batch_size=32, **extra)
    agent = AGENTS[name](FeatureEncoder(28), ActionSpace(False, 5), cfg).configure(seed=0)
    history = train(agent, data, 150, 32)
    if name != "gcbc":
        first, last = early_late(history, "value_loss")
        assert last < 0.5 * first, (first, last)
    key = "low_bc_log_prob" if name == "hiql" else "bc_log_prob"
    first, last = early_late(history, key)
    # std 1: log pi(a) = -5/2 log(2 pi) - |a - mu|^2 / 2, so the squared action error is what the log-likelihood says
    ceiling = -2.5 * np.log(2 * np.pi)
    assert -2 * (last - ceiling) < 0.5 * -2 * (first - ceiling), (first, last)
    obs = torch.from_numpy(data.stack(data.valid[:6]))
    goals = torch.from_numpy(data.stack(data.traj_last[data.valid[:6]]))
    actions = agent.act(obs, goals, sample=False)
    assert actions.shape == (6, 5) and actions.abs().max() <= 1
    value = agent.value(obs, goals)
    assert (value is None) if name == "gcbc" else value.shape == (6,)


def test_goal_batches_follow_ogbench(state_data):
    """Value goals: reward 0 / mask 0 exactly where the goal is the state itself; actor and HIQL goals: later states
    of the same trajectory (the one goal sampler), s_{t+k} clipped at the trajectory's last transition."""
    out, _, _ = state_data
    data = Transitions.from_file(out / "cube-single-play-v0.npz")
    agent = AGENTS["hiql"](FeatureEncoder(28), ActionSpace(False, 5), small_config("hiql"))
    rng = np.random.default_rng(0)
    rows = data.sample(512, rng)
    batch = agent.make_batch(data, rows, rng)
    same = np.all(batch["value_goals"] == batch["observations"], axis=(1, 2))
    assert np.array_equal(batch["masks"] == 0, same) and set(np.unique(batch["rewards"])) == {-1.0, 0.0}
    assert 0.15 < same.mean() < 0.3  # 20% current goals (plus rare equal states)
    position = {data.observations[r].tobytes(): r for r in range(data.num_rows)}  # rows are distinct states here

    def goal_rows(key):
        return np.array([position[g[0].tobytes()] for g in batch[key]])

    actor, low, target = goal_rows("actor_goals"), goal_rows("low_actor_goals"), goal_rows("high_actor_targets")
    last = data.traj_last[rows]
    assert np.all((actor > rows) | (rows == last)) and np.all(actor <= last)
    assert np.array_equal(low, np.minimum(rows + 3, last))
    high = goal_rows("high_actor_goals")
    assert np.array_equal(target, np.minimum(rows + 3, high))


def pixel_prototype() -> ImpalaEncoder:
    return ImpalaEncoder(3, 64, stack_sizes=(4, 8), mlp_dims=(32,))


def test_ogbench_network_layout_on_pixels(pixel_data):
    """Each network its own encoder; value / critic / actor read [s; g] stacked on the channels (6 = 2 x 3); HIQL's
    phi reads [s; g] and is shared by the value, its target and the low actor, the state encoders read s (3);
    Gaussian actors have std 1; LayerNorm follows the activation in value MLPs."""
    space = ActionSpace(False, 5)
    gciql = AGENTS["gciql"](pixel_prototype(), space, small_config("gciql"))
    firsts = [m.stacks[0].conv for m in gciql.encoder]
    assert [c.in_channels for c in firsts] == [6, 6, 6] and len({id(c.weight) for c in firsts}) == 3
    target_conv = gciql.critic_target.module.input.encoder.stacks[0].conv
    assert target_conv.weight is not gciql.critic.input.encoder.stacks[0].conv.weight
    assert torch.equal(target_conv.weight, gciql.critic.input.encoder.stacks[0].conv.weight)
    hiql = AGENTS["hiql"](pixel_prototype(), space, small_config("hiql"))
    assert [m.stacks[0].conv.in_channels for m in hiql.encoder] == [6, 3, 3, 6]  # phi, value, low actor, high actor
    assert not any("phi" in n for n, _ in hiql.value_target.module.named_parameters())
    x = torch.randn(4, hiql.high_input.num_features)
    assert torch.allclose(hiql.high_actor.dist(x).stddev, torch.ones(4, 10))
    kinds = [type(m).__name__ for m in hiql.value_heads.heads.members[0]]
    assert kinds[:3] == ["Linear", "GELU", "LayerNorm"]
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in hiql.low_actor.net)


def test_one_crop_per_sample_shared_by_its_images(pixel_data):
    out, _, _ = pixel_data
    data = Transitions.from_file(out / "visual-cube-single-play-v0.npz")
    rows = data.valid[:6]
    stack = torch.from_numpy(data.stack(rows))
    crops = shift_shared([stack, stack.clone(), stack.flip(0)], 3, torch.Generator().manual_seed(0))
    assert all(c.shape == stack.shape and c.dtype == torch.uint8 for c in crops)
    assert torch.equal(crops[0], crops[1]) and not torch.equal(crops[0], stack)
    padded = torch.nn.functional.pad(stack[:, 0].permute(0, 3, 1, 2), (3, 3, 3, 3), mode="replicate")
    for i in range(6):  # a crop of the padded frame; the third stack (samples reversed) used the same offsets
        offsets = [(dy, dx) for dy in range(7) for dx in range(7)
                   if torch.equal(padded[i, :, dy:dy + 64, dx:dx + 64].permute(1, 2, 0), crops[0][i, 0])]
        flipped = torch.nn.functional.pad(stack.flip(0)[i, 0].permute(2, 0, 1), (3, 3, 3, 3), mode="replicate")
        assert any(torch.equal(flipped[:, dy:dy + 64, dx:dx + 64].permute(1, 2, 0), crops[2][i, 0])
                   for dy, dx in offsets)
    # the agent applies it to every image of the batch at once
    agent = AGENTS["gcivl"](pixel_prototype(), ActionSpace(False, 5), small_config("gcivl", augment_prob=1.0))
    same = {k: stack for k in agent.image_keys}
    cropped = agent.augmented(same)
    assert all(torch.equal(cropped[k], cropped["observations"]) for k in agent.image_keys)
    agent.cfg.shared_crop = False  # DrQ's independent shifts differ between the images
    independent = agent.augmented(same)
    assert not all(torch.equal(independent[k], independent["observations"]) for k in agent.image_keys)


@pytest.mark.parametrize("name", OGBENCH_AGENTS)
def test_agents_train_on_generated_pixels(pixel_data, name):
    """Every agent on the generated 64x64 frames (a small IMPALA per network, the shared crop on): the actor's
    likelihood of the dataset's actions rises; greedy actions for goal images."""
    out, _, _ = pixel_data
    data = Transitions.from_file(out / "visual-cube-single-play-v0.npz")
    torch.manual_seed(0)
    cfg = small_config(name, lr=1e-3, augment_prob=0.5, low_actor_rep_grad=True)
    agent = AGENTS[name](pixel_prototype(), ActionSpace(False, 5), cfg).configure(seed=0)
    history = train(agent, data, 24, 8)
    key = "low_bc_log_prob" if name == "hiql" else "bc_log_prob"
    first, last = early_late(history, key, 6)
    assert last > first, (first, last)
    assert all(np.isfinite(v) for h in history for v in h.values())
    obs = torch.from_numpy(data.stack(data.valid[:3]))
    assert agent.act(obs, obs.flip(0), sample=False).shape == (3, 5)


def test_gciql_actor_advantage_comes_from_the_online_critic(state_data):
    """DDPG+BC evaluates the actor's action with the ONLINE critic (not its Polyak target), whose parameters get no
    gradient from the actor's loss; AWR's advantage is min_k Q_k - V of the online networks."""
    out, _, _ = state_data
    data = Transitions.from_file(out / "cube-single-play-v0.npz")
    torch.manual_seed(0)
    agent = AGENTS["gciql"](FeatureEncoder(28), ActionSpace(False, 5), small_config("gciql", lr=1e-3)).configure()
    train(agent, data, 20, 32)  # online and target critics now differ
    rng = np.random.default_rng(1)
    batch = to_torch(agent.make_batch(data, data.sample(64, rng), rng), "cpu")
    _, metrics = agent.losses(batch)
    obs, goals = batch["observations"], batch["actor_goals"]
    with torch.no_grad():
        pi = agent.actor.mode(agent.actor_input(obs, goals)).clamp(-1, 1)
        online = agent.critic(obs, goals, pi).min(0).values.mean()
        target = agent.critic_target.module(obs, goals, pi).min(0).values.mean()
    assert metrics["q_pi_mean"].item() == pytest.approx(online.item(), rel=1e-5)
    assert abs(online.item() - target.item()) > 1e-4
    from vispre.rl.ogbench_layout import frozen_call

    agent.zero_grad(set_to_none=True)
    pi = agent.actor.mode(agent.actor_input(obs, goals))
    frozen_call(agent.critic, obs, goals, pi).min(0).values.mean().backward()
    assert all(p.grad is None for p in agent.critic.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.actor.parameters())


# ----- evaluation in the real environment, encoder arms, the whole run ------------------------------------------
class ZeroPolicy:
    """Stands still: the same actions whatever process the environments run in."""

    goal_conditioned, frame_stack, space = True, 1, ActionSpace(False, 5)

    def eval(self):
        return self

    def act(self, obs, goals=None, sample=True):
        assert goals is not None and goals.shape[0] == obs.shape[0]
        return torch.zeros(len(obs), 5)


def test_ogbench_evaluation_protocol_in_worker_processes():
    """Episode i is task i % 5 + 1 with reset seed eval_seed + i; environments stepped in their own processes give
    the same episodes as in this process; an episode ends at the time limit (or the goal), success at its last step."""
    import functools

    from vispre.rl.eval_envs import OGBenchEval
    from vispre.rl.evaluate import rollouts
    from vispre.rl.run import per_task

    env = OGBenchEval("cube-single-play-v0", 0, [1, 2, 3, 4, 5], max_steps=4)
    obs, goal = env.reset(6)
    assert obs.shape == goal.shape == (28,) and env.env.unwrapped.cur_task_id == 2
    first = env.reset(6)[0]
    np.testing.assert_array_equal(obs, first)  # the same episode twice
    env.close()
    make = functools.partial(OGBenchEval, "cube-single-play-v0", 0, [1, 2, 3, 4, 5], 4)
    here = rollouts(ZeroPolicy(), make, 3, "cpu", mode="greedy", num_envs=2)
    there = rollouts(ZeroPolicy(), make, 3, "cpu", mode="greedy", num_envs=1, workers=True)  # one process: CPU
    assert here == there and here["length"] == [4, 4, 4] and here["success"] == [False] * 3

    class Recipe:
        class env:
            kind, name, task_ids = "ogbench", "cube-single-play-v0", [1, 2]

    assert per_task(Recipe, [True, False, True, True]) == {"task1": 1.0, "task2": 0.5}


def test_evaluation_renders_as_the_dataset_was_rendered(pixel_data):
    from vispre.rl.eval_envs import OGBenchEval
    from vispre.rl.rl_recipe import load_offline_rl_config
    from vispre.rl.run import resolve_render_quality
    from vispre.utils.typed_config import ConfigError

    out, _, _ = pixel_data
    train = out / "visual-cube-single-play-v0.npz"
    recipe = load_offline_rl_config(None, ["env.kind=ogbench", "env.name=visual-cube-single-play-v0"])
    assert resolve_render_quality(recipe, train) == "lean"  # '' = the dataset's
    recipe.env.render_quality = "default"
    with pytest.raises(ConfigError, match="rendered at 'lean'"):
        resolve_render_quality(recipe, train)
    env = OGBenchEval("visual-cube-single-play-v0", 0, [1], render_quality="lean")
    frame, goal = env.reset(0)
    assert frame.shape == goal.shape == (64, 64, 3)
    model = env.env.unwrapped._model
    assert (model.vis.quality.shadowsize, model.vis.quality.offsamples, model.mat_reflectance.max()) == (0, 0, 0)
    env.close()


def test_encoder_arms_for_ogbench(state_data, pixel_data):
    """States: no encoder; impala_small: OGBench's; timm:NAME any timm model (random weights here; pretrained weights
    need a download, and offline that is said plainly)."""
    from vispre.rl.arms import build_arm
    from vispre.rl.encoders import PixelEncoder
    from vispre.rl.rl_recipe import ArmConfig

    states = Transitions.from_file(state_data[0] / "cube-single-play-v0.npz")
    arm = build_arm(ArmConfig(kind="scratch"), "", 0, states, states, 1)
    assert isinstance(arm.encoder, FeatureEncoder) and arm.encoder.num_features == 28
    pixels = Transitions.from_file(pixel_data[0] / "visual-cube-single-play-v0.npz")
    arm = build_arm(ArmConfig(kind="scratch", architecture="impala_small"), "", 0, pixels, pixels, 3)
    assert isinstance(arm.encoder, ImpalaEncoder) and arm.encoder.in_channels == 9 and arm.encoder.num_features == 512
    arm = build_arm(ArmConfig(kind="scratch", architecture="export"), "timm:resnet10t", 0, pixels, pixels, 1)
    assert isinstance(arm.encoder, PixelEncoder) and arm.train_encoder
    obs = torch.from_numpy(pixels.stack(pixels.valid[:2]))
    assert arm.encoder(obs).shape == (2, arm.encoder.num_features)
    agent = AGENTS["gcbc"](arm.encoder, ActionSpace(False, 5), small_config("gcbc"))
    assert agent.actor_input.num_features == 2 * arm.encoder.num_features  # one frame each: s and g fused late
    assert agent.act(obs, obs, sample=False).shape == (2, 5)
    with pytest.raises(RuntimeError, match="could not load the pretrained weights of 'resnet10t'.*pretrained: false"):
        build_arm(ArmConfig(kind="finetune", pretrained=True), "timm:resnet10t", 0, pixels, pixels, 1)


def test_the_ogbench_comparison_runs_end_to_end(pixel_data, tmp_path):
    """A pixel recipe on the generated dataset: OGBench's GCBC with impala_small (scratch) against a frozen random
    timm encoder, OGBench's evaluation (greedy, tasks cycled, lean rendering taken from the dataset), report."""
    from vispre.rl import run_offline_rl
    from vispre.rl.rl_recipe import load_offline_rl_config

    out, _, _ = pixel_data
    cfg = load_offline_rl_config(None, [
        "env.kind=ogbench", "env.name=visual-cube-single-play-v0", "env.task_ids=[1,2]", "env.eval_seed=0",
        f"data.path={out / 'visual-cube-single-play-v0.npz'}", "agent.name=gcbc", "agent.steps=2",
        "agent.batch_size=4", "agent.actor_hidden=[16]", "agent.augment_prob=0.5",
        "arms=[{kind: scratch, architecture: impala_small}, {kind: random_frozen, encoder: 'timm:resnet10t'}]",
        "seeds=[0]", "eval.episodes=2", "eval.curve_points=0", "eval.max_steps=3", "eval.policy=greedy",
        "eval.num_envs=1", "eval.random_reference=false", f"output_dir={tmp_path / 'run'}", "threads=1"])
    results = run_offline_rl(cfg)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["protocol"]["env"]["render_quality"] == "lean"
    for arm in ("scratch", "random_frozen"):
        final = [r for r in saved["runs"] if r["arm"] == arm][0]["final"]
        assert final["episodes"] == 2 and final["length"] == 3 and set(final["success_per_task"]) == {"task1", "task2"}
    assert "| scratch | impala_small |" in (tmp_path / "run" / "results.md").read_text()
    assert results["arms"].keys() == {"scratch", "random_frozen"}
