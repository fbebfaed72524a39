"""Make an OGBench-layout dataset locally with OGBench's own environments and oracles.

    MUJOCO_GL=egl python tools/make_ogbench_dataset.py visual-cube-single-play-v0 --out data/ogbench \\
        --episodes 100 --render-quality lean --workers 2

writes ``OUT/NAME.npz``, ``OUT/NAME-val.npz`` (episodes // 10 more episodes) and ``OUT/NAME.json`` (the
metadata: spec, render quality, OGBench and MuJoCo versions, time). The protocol is OGBench's
(``vispre.envs.ogbench_data``): play = plan oracle, noisy = Markov oracle with Gaussian noise, episodes
of 1001 steps. An interrupted run resumes from its chunks (``OUT/.parts/NAME``). Load the result with
``ogbench.make_env_and_datasets(NAME, dataset_path=OUT/NAME.npz)`` or ``vispre.data.ogbench_npz``.

OGBench's full size is 1000 episodes (~1M steps): about 25 min for cube-single states on one core, but
days for pixels at the default rendering (~165 ms a frame); ``--render-quality lean`` (~38 ms) and fewer
episodes make pixel datasets that fit a CPU machine.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")

from vispre.envs.ogbench_data import RENDER_QUALITIES, generate, spec_from_name  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Make an OGBench-layout dataset with OGBench's environments and oracles.")
    p.add_argument("dataset", help="OGBench dataset name: cube-single-play-v0, visual-cube-single-noisy-v0, "
                   "scene-play-v0, puzzle-3x3-play-v0, ...")
    p.add_argument("--out", default="data/ogbench", help="output folder (default data/ogbench)")
    p.add_argument("--episodes", type=int, default=1000, help="training episodes (OGBench: 1000); val: a tenth more")
    p.add_argument("--episode-steps", type=int, default=1001, help="steps per episode (OGBench: 1001)")
    p.add_argument("--render-quality", default="default", choices=RENDER_QUALITIES,
                   help="pixels: default = OGBench's rendering; lean = no shadows, reflections or multisampling "
                        "(~4x faster on CPU; recorded in the metadata)")
    p.add_argument("--noise", type=float, default=0.1, help="oracle action noise (OGBench: 0.1)")
    p.add_argument("--p-random-action", type=float, default=-1.0,
                   help="probability of a random action (default: OGBench's, 0 for play, 0.1 / 0.2 puzzle for noisy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes (one MuJoCo env each)")
    p.add_argument("--chunk-episodes", type=int, default=5, help="episodes per resumable chunk")
    p.add_argument("--compress", action="store_true", help="np.savez_compressed as OGBench ships its files "
                   "(vispre memory-maps stored files; compressed ones need data.cache_dir)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    spec = spec_from_name(a.dataset, episodes=a.episodes, episode_steps=a.episode_steps, noise=a.noise,
                          p_random_action=a.p_random_action, seed=a.seed, render_quality=a.render_quality)
    meta = generate(spec, a.out, chunk_episodes=a.chunk_episodes, workers=a.workers, compress=a.compress,
                    progress=not a.quiet)
    print(json.dumps({k: meta[k] for k in ("dataset", "train_rows", "val_rows", "render_quality", "seconds",
                                           "steps_per_second")}))
    return meta


if __name__ == "__main__":
    main()
