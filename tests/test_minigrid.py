"""MiniGrid data: the BFS oracle is exact, rollouts are deterministic, .npz and clip shards agree."""

import json

import numpy as np
import pytest
import torch

from vispre.data import ClipFrames, DataConfig, build_loader
from vispre.data.trajectories import load_trajectories
from vispre.data.transforms import CenterCrop
from vispre.envs import (
    TASKS,
    Behaviour,
    Oracle,
    Roller,
    build_minigrid_video,
    episodes,
    get_task,
    layout_seed,
    make_env,
    reset,
    state_of,
)

LAYOUTS = 12  # per split and task


@pytest.mark.parametrize("task", sorted(TASKS))
def test_oracle_reaches_the_goal_on_every_layout_without_noise(task):
    """From the environment's own start, the oracle's path is as long as its distance, on the layouts
    of every split (train / val / test seeds), and every step brings the distance down by one."""
    greedy = Behaviour("noisy", (0.0,), max_steps=1000, random_start=False)
    for split in ("train", "val", "test"):
        for ep in episodes(task, split, LAYOUTS, greedy):
            assert ep.success, (task, split, ep.layout_seed)
            assert len(ep) - 1 == ep.distances[0] > 0
            np.testing.assert_array_equal(np.diff(ep.distances), -1)
            assert ep.rewards.sum() == 1 and ep.rewards[-2] == 1 and ep.masks[-2] == 0 and ep.terminals[-1] == 1
            assert tuple(ep.states[-1, :2]) == ep.goal


def test_oracle_solves_every_layout_of_the_default_video():
    """All 500 + 50 SimpleCrossing layouts the default video (tools/make_minigrid_video.py) uses."""
    greedy = Behaviour("noisy", (0.0,), max_steps=1000, random_start=False)
    for split, count in (("train", 500), ("val", 50)):
        for ep in episodes("simple_crossing", split, count, greedy):
            assert ep.success and len(ep) - 1 == ep.distances[0], (split, ep.layout_seed)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_oracle_model_is_minigrids_step(task):
    """The BFS's transition model predicts every state MiniGrid reaches under random task actions."""
    spec = get_task(task)
    env = make_env(spec)
    rng = np.random.default_rng(0)
    for seed in range(3):
        oracle = Oracle(reset(env, layout_seed("train", seed)), spec.actions)
        state = state_of(env)
        for _ in range(150):
            if (state[0], state[1]) == oracle.layout.goal:
                break
            action = int(spec.actions[rng.integers(len(spec.actions))])
            if action == 5 and state[4]:  # the oracle never closes an open door (not modelled)
                continue
            env.step(action)
            predicted, state = oracle.step(state, action), state_of(env)
            assert predicted == state, (task, seed, action)


def test_rollouts_are_deterministic_and_noise_and_play_differ():
    play = Behaviour("play", (0.2,), max_steps=30)
    a = Roller(get_task("simple_crossing"), play).episode(7, np.random.default_rng(1))
    b = Roller(get_task("simple_crossing"), play).episode(7, np.random.default_rng(1))
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert a.frames.shape[1:] == (64, 64, 3) and a.frames.dtype == np.uint8
    c = Roller(get_task("simple_crossing"), play).episode(7, np.random.default_rng(2))
    assert not np.array_equal(a.states, c.states)


def test_video_npz_and_clip_shards_agree(tmp_path):
    info = build_minigrid_video(tmp_path, episodes=6, val_episodes=2, behaviour=Behaviour(max_steps=12),
                                clips_per_shard=3)
    assert not info["reused"] and info["splits"]["train"]["clip_shards"] == ["train-00000.tar", "train-00001.tar"]
    assert build_minigrid_video(tmp_path, episodes=6, val_episodes=2, behaviour=Behaviour(max_steps=12),
                                clips_per_shard=3)["reused"]
    arrays = load_trajectories(tmp_path / "simple_crossing-play.npz")
    n = info["splits"]["train"]["frames"]
    assert arrays["observations"].shape == (n, 64, 64, 3) and arrays["observations"].dtype == np.uint8
    for key in ("actions", "rewards", "masks", "terminals", "directions", "layout_seeds", "distances"):
        assert arrays[key].shape == (n,), key
    assert arrays["positions"].shape == arrays["goal_positions"].shape == (n, 2)
    assert arrays["terminals"].sum() == 6
    np.testing.assert_array_equal(arrays["masks"], 1 - arrays["rewards"])
    # a success's reward sits on the row before its episode's last (the action that reaches the goal)
    success_rows = np.flatnonzero(arrays["rewards"])
    assert arrays["terminals"][success_rows + 1].all()
    val = load_trajectories(tmp_path / "simple_crossing-play-val.npz")
    assert set(val["layout_seeds"]).isdisjoint(arrays["layout_seeds"])

    cfg = DataConfig(spec=str(tmp_path / "clips"), format="clip", resampled=False, workers=0, shuffle_buffer=0,
                     shard_shuffle=False, batch_size=1)
    clips = list(build_loader(cfg, transform=ClipFrames(64)))
    assert len(clips) == 6
    start = 0
    for batch in sorted(clips, key=lambda b: b["json"][0]["episode"]):
        meta, frames = batch["json"][0], batch["frames"][0]
        rows = slice(start, start + len(frames))
        # PNG frames are exact: the clip's pixels are the array's
        assert torch.equal(frames.permute(0, 2, 3, 1), torch.from_numpy(arrays["observations"][rows]))
        np.testing.assert_array_equal(meta["positions"], arrays["positions"][rows])
        np.testing.assert_array_equal(meta["distances"], arrays["distances"][rows])
        assert meta["layout_seed"] == arrays["layout_seeds"][start] and meta["goal"] == [7, 7]
        start += len(frames)
    assert json.loads((tmp_path / "info.json").read_text())["params"]["episodes"] == 6


def test_distinct_frames_as_image_shards(tmp_path):
    """tools/minigrid_frames_to_shards.py: each distinct frame once, lossless, readable as image shards."""
    import importlib.util
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "minigrid_frames_to_shards.py"
    spec = importlib.util.spec_from_file_location("minigrid_frames_to_shards", tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    build_minigrid_video(tmp_path, episodes=6, val_episodes=2, behaviour=Behaviour(max_steps=12), formats=("npz",))
    frames = load_trajectories(tmp_path / "simple_crossing-play.npz")["observations"]
    distinct = np.unique(frames.reshape(len(frames), -1), axis=0)
    summary = module.write_frames(tmp_path / "simple_crossing-play.npz", tmp_path / "frames", samples_per_shard=10)
    assert summary == {"frames": len(distinct), "rows": len(frames), "shards": -(-len(distinct) // 10)}
    assert len(distinct) < len(frames)  # the rollouts revisit frames

    cfg = DataConfig(spec=str(tmp_path / "frames"), format="image", resampled=False, workers=0, shuffle_buffer=0,
                     shard_shuffle=False, batch_size=1)
    seen = []
    for batch in build_loader(cfg, transform=CenterCrop(64, crop_pct=1.0)):
        row = batch["json"][0]["row"]
        seen.append(row)
        np.testing.assert_array_equal(batch["image"][0].permute(1, 2, 0).numpy(), frames[row])  # PNG: exact
    assert len(seen) == len(distinct) == len(set(seen))
    # --every 3: the distinct frames among rows 0, 3, 6, ..., each written with its row in the video
    thinned = module.write_frames(tmp_path / "simple_crossing-play.npz", tmp_path / "every3", every=3)
    kept = np.unique(frames[::3].reshape(-(-len(frames) // 3), -1), axis=0)
    assert thinned["frames"] == len(kept) < len(distinct)
    cfg.spec = str(tmp_path / "every3")
    rows = [batch["json"][0]["row"] for batch in build_loader(cfg, transform=CenterCrop(64, crop_pct=1.0))]
    assert len(rows) == len(kept) and all(r % 3 == 0 for r in rows)
    with pytest.raises(ValueError, match="--every"):
        module.write_frames(tmp_path / "simple_crossing-play.npz", tmp_path / "every0", every=0)
    with pytest.raises(KeyError, match="no 'observations'"):
        np.savez(tmp_path / "bad.npz", actions=np.zeros(3))
        module.write_frames(tmp_path / "bad.npz", tmp_path / "bad")


def test_a_held_out_video_shares_no_layout_with_evaluation_or_validation(tmp_path):
    """Layouts are held out by identity, not by seed range: SimpleCrossing's 42 layouts recur across seed ranges,
    so a video built from 'train' seeds alone contains the evaluation layouts (the old leak, checked here too)."""
    from vispre.envs.layouts import LayoutHoldout, layout_of
    from vispre.rl.eval_envs import MiniGridLayouts

    task, behaviour = "simple_crossing", Behaviour(max_steps=4)
    evaluation = MiniGridLayouts(task, 2_000_000, 16, holdout=8)  # what the offline-RL recipes score on
    assert len(evaluation.held_out) == 8 and all(evaluation.layout(s) in evaluation.held_out for s in evaluation.seeds)

    def layouts(path):
        return {layout_of(task, int(s)) for s in np.unique(load_trajectories(path)["layout_seeds"])}

    held = build_minigrid_video(tmp_path / "held", episodes=120, val_episodes=12, behaviour=behaviour,
                                formats=("npz",), holdout=LayoutHoldout(eval=8, val=6))
    train, val = layouts(tmp_path / "held" / held["splits"]["train"]["npz"]), \
        layouts(tmp_path / "held" / held["splits"]["val"]["npz"])
    assert not train & evaluation.held_out and not val & evaluation.held_out
    assert not train & val and len(val) == 6 and len(train) == held["splits"]["train"]["distinct_layouts"]
    assert len(train) == 42 - 8 - 6  # every other layout of the task, within 120 episodes
    assert len(held["held_out_layout_seeds"]["eval"]) == 8

    # the in-domain setting (nothing held out): the default video's 500 train seeds meet every evaluation layout
    from vispre.envs import layout_seed

    assert evaluation.held_out <= {layout_of(task, layout_seed("train", i)) for i in range(500)}
