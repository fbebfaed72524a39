"""Side-by-side table of pretraining runs from their ``metrics.jsonl`` (e.g. AB_DINO against DINO).

    python tools/compare_runs.py runs/exp/dino runs/exp/ab_dino --last 5

Each column averages the last ``--last`` logged rows of a run (the logged rows are themselves
averages over ``train.log_every`` steps). Rows: the accuracy of predicting the target network's
annotation argmax for another crop, by IoU between the two crops. For a base method that is
``crop_acc`` (p(l | x1) against p_target(l | x2), no action); AB adds ``value_acc``
(Q(l | x1, a_{1->2}) against the same target). ``value_acc/chance`` always predicts the most
frequent target annotation of the batch. Diagnostics (srank, RankMe) come from the last row that
has them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PREFIXES = ("crop_acc/", "value_acc/")
SINGLE = ("loss", "td_loss", "dino_loss", "teacher_entropy", "classifier_acc", "samples_per_s")
LAST_ONLY = ("srank", "rankme")


def read(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        raise SystemExit(f"{path}: no metrics.jsonl (is {run} a vispre pretrain output_dir?)")
    rows = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row  # a resumed run logs some steps again: the later row wins
    return [rows[s] for s in sorted(rows)]


def summarise(rows: list[dict], last: int) -> dict:
    tail = rows[-last:]
    keys = {k for r in tail for k in r if k.startswith(PREFIXES) or k in SINGLE}
    out = {k: sum(r[k] for r in tail if k in r) / sum(k in r for r in tail) for k in keys}
    for k in LAST_ONLY:
        with_k = [r[k] for r in rows if k in r]
        if with_k:
            out[k] = with_k[-1]
    out["step"] = rows[-1]["step"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--last", type=int, default=5, help="logged rows averaged per run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = parser.parse_args()
    summaries = {str(run): summarise(read(run), args.last) for run in args.runs}
    if args.json:
        print(json.dumps(summaries, indent=1))
        return
    order = sorted({k for s in summaries.values() for k in s},
                   key=lambda k: (not k.startswith(PREFIXES), k.split("/")[0], k))
    print("| metric | " + " | ".join(Path(r).name for r in summaries) + " |")
    print("|---|" + "---|" * len(summaries))
    for k in order:
        cells = [summaries[r].get(k) for r in summaries]
        print(f"| {k} | " + " | ".join("" if c is None else f"{c:.3g}" for c in cells) + " |")


if __name__ == "__main__":
    main()
