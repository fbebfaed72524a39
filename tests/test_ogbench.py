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
