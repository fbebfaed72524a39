"""ICVF on the embedded MiniGrid video, measured: ``python tools/icvf_minigrid_report.py``.

1. builds the video if needed (``vispre.envs.build_minigrid_video``, the defaults of
   tools/make_minigrid_video.py) under ``--data``, in one of two settings (``--setting``):
   * ``held_out`` (default): the 8 offline-RL evaluation layouts and 8 validation layouts are kept out of
     the train split by layout identity (``vispre.envs.layouts``): generalisation to unseen layouts;
   * ``in_domain``: nothing is held out, the video contains every evaluation layout (the ICVF paper's
     passive in-domain video); the val split's layouts then also occur in training;
2. pretrains with ``--recipe`` (recipes/minigrid/icvf.yaml) unless ``--skip-train``, timing it;
3. measures, on the ``-val`` split's frames (other episodes; other layouts in the held-out setting):
   * Spearman's rank correlation of V(s, g, g) (target network, ensemble mean) with minus the
     true shortest-path distance from s's state to g's state (BFS over (x, y, heading, ...)),
     for random (s, g) frame pairs of one episode, and for pairs with g later than s;
   * linear probes (ridge regression, alpha chosen on a held-out part of the training frames)
     predicting each frame's shortest-path distance to the task's goal from phi(s), from the heads'
     input (the grid-pooled map with ``features: grid``) and from timm's pooled feature, against the
     same probes on the randomly initialised network the run started from (same seed and
     architecture): R^2, MAE and Spearman on the val frames.

Prints one JSON report and writes it to RUN/icvf_report.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from vispre.data.trajectories import load_trajectories
from vispre.envs import Behaviour, Oracle, build_minigrid_video, get_task, make_env, reset
from vispre.envs.layouts import LayoutHoldout
from vispre.methods import build_method
from vispre.models import build_encoder
from vispre.pretrain.checkpoint import find_checkpoint, load_checkpoint
from vispre.pretrain.recipe import PretrainConfig, load_recipe
from vispre.utils.diagnostics import spearman
from vispre.utils.typed_config import load_config

ROOT = Path(__file__).resolve().parents[1]
# the two settings of issue 15: a video without the evaluation (and validation) layouts, and one with them
SETTINGS = {"held_out": LayoutHoldout(eval=8, val=8), "in_domain": LayoutHoldout()}


# -- networks -------------------------------------------------------------------------------------------
def load_run(run: Path):
    """The method of a run's newest checkpoint (weights loaded) and its resolved recipe."""
    checkpoint = find_checkpoint(run / "checkpoints")
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint under {run / 'checkpoints'}: train first (drop --skip-train)")
    state = json.loads((checkpoint / "state.json").read_text())
    from omegaconf import OmegaConf

    cfg = load_config(PretrainConfig, **OmegaConf.to_container(OmegaConf.create(state["config"])))
    method = build_method(cfg.method, build_encoder(cfg.model.name, **cfg.model.kwargs))
    load_checkpoint(checkpoint, method)
    return method.eval(), cfg, state["step"]


def initial_method(cfg: PretrainConfig):
    """The network the run started from: built under the trainer's seed, before any update."""
    torch.manual_seed(cfg.train.seed)
    return build_method(cfg.method, build_encoder(cfg.model.name, **cfg.model.kwargs)).eval()


@torch.no_grad()
def features(method, frames: np.ndarray, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target network, uint8 [N, H, W, 3] frames: what the heads read (the grid-pooled map or the pooled
    feature), phi, and timm's own pooled feature (what ``Encoder(x).pooled`` gives a downstream user)."""
    net = method.net("target")
    feats, pooled = [], []
    for i in range(0, len(frames), batch):
        images = method.prepare(torch.from_numpy(frames[i:i + batch]).permute(0, 3, 1, 2))
        feats.append(method.encode(net, images))
        pooled.append(net["encoder"](images).pooled)
    feats = torch.cat(feats)
    return feats, net["value"].phi(feats), torch.cat(pooled)


@torch.no_grad()
def values(method, feats: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """V(s_i, s_j, s_j): the value of frame i for reaching frame j (ensemble mean)."""
    return method.net("target")["value"](feats[i], feats[j], feats[j]).mean(0)


# -- ground truth ---------------------------------------------------------------------------------------
def states(arrays: dict) -> np.ndarray:
    """(x, y, heading, carrying, door_open) per row."""
    return np.column_stack([arrays["positions"], arrays["directions"], arrays["carrying"], arrays["door_open"]])


def episode_pairs(arrays: dict, task: str, pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random (i, j) row pairs inside one episode (i != j) and the exact state distance i -> j."""
    rng = np.random.default_rng(seed)
    ends = np.flatnonzero(arrays["terminals"])
    starts = np.concatenate([[0], ends[:-1] + 1])
    st, env, task_ = states(arrays), make_env(get_task(task)), get_task(task)
    per_episode = max(1, pairs // len(ends))
    out_i, out_j, out_d = [], [], []
    for start, end in zip(starts, ends):
        oracle = Oracle(reset(env, int(arrays["layout_seeds"][start])), task_.actions)
        i = rng.integers(start, end + 1, per_episode)
        j = rng.integers(start, end + 1, per_episode)
        keep = i != j
        i, j = i[keep], j[keep]
        for a in np.unique(i):
            dist = oracle.state_distances(tuple(st[a]))
            for b in j[i == a]:
                d = dist.get(tuple(st[b]))
                if d is not None:  # unreachable pairs (DoorKey, door opened) are left out
                    out_i.append(a)
                    out_j.append(b)
                    out_d.append(d)
    return np.asarray(out_i), np.asarray(out_j), np.asarray(out_d, np.float32)


# -- linear probe ---------------------------------------------------------------------------------------
def ridge(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """argmin_w |[x, 1] w - y|^2 + alpha |w|^2 (bias not penalised), in float64."""
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean()
    xc = x - mx
    w = torch.linalg.solve(xc.T @ xc + alpha * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ (y - my))
    return w, my - mx @ w


def probe(train_x, train_y, test_x, test_y, alphas=(1e-2, 1e-1, 1, 10, 100, 1000)) -> dict:
    """Ridge on standardised features; alpha picked on the last 20% of the training rows, then refit."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    tx, vx = (train_x - mean) / std, (test_x - mean) / std
    cut = int(0.8 * len(tx))

    def mse(alpha):
        w, b = ridge(tx[:cut], train_y[:cut], alpha)
        return float(((tx[cut:].double() @ w + b - train_y[cut:]) ** 2).mean())

    alpha = min(alphas, key=mse)
    w, b = ridge(tx, train_y, alpha)
    pred = (vx.double() @ w + b).float()
    r2 = 1 - float(((pred - test_y) ** 2).sum() / ((test_y - test_y.mean()) ** 2).sum())
    return {"r2": round(r2, 4), "mae": round(float((pred - test_y).abs().mean()), 3),
            "spearman": round(spearman(pred, test_y), 4), "alpha": alpha}


# -- the report -----------------------------------------------------------------------------------------
def measure(method, train: dict, val: dict, pairs: tuple, probe_rows: np.ndarray) -> dict:
    i, j, d = pairs
    val_feats, val_phi, val_pooled = features(method, val["observations"])
    v = values(method, val_feats, torch.from_numpy(i), torch.from_numpy(j))
    future = torch.from_numpy(j > i)
    train_feats, train_phi, train_pooled = features(method, train["observations"][probe_rows])
    y_train = torch.from_numpy(train["distances"][probe_rows]).float()
    y_val = torch.from_numpy(val["distances"]).float()
    return {"spearman_v_vs_minus_distance": round(spearman(v, -torch.from_numpy(d)), 4),
            "spearman_future_pairs": round(spearman(v[future], -torch.from_numpy(d)[future]), 4),
            "probe_phi": probe(train_phi, y_train, val_phi, y_val),
            "probe_head_input": probe(train_feats, y_train, val_feats, y_val),
            "probe_pooled": probe(train_pooled, y_train, val_pooled, y_val)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "minigrid" / "icvf.yaml"))
    parser.add_argument("--setting", choices=SETTINGS, default="held_out",
                        help="held_out: evaluation and validation layouts kept out of the video; in_domain: not")
    parser.add_argument("--data", default=None, help="the video (built here if missing; default "
                                                    "runs/minigrid/video-SETTING)")
    parser.add_argument("--skip-train", action="store_true", help="measure the run already in train.output_dir")
    parser.add_argument("--pairs", type=int, default=5000, help="held-out (s, g) pairs for the Spearman")
    parser.add_argument("--probe-frames", type=int, default=10000, help="training frames for the probes")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    data = Path(args.data or f"runs/minigrid/video-{args.setting}")
    info = build_minigrid_video(data, behaviour=Behaviour(), holdout=SETTINGS[args.setting])  # reused when up to date
    name = f"{info['params']['task']}-{info['params']['behaviour']['kind']}"
    cfg = load_recipe(args.recipe, args.overrides)
    spec = data / f"{name}.npz" if cfg.data.format == "trajectories" else data / "clips"
    cfg = load_recipe(args.recipe, [f"data.spec={spec}", *args.overrides])
    if not any(o.startswith("train.output_dir=") for o in args.overrides):  # one run per setting
        cfg.train.output_dir = f"{cfg.train.output_dir}-{args.setting}"
    run = Path(cfg.train.output_dir)
    wall = None
    if not args.skip_train:
        from vispre.pretrain.loop import Trainer

        start = time.perf_counter()
        Trainer(cfg).fit(overwrite=True)  # the report trains afresh (--skip-train measures what is there)
        wall = round(time.perf_counter() - start, 1)
    method, cfg, step = load_run(run)
    task = info["params"]["task"]
    train, val = load_trajectories(data / f"{name}.npz"), load_trajectories(data / f"{name}-val.npz")
    pairs = episode_pairs(val, task, args.pairs)
    rows = np.sort(np.random.default_rng(0).permutation(len(train["observations"]))[:args.probe_frames])
    report = {"recipe": args.recipe, "setting": args.setting, "holdout": info["params"]["holdout"],
              "train_layouts": info["splits"]["train"]["distinct_layouts"],
              "val_layouts": info["splits"]["val"]["distinct_layouts"],
              "run": str(run), "steps": step, "train_wall_seconds": wall,
              "val_frames": len(val["observations"]), "pairs": len(pairs[0]),
              "icvf": measure(method, train, val, pairs, rows),
              "random_init": measure(initial_method(cfg), train, val, pairs, rows)}
    text = json.dumps(report, indent=1)
    (run / "icvf_report.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
