"""AB against its base on the CPU testbed (issue 13's experiment): every arm x seed pretrained on the demo data,
exported, probed (linear, MAP, decoder, kNN on digits, shapes and scenes) beside the random-init floor, and one
Markdown table of mean +- std over seeds with the AB preprint's numbers (Table 2: ImageNet, ViT-S/16) beside it.

    python tools/ab_vs_base.py                       # every arm, seeds 0 1 2, into runs/ab_vs_base
    python tools/ab_vs_base.py --arms simclr ab_simclr --seeds 0 1 2
    python tools/ab_vs_base.py --table-only          # rebuild TABLE.md from what has finished

Resumable: a finished pretrain (its last checkpoint), export or results.json is skipped; an interrupted pretrain
continues with --resume. Same budget for every arm: AB runs its base's recipe, optimizer steps and
annotation batch (= the base's batch, so the base loss sees the same images in the same order: AB draws its
annotation stream with data.seed + 1, so the AB arm gets data.seed = s and the base arm s + 1), plus its
bootstrap batch of other images (base // 8 images x 4 views a step), which is what AB adds. Note the paper
halves the annotation batch instead (base // 2) to hold the views seen fixed; here the base loss's images are
held fixed, as the issue asks ("same images seen").
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from vispre.evaluation.compare import columns, load_results  # noqa: E402

VENV_BIN = ROOT / ".venv" / "bin"
# arm -> (recipe, its base arm, overrides). The AB recipes' annotation batch is set to the base's batch.
ARMS = {
    "simclr": ("recipes/demo/simclr.yaml", None, []),
    "ab_simclr": ("recipes/demo/ab_simclr.yaml", "simclr", ["data.batch_size=128"]),
    "dino": ("recipes/demo/dino.yaml", None, []),
    "ab_dino": ("recipes/demo/ab_dino.yaml", "dino", ["data.batch_size=64"]),
}
LABEL = {"simclr": "SimCLR", "ab_simclr": "AB_SimCLR", "dino": "DINO", "ab_dino": "AB_DINO"}
# preprint Table 2 (ImageNet without labels, ViT-S/16, 800M views; top-1 on ImageNet): linear, MAP, decoder
PAPER = {"simclr": (67.0, 68.7, 70.0), "ab_simclr": (66.0, 69.6, 71.0),
         "dino": (68.5, 70.0, 72.2), "ab_dino": (68.0, 71.5, 73.6)}
# eval recipe -> (train split, test split) under the demo data folder
PROBE_SETS = {"demo_digits": ("digits-train", "digits-test"), "demo_shapes": ("shapes-train", "shapes-test"),
              "demo_scenes": ("scenes", "scenes-val")}
PROBES = ("linear", "map", "decoder", "knn k20")
VALUE_BINS = ("value_acc/iou=0", "value_acc/iou0.01-0.2", "value_acc/iou0.2-0.5", "value_acc/iou0.5-0.8",
              "value_acc/chance")


def run(cmd: list[str], log: Path) -> float:
    """Run one stage with its output in LOG; raise on failure. Returns its wall seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(cmd)}  > {log}", flush=True)
    with open(log, "a") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if rc != 0:
        raise SystemExit(f"failed (exit {rc}): {' '.join(cmd)}; see {log}")
    return time.time() - start


def finished(run_dir: Path) -> bool:
    cfg = run_dir / "config.yaml"
    if not cfg.is_file():
        return False
    steps = int(OmegaConf.load(cfg).train.steps)
    return (run_dir / "checkpoints" / f"checkpoint-{steps:08d}").is_dir()


def evaluate(export: Path, out: Path, data: Path, logs: Path, probe_sets: list[str], random_init: bool = False) -> None:
    for name in probe_sets:
        train, test = PROBE_SETS[name]
        dest = out / (name + ("-random-init" if random_init else ""))
        if (dest / "results.json").is_file():
            continue
        cmd = [str(VENV_BIN / "vispre"), "eval", f"eval/{name}.yaml", "--encoder", str(export), "--output", str(dest),
               f"train.path={data / train}", f"test.path={data / test}"]
        run(cmd + (["--random-init"] if random_init else []), logs / f"{export.name}.{dest.name}.eval.log")


def one_arm(arm: str, seed: int, args) -> None:
    recipe, base, extra = ARMS[arm]
    name = f"{arm}-s{seed}"
    run_dir, export, logs = args.out / name, args.out / f"{name}-export", args.out / "logs"
    if not finished(run_dir):
        data_seed = seed if base else seed + 1  # AB's annotation stream is data.seed + 1: the base's stream
        cmd = [str(VENV_BIN / "vispre"), "pretrain", recipe, *extra,
               f"data.spec={args.data / 'scenes'}::{args.data / 'digits-train'}", f"train.output_dir={run_dir}",
               f"train.seed={seed}", f"data.seed={data_seed}", f"train.threads={args.threads}"]
        if (run_dir / "checkpoints" / "latest").exists():
            cmd.append("--resume")
        elif run_dir.exists():
            cmd.append("--overwrite")
        seconds = run(cmd, logs / f"{name}.pretrain.log")
        (args.out / f"{name}.time.json").write_text(json.dumps({"pretrain_s": round(seconds, 1)}))
    if not (export / "config.json").is_file():
        run([str(VENV_BIN / "vispre"), "export", str(run_dir), str(export)], logs / f"{name}.export.log")
    evaluate(export, export / "eval", args.data, logs, args.probe_sets)
    floor = args.out / "random-init"
    if not all((floor / f"{n}-random-init" / "results.json").is_file() for n in args.probe_sets):
        with open(args.out / "random-init.lock", "w") as lock:  # two chains in parallel: one of them does it
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            evaluate(export, floor, args.data, logs, args.probe_sets, random_init=True)


# -- the table ------------------------------------------------------------------------------------------------

def mean_std(xs: list[float]) -> str:
    if not xs:
        return "not run"
    std = f" +- {statistics.stdev(xs):.1f}" if len(xs) > 1 else ""
    each = f" ({', '.join(f'{x:.1f}' for x in xs)})" if 1 < len(xs) <= 3 else ""  # few seeds: show each
    return f"{statistics.mean(xs):.1f}{std}{each} (n={len(xs)})"


def scores(out: Path, arm: str, seeds: list[int], probe_set: str) -> dict[int, dict[str, float]]:
    found = {}
    for s in seeds:
        path = out / f"{arm}-s{s}-export" / "eval" / probe_set / "results.json"
        if path.is_file():
            found[s] = columns(load_results(path))
    return found


def value_accuracy(out: Path, arm: str, seeds: list[int], last: int = 100) -> dict[str, list[float]]:
    """Per seed, the mean of the logged value accuracies over the last LAST steps, per IoU bin."""
    per_bin: dict[str, list[float]] = {k: [] for k in VALUE_BINS}
    for s in seeds:
        metrics = out / f"{arm}-s{s}" / "metrics.jsonl"
        if not finished(out / f"{arm}-s{s}") or not metrics.is_file():
            continue
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        end = max(r.get("step", 0) for r in rows)
        rows = [r for r in rows if r.get("step", 0) > end - last]
        for k in VALUE_BINS:
            vals = [r[k] for r in rows if r.get(k) is not None]
            if vals:
                per_bin[k].append(100 * statistics.mean(vals))
    return per_bin


def table(out: Path, seeds: list[int]) -> str:
    lines = []
    for ab, (_, base, _) in ((a, v) for a, v in ARMS.items() if v[1]):
        if not any(scores(out, arm, seeds, p) for arm in (base, ab) for p in PROBE_SETS):
            lines += [f"#### {LABEL[ab]} against {LABEL[base]}: not run", ""]
            continue
        lines += [f"#### {LABEL[ab]} against {LABEL[base]}", "",
                  f"| probe set | probe | random init | {LABEL[base]} | {LABEL[ab]} | {LABEL[ab]} - {LABEL[base]} "
                  f"(paired by seed) | paper {LABEL[base]}, ImageNet | paper {LABEL[ab]}, ImageNet |",
                  "|---|---|---|---|---|---|---|---|"]
        skipped = []
        for probe_set in PROBE_SETS:
            if not scores(out, base, seeds, probe_set) and not scores(out, ab, seeds, probe_set):
                skipped.append(probe_set)
                continue
            floor_path = out / "random-init" / f"{probe_set}-random-init" / "results.json"
            floor = columns(load_results(floor_path)) if floor_path.is_file() else {}
            b, a = scores(out, base, seeds, probe_set), scores(out, ab, seeds, probe_set)
            for probe in PROBES:
                diffs = [a[s][probe] - b[s][probe] for s in a if s in b and probe in a[s] and probe in b[s]]
                paper = ("", "")
                if probe in ("linear", "map", "decoder"):
                    i = ("linear", "map", "decoder").index(probe)
                    paper = (f"{PAPER[base][i]:.1f}", f"{PAPER[ab][i]:.1f}")
                floor_cell = f"{floor[probe]:.1f}" if probe in floor else "not run"
                lines.append(f"| {probe_set.removeprefix('demo_')} | {probe} | {floor_cell} | "
                             f"{mean_std([v[probe] for v in b.values() if probe in v])} | "
                             f"{mean_std([v[probe] for v in a.values() if probe in v])} | "
                             f"{mean_std(diffs).replace('(n=', '(pairs=') if diffs else 'not run'} | "
                             f"{paper[0]} | {paper[1]} |")
        if skipped:
            lines += ["", f"Not run for either arm: {', '.join(skipped)}."]
        acc = value_accuracy(out, ab, seeds)
        if any(acc.values()):
            lines += ["", f"{LABEL[ab]} value accuracy (%), mean of the logged values over the last 100 steps, "
                      "per IoU bin between source and target crop:", "",
                      "| IoU = 0 | (0.01, 0.2] | (0.2, 0.5] | (0.5, 0.8] | chance |", "|---|---|---|---|---|",
                      "| " + " | ".join(mean_std(acc[k]) for k in VALUE_BINS) + " |"]
        times = {arm: [json.loads(p.read_text())["pretrain_s"] for p in sorted(out.glob(f"{arm}-s*.time.json"))]
                 for arm in (base, ab)}
        lines += ["", "Pretrain wall seconds per seed (1 thread, shared machine): "
                  + "; ".join(f"{LABEL[k]} {', '.join(f'{t:.0f}' for t in v) or 'not run'}" for k, v in times.items()),
                  ""]
    head = ["Scores in % on the demo's held-out test sets (top-1; scenes: mAP, base rate 19.5); mean +- std "
            "over seeds. The paper's columns are ImageNet top-1 of ViT-S/16 after 800M views "
            "(preprint Table 2), not the demo's tasks: compare signs, not levels. 'not run': did not finish.", ""]
    return "\n".join(head + lines)


def parse_run(text: str) -> tuple[str, int]:
    arm, _, seed = text.rpartition("-s")
    if arm not in ARMS or not seed.isdigit():
        raise SystemExit(f"--runs: {text!r} is not ARM-sSEED with ARM one of {', '.join(ARMS)}")
    return arm, int(seed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs", nargs="+", metavar="ARM-sSEED",
                   help="exactly these runs, in this order (e.g. ab_simclr-s1 simclr-s1), instead of --arms x --seeds: "
                        "two such lists with no run in common can go in parallel")
    p.add_argument("--probe-sets", nargs="+", default=list(PROBE_SETS), choices=list(PROBE_SETS))
    p.add_argument("--data", type=Path, default=Path("runs/demo/data"), help="demo data (built when missing)")
    p.add_argument("--out", type=Path, default=Path("runs/ab_vs_base"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        if not (args.data / "info.json").is_file():
            run([sys.executable, "tools/make_demo_data.py", str(args.data)], args.out / "logs" / "data.log")
        # seed-major: a partial run still has both arms of its first seeds
        runs = [(a, s) for s in args.seeds for a in args.arms] if not args.runs else [parse_run(r) for r in args.runs]
        for arm, seed in runs:
            one_arm(arm, seed, args)
    text = table(args.out, sorted(set(args.seeds) | {0, 1, 2}))
    (args.out / "TABLE.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
