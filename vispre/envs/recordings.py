"""MiniGrid rollouts on disk: OGBench-layout ``.npz`` trajectories and vispre ``clip`` shards.

``build_minigrid_video(out_dir, ...)`` writes, offline and deterministically from its seeds::

    {task}-{behaviour}.npz       train split, OGBench layout (below)
    {task}-{behaviour}-val.npz   validation split: other layout seeds, other episode seeds
    clips/, clips-val/           the same episodes as ``clip`` samples (one clip per episode)
    info.json                    parameters and counts, written last (marks a complete build);
                                 a build with the same parameters is reused

``.npz`` keys (N rows = frames, episodes concatenated; see ``vispre.envs.rollouts`` for what a
row holds): ``observations`` uint8 [N, 64, 64, 3], ``actions`` int64 (MiniGrid action ids),
``rewards`` float32 (1 on the row whose action reaches the goal), ``masks`` float32 (0 only
there), ``terminals`` float32 (1 on the last row of every episode), and the extras
``positions`` [N, 2], ``directions`` [N], ``carrying`` [N], ``door_open`` [N],
``goal_positions`` [N, 2], ``layout_seeds`` [N], ``distances`` [N] (shortest-path length to the
goal), all int64. Arrays are zip-compressed (MiniGrid frames shrink ~50x).

Clip samples: ``KEY.000.png, KEY.001.png, ...`` and ``KEY.json`` with ``task``, ``layout_seed``,
``goal``, per-frame ``positions``, ``directions``, ``carrying``, ``door_open``, ``distances``,
``actions``, and ``success``. Frames are PNG, not JPEG: the agent is a 7 px triangle on flat
colours, JPEG's 8x8 blocks smear it (and make equal states give different pixels), while PNG is
exact and, on these flat frames, smaller than JPEG at quality 90.

Layout seeds are disjoint per split (``layout_seed``), so held-out layouts are fixed by seed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.formats import frame_ext
from ..data.shard_writer import ShardWriter
from ..utils.io import atomic_output, write_json
from ..utils.progress import progress
from .layouts import LayoutHoldout, distinct_layouts, layout_of
from .minigrid import get_task
from .rollouts import Behaviour, Episode, Roller

log = logging.getLogger(__name__)

VERSION = 2  # bump when the generator changes so old builds are not reused
SPLITS = {"train": 0, "val": 1, "test": 2}  # test: evaluation layouts for downstream agents
INFO_FILE = "info.json"
EXTRAS = ("positions", "directions", "carrying", "door_open", "goal_positions", "layout_seeds", "distances")


def layout_seed(split: str, index: int, seed: int = 0) -> int:
    """The MiniGrid reset seed of layout ``index`` of ``split``: disjoint ranges per split and seed."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return (seed * len(SPLITS) + SPLITS[split]) * 1_000_000 + index


def episodes(task: str, split: str, count: int, behaviour: Behaviour, *, seed: int = 0,
             episodes_per_layout: int = 1, holdout: LayoutHoldout = LayoutHoldout()):
    """Yield ``count`` episodes of ``split``; episode i uses the (i // episodes_per_layout)-th reset seed of the
    split that ``holdout`` allows (every seed when nothing is held out)."""
    roller = Roller(get_task(task), behaviour)
    seeds = holdout.seeds(task, split, layout_seed(split, 0, seed), layout_seed("val", 0, seed))
    layout = None
    for i in range(count):
        if i % episodes_per_layout == 0:
            layout = next(seeds)
        rng = np.random.default_rng([seed, SPLITS[split], i])
        yield roller.episode(layout, rng)


# -- writers ------------------------------------------------------------------------------------------
def to_arrays(eps: list[Episode]) -> dict[str, np.ndarray]:
    """Episodes -> the OGBench-layout arrays (see the module docstring)."""
    cat = np.concatenate
    return {
        "observations": cat([e.frames for e in eps]),
        "actions": cat([e.actions for e in eps]),
        "rewards": cat([e.rewards for e in eps]),
        "masks": cat([e.masks for e in eps]),
        "terminals": cat([e.terminals for e in eps]),
        "positions": cat([e.states[:, :2] for e in eps]),
        "directions": cat([e.states[:, 2] for e in eps]),
        "carrying": cat([e.states[:, 3] for e in eps]),
        "door_open": cat([e.states[:, 4] for e in eps]),
        "goal_positions": cat([np.tile(np.asarray(e.goal, np.int64), (len(e), 1)) for e in eps]),
        "layout_seeds": cat([np.full(len(e), e.layout_seed, np.int64) for e in eps]),
        "distances": cat([e.distances for e in eps]),
    }


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def clip_sample(key: str, task: str, index: int, episode: Episode) -> dict:
    """One episode as a ``clip`` sample (frames as lossless PNG, states in the json)."""
    s = episode.states
    meta = {"task": task, "episode": index, "layout_seed": episode.layout_seed, "goal": list(episode.goal),
            "positions": s[:, :2].tolist(), "directions": s[:, 2].tolist(), "carrying": s[:, 3].tolist(),
            "door_open": s[:, 4].tolist(), "distances": episode.distances.tolist(),
            "actions": episode.actions.tolist(), "success": episode.success}
    sample = {"__key__": key, "json": json.dumps(meta, separators=(",", ":")).encode()}
    sample.update({frame_ext(t, "png"): png(f) for t, f in enumerate(episode.frames)})
    return sample


def write_split(out: Path, task: str, split: str, count: int, behaviour: Behaviour, *, seed: int,
                episodes_per_layout: int, clips_per_shard: int, formats: tuple[str, ...],
                holdout: LayoutHoldout = LayoutHoldout()) -> dict:
    """Roll out one split and write it in ``formats`` ("npz", "clips"); return its counts."""
    name = f"{task}-{behaviour.kind}" + ("" if split == "train" else f"-{split}")
    collected: list[Episode] = []
    writer = ShardWriter(out / ("clips" if split == "train" else f"clips-{split}"), prefix=split,
                         samples_per_shard=clips_per_shard) if "clips" in formats else None
    frames = successes = 0
    layouts = set()
    stream = episodes(task, split, count, behaviour, seed=seed, episodes_per_layout=episodes_per_layout,
                      holdout=holdout)
    for i, episode in enumerate(progress(stream, total=count, desc=name, unit="episode")):
        layouts.add(episode.layout_seed)
        frames, successes = frames + len(episode), successes + episode.success
        if writer is not None:
            writer.write(clip_sample(f"{task}-{split}-{i:06d}", task, i, episode))
        if "npz" in formats:
            collected.append(episode)
    sizes = writer.close() if writer is not None else {}
    if collected:
        save_npz(out / f"{name}.npz", to_arrays(collected))
    distinct = {layout_of(task, s) for s in layouts}
    return {"episodes": count, "frames": frames, "successes": successes, "distinct_layouts": len(distinct),
            "npz": f"{name}.npz" if collected else None, "clip_shards": sorted(sizes)}


def build_minigrid_video(out_dir, *, task: str = "simple_crossing", episodes: int = 500, val_episodes: int = 50,
                         behaviour: Behaviour | None = None, seed: int = 0, episodes_per_layout: int = 1,
                         clips_per_shard: int = 64, formats: tuple[str, ...] = ("npz", "clips"),
                         holdout: LayoutHoldout = LayoutHoldout(), force: bool = False) -> dict:
    """Build (or reuse) the MiniGrid "video" under ``out_dir``; return info.json's content. ``holdout``: the
    evaluation / validation layouts the train split must not contain (``vispre.envs.layouts``)."""
    behaviour = behaviour or Behaviour()
    get_task(task)
    if unknown := set(formats) - {"npz", "clips"}:
        raise ValueError(f"formats must be among 'npz', 'clips'; got {sorted(unknown)}")
    out = Path(out_dir)
    params = {"version": VERSION, "task": task, "episodes": episodes, "val_episodes": val_episodes,
              "behaviour": {**asdict(behaviour), "epsilons": list(behaviour.epsilons)}, "seed": seed,
              "episodes_per_layout": episodes_per_layout, "clips_per_shard": clips_per_shard,
              "formats": sorted(formats), "holdout": asdict(holdout)}
    info_path = out / INFO_FILE
    if not force and info_path.exists():
        existing = json.loads(info_path.read_text())
        if existing.get("params") == params:
            log.info("MiniGrid video in %s is up to date; reusing it", out)
            return {**existing, "reused": True}
    start = time.perf_counter()
    info_path.unlink(missing_ok=True)
    for old in ("clips", "clips-val"):
        shutil.rmtree(out / old, ignore_errors=True)  # sizes.json merges: stale shards would stay
    out.mkdir(parents=True, exist_ok=True)
    splits = {split: write_split(out, task, split, n, behaviour, seed=seed, episodes_per_layout=episodes_per_layout,
                                 clips_per_shard=clips_per_shard, formats=tuple(formats), holdout=holdout)
              for split, n in (("train", episodes), ("val", val_episodes))}
    held = {name: sorted(seed_ for seed_, layout in distinct_layouts(task, first, count, exclude))
            for name, first, count, exclude in (
                ("eval", holdout.eval_seed, holdout.eval, frozenset()),
                ("val", layout_seed("val", 0, seed), holdout.val, holdout.sets(task, layout_seed("val", 0, seed))[0]))}
    info = {"params": params, "splits": splits, "seconds": round(time.perf_counter() - start, 1),
            "layout_seeds": {s: layout_seed(s, 0, seed) for s in SPLITS}, "held_out_layout_seeds": held}
    write_json(info_path, info)
    log.info("built MiniGrid video in %s in %.1f s: %s", out, info["seconds"],
             {k: v["frames"] for k, v in splits.items()})
    return {**info, "reused": False}
