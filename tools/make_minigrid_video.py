"""Build the embedded MiniGrid "video" (offline, deterministic): ``python tools/make_minigrid_video.py OUT_DIR``.

Noisy shortest-path rollouts rendered as full-grid 64x64 RGB frames, written as OGBench-layout
``.npz`` (train and ``-val``) and as ``clip`` shards (``clips/``, ``clips-val/``) with the true
positions and shortest-path distances in the metadata. Thin wrapper over
``vispre.envs.build_minigrid_video``; an up-to-date OUT_DIR is reused. ``--holdout-eval 8 --holdout-val 8``
keeps the offline-RL evaluation layouts and the validation layouts out of the train split (by layout identity,
``vispre.envs.layouts``); without them the video is the in-domain setting and contains every evaluation
layout. The default (SimpleCrossing 9x9, 500 + 50 episodes of play, ~48k frames) takes about a minute on one
core.
"""

from __future__ import annotations

import argparse
import json
import logging

from vispre.envs import TASKS, Behaviour, build_minigrid_video
from vispre.envs.layouts import LayoutHoldout


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build the embedded MiniGrid video (offline).")
    parser.add_argument("out_dir", help="output: TASK-BEHAVIOUR.npz, TASK-BEHAVIOUR-val.npz, clips/, clips-val/")
    parser.add_argument("--task", default="simple_crossing", choices=sorted(TASKS))
    parser.add_argument("--episodes", type=int, default=500, help="training episodes (default 500)")
    parser.add_argument("--val-episodes", type=int, default=50, help="validation episodes on held-out layouts")
    parser.add_argument("--behaviour", default="play", choices=("play", "noisy"),
                        help="play: oracle to random sub-goals; noisy: oracle to the goal (default play)")
    parser.add_argument("--epsilon", type=float, nargs="+", default=[0.2],
                        help="per-episode noise levels, one drawn per episode (default 0.2)")
    parser.add_argument("--max-steps", type=int, default=100, help="episode length limit (default 100)")
    parser.add_argument("--env-start", action="store_true", help="start where the environment puts the agent "
                        "(default: a random reachable cell and heading)")
    parser.add_argument("--episodes-per-layout", type=int, default=1)
    parser.add_argument("--formats", nargs="+", default=["npz", "clips"], choices=("npz", "clips"))
    parser.add_argument("--holdout-eval", type=int, default=0, metavar="N",
                        help="keep the first N distinct evaluation layouts (the offline-RL recipes' held-out "
                             "layouts) out of the video (default 0: the in-domain setting)")
    parser.add_argument("--holdout-val", type=int, default=0, metavar="N",
                        help="the val split uses N layouts of its own, none of them in the train split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT_DIR is up to date")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    behaviour = Behaviour(args.behaviour, tuple(args.epsilon), args.max_steps, random_start=not args.env_start)
    info = build_minigrid_video(args.out_dir, task=args.task, episodes=args.episodes, val_episodes=args.val_episodes,
                                behaviour=behaviour, seed=args.seed, episodes_per_layout=args.episodes_per_layout,
                                formats=tuple(args.formats), force=args.force,
                                holdout=LayoutHoldout(eval=args.holdout_eval, val=args.holdout_val))
    print(json.dumps({k: info[k] for k in ("params", "splits", "seconds", "reused")}, indent=1))


if __name__ == "__main__":
    main()
