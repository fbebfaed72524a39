"""Epochs, mixing, determinism and exact resume of the shard stream (one process)."""

import itertools

import pytest

from tests.shards import make_image_shards
from vispre.data import CropGroup, DataConfig, build_loader


def cfg(spec, **kw):
    base = dict(spec=str(spec), format="labelled", eval_size=16, batch_size=4, workers=0, shuffle_buffer=10,
                resampled=False)
    base.update(kw)
    return DataConfig(**base)


def keys_of(batches):
    return [k for b in batches for k, v in zip(b["__key__"], b["valid"]) if v]


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_finite_epoch_sees_every_sample_once(image_shards, workers):
    directory, keys = image_shards
    loader = build_loader(cfg(directory, workers=workers))
    for epoch in range(2):
        batches = list(loader)
        seen = keys_of(batches)
        assert sorted(seen) == sorted(keys)  # exactly once: no loss, no repeat
        assert len(batches) == len(loader) == loader.target_batches(epoch)
    assert loader.epoch == 2


def test_epochs_are_shuffled_deterministically(image_shards):
    directory, _ = image_shards
    a, b = build_loader(cfg(directory, seed=1)), build_loader(cfg(directory, seed=1))
    epoch0, epoch1 = keys_of(a), keys_of(a)
    assert epoch0 == keys_of(b)  # same seed, same order
    assert epoch0 != epoch1  # a new epoch reshuffles
    assert keys_of(build_loader(cfg(directory, seed=2))) != epoch0


@pytest.mark.parametrize("workers", [0, 2])
def test_resampled_epoch_has_fixed_length(image_shards, workers):
    directory, keys = image_shards
    loader = build_loader(cfg(directory, workers=workers, resampled=True, samples_per_epoch=50))
    batches = list(loader)
    # ceil(50 / (4 * slots)) full batches per slot
    slots = max(workers, 1)
    assert len(batches) == len(loader) == slots * -(-50 // (4 * slots))
    assert all(len(b["__key__"]) == 4 for b in batches)
    assert set(keys_of(batches)) <= set(keys)


def test_mixing_weights(tmp_path):
    a, _ = make_image_shards(tmp_path / "a", [20] * 4, prefix="a")
    b, _ = make_image_shards(tmp_path / "b", [20] * 4, prefix="b")
    spec = f"{a}/a-{{00000..00003}}.tar::{b}/b-{{00000..00003}}.tar"
    loader = build_loader(cfg(spec, resampled=True, samples_per_epoch=2000, weights=[3.0, 1.0], batch_size=50,
                              shuffle_buffer=0))
    seen = keys_of(list(loader))
    share = sum(k.startswith("a") for k in seen) / len(seen)
    assert len(seen) == 2000
    assert abs(share - 0.75) < 0.04  # binomial sd is 0.01


def test_weights_need_resampling(image_shards):
    with pytest.raises(ValueError, match="resampled"):
        build_loader(cfg(f"{image_shards[0]}::{image_shards[0]}", weights=[1.0, 2.0]))


def test_too_few_shards_is_a_clear_error(tmp_path):
    directory, _ = make_image_shards(tmp_path, [5, 5])
    with pytest.raises(ValueError, match=r"2 shards cannot feed 1 ranks x 3 workers"):
        build_loader(cfg(directory, workers=3))


def interrupted(config, stop_after, epochs=1):
    """Take ``stop_after`` batches, save the state, resume in a fresh loader; return both parts' keys."""
    first = build_loader(config)
    head = list(itertools.islice(iter(first), stop_after))
    state = first.state_dict()
    second = build_loader(config)
    second.load_state_dict(state)
    tail = list(second)
    return keys_of(head), keys_of(tail), second


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("resampled", [False, True])
def test_resume_mid_epoch_continues_exactly(image_shards, workers, resampled):
    directory, keys = image_shards
    config = cfg(directory, workers=workers, resampled=resampled, samples_per_epoch=64)
    full = keys_of(build_loader(config))
    head, tail, resumed = interrupted(config, stop_after=5)
    assert head + tail == full  # same order, nothing lost or repeated
    if not resampled:
        assert sorted(head + tail) == sorted(keys)
    assert resumed.epoch == 1


def test_resume_keeps_random_views_identical(image_shards):
    directory, _ = image_shards
    config = cfg(directory, format="image", eval_size=None, views=[CropGroup(2, 16)], workers=2)
    whole = list(build_loader(config))
    first = build_loader(config)
    head = list(itertools.islice(iter(first), 3))
    second = build_loader(config)
    second.load_state_dict(first.state_dict())
    resumed = head + list(second)
    assert len(resumed) == len(whole)
    for a, b in zip(whole, resumed):
        assert a["__key__"] == b["__key__"]
        assert (a["boxes"] == b["boxes"]).all() and (a["views"][0] == b["views"][0]).all()


def test_resume_with_another_layout_is_refused(image_shards):
    directory, _ = image_shards
    state = build_loader(cfg(directory, workers=2)).state_dict()
    with pytest.raises(ValueError, match="workers: saved 2, now 1"):
        build_loader(cfg(directory, workers=1)).load_state_dict(state)
