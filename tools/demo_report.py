"""Print the demo encoder's probe scores beside the same probes at random init, with the gain.

    python tools/demo_report.py runs/demo/export demo_shapes demo_scenes [--data runs/demo/data]

Reads ``EXPORT/eval/NAME/results.json`` and ``EXPORT/eval/NAME-random-init/results.json`` (what
``vispre eval eval/NAME.yaml --encoder EXPORT [--random-init]`` writes), prints one table and writes
it to ``EXPORT/eval/demo_vs_random.json``. Chance levels come from the demo data's info.json: 1 / 10
for single-label top-1, and the held-out scenes' label base rate for multi-label mAP.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

# probe name -> (test split in the demo data, task)
PROBES = {"demo_shapes": ("shapes-test", "single"), "demo_scenes": ("scenes-val", "multi"),
          "demo_digits": ("digits-test", "single"), "demo_count": ("scenes-val", "count")}
HEADLINE = ("linear/top1", "linear/mAP", "map/top1", "map/mAP", "knn/k20/top1", "knn/k20/mAP")


def chance(info: dict | None, probe: str) -> dict[str, float]:
    """Chance level per metric kind, in %: top-1 of a uniform guess, mAP of a constant score."""
    if info is None or probe not in PROBES:
        return {}
    split, task = PROBES[probe]
    entry = info["splits"].get(split)
    if entry is None:
        return {}
    if task == "multi":  # a constant score's average precision is the label's base rate
        counts = entry["label_counts"]
        return {"mAP": 100.0 * sum(counts) / (entry["samples"] * len(counts))}
    if task == "count":
        return {"top1": 100.0 / 4}
    return {"top1": 100.0 / len(entry["label_counts"])}


def natural(key: str) -> list:
    """Sort key that puts fewshot/5shot before fewshot/10shot."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def load_scores(path: Path) -> dict[str, float] | None:
    try:
        return json.loads(path.read_text())["scores"]
    except (OSError, ValueError, KeyError):
        return None


def report(export: Path, probes: list[str], data: Path | None) -> list[dict]:
    info = None
    if data is not None and (data / "info.json").is_file():
        info = json.loads((data / "info.json").read_text())
    rows = []
    for probe in probes:
        trained = load_scores(export / "eval" / probe / "results.json")
        random = load_scores(export / "eval" / f"{probe}-random-init" / "results.json")
        if trained is None or random is None:
            rows.append({"probe": probe, "missing": True})
            continue
        levels = chance(info, probe)
        keys = [k for k in HEADLINE if k in trained and k in random]
        keys += sorted((k for k in trained if k in random and k not in keys and k.split("/")[-1] in ("top1", "mAP")),
                       key=natural)
        for key in keys:
            rows.append({"probe": probe, "metric": key, "pretrained": round(trained[key], 2),
                         "random_init": round(random[key], 2), "gain": round(trained[key] - random[key], 2),
                         "chance": None if key.split("/")[-1] not in levels
                         else round(levels[key.split("/")[-1]], 2)})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'probe':<13} {'metric':<22} {'pretrained':>10} {'random init':>11} {'gain':>7} {'chance':>7}"]
    for row in rows:
        if row.get("missing"):
            lines.append(f"{row['probe']:<13} (no results: run vispre eval with and without --random-init)")
            continue
        level = "" if row["chance"] is None else f"{row['chance']:.1f}"
        lines.append(f"{row['probe']:<13} {row['metric']:<22} {row['pretrained']:>10.1f} {row['random_init']:>11.1f} "
                     f"{row['gain']:>+7.1f} {level:>7}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export", type=Path, help="the exported encoder folder (vispre export)")
    parser.add_argument("probes", nargs="+", help="eval recipe names (eval/NAME.yaml), e.g. demo_shapes")
    parser.add_argument("--data", type=Path, default=None, help="the demo data folder (chance levels)")
    args = parser.parse_args(argv)
    rows = report(args.export, args.probes, args.data)
    print("demo encoder against the same architecture at random init (held-out test sets, %):")
    print(format_rows(rows))
    out = args.export / "eval" / "demo_vs_random.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"table: {out}")


if __name__ == "__main__":
    main()
