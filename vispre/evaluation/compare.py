"""``vispre eval compare RESULTS...``: one table (Markdown + CSV) and one chart across encoders and runs.

Each argument is a ``results.json``, an export's ``scores.json`` (what ``--append-to-card`` collected), or a
folder holding one of them (results.json first). A row is one (encoder, eval): probe recipes give the
headline metric of every probe they ran (linear, MAP, decoder, kNN at its reported k, few-shot) plus the
chance level; zero-shot and retrieval recipes their scores (top1, i2t_r@1, ...); an offline-RL comparison
one row per arm (success rate in %, value correlation); a scores.json one row per eval it holds. The chart
draws the scores as grouped bars, one group per column and one colour per row, the chance level as a line.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..utils.errors import UserError
from ..utils.io import atomic_output, write_atomic
from .metrics import headline

PROBES = ("linear", "map", "decoder")
SCORES = "scores.json"  # an export's card scores (vispre.export.card.SCORES; evaluation does not import the writer)


def load_results(path: str | Path) -> dict:
    """A results.json or scores.json (a folder: the one it holds), with ``_path`` recorded."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in ("results.json", SCORES) if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path}: no results.json or {SCORES} (run 'vispre eval' first)")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a results.json or an export's {SCORES})")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not JSON ({e})") from e
    results["_path"] = str(path)
    return results


def protocol_of(results: dict) -> dict:
    """A run's protocol; a suite's (avg_cls) is its first member's (same encoder and probes)."""
    return results["protocol"] if "protocol" in results else next(iter(results["protocols"].values()))


def row_label(results: dict) -> str:
    encoder = protocol_of(results)["encoder"]
    name = Path(encoder.get("path") or encoder.get("architecture", "?")).name
    return name + (" (random init)" if encoder.get("random_init") else "")


def columns(results: dict) -> dict[str, float]:
    """{"linear": 71.2, "map": ..., "knn k20": ..., "10-shot": ...} in the run's headline metric (a suite:
    the mean over its members)."""
    key = headline(protocol_of(results)["task"])
    if results.get("kind") == "suite":
        return {name.split("/")[0] + " (mean)": v for name, v in results["mean"].items() if name.endswith(f"/{key}")
                and name.split("/")[0] in PROBES}
    out = {}
    for probe in PROBES:
        if probe in results:
            out[probe] = results[probe]["best"]["test"][key]
    if "knn" in results:
        k = str(results["knn"]["report_k"])
        out[f"knn k{k}"] = results["knn"]["per_k"][k][key]
    for n, entry in results.get("fewshot", {}).get("per_shots", {}).items():
        out[f"{n}-shot"] = entry[key]["mean"]
    return out


def flat_columns(scores: dict, task: str | None) -> dict[str, float]:
    """The flat scores of scores.json (``linear/top1``, ``knn/k20/top1``, ``fewshot/10shot/top1``, or a
    zero-shot / retrieval recipe's ``top1``, ``i2t_r@1``) under the column names ``columns`` uses."""
    if task in (None, "zero_shot", "retrieval") or not any("/" in k for k in scores):
        return {k: v for k, v in scores.items() if isinstance(v, (int, float))}
    key, out = headline(task), {}
    for name, value in scores.items():
        parts = name.split("/")
        if parts[-1] != key:
            continue
        if parts[0] in PROBES and len(parts) == 2:
            out[parts[0]] = value
        elif parts[0] == "knn" and len(parts) == 3:
            out[f"knn {parts[1]}"] = value
        elif parts[0] == "fewshot" and len(parts) == 3:
            out[f"{parts[1].removesuffix('shot')}-shot"] = value
    return out


def rows_of(results: dict) -> list[tuple[str, str, str, dict, dict]]:
    """(encoder label, eval name, metric, columns, chance) rows of one loaded file."""
    path = Path(results["_path"])
    if path.name == SCORES:  # an export's card scores: {eval name: {"scores": ..., "protocol": ...}}
        rows = []
        for name, entry in results.items():
            if name.startswith("_") or not isinstance(entry, dict) or "scores" not in entry:
                continue
            task = (entry.get("protocol") or {}).get("task")
            metric = headline(task) if task in ("single", "multi") else "score"
            rows.append((path.parent.name, name, metric, flat_columns(entry["scores"], task), {}))
        return rows
    if "arms" in results:  # an offline-RL comparison: one row per arm, its mean over seeds
        rows = []
        for arm, stats in results["arms"].items():
            cols = {}
            if (stats.get("success") or {}).get("mean") is not None:
                cols["success %"] = 100.0 * stats["success"]["mean"]
            if (stats.get("value_corr") or {}).get("mean") is not None:
                cols["value corr"] = stats["value_corr"]["mean"]
            rows.append((arm, results.get("name", path.parent.name), "success", cols, {}))
        return rows
    if results.get("kind") in ("zero_shot", "retrieval"):
        return [(row_label(results), results["name"], "score", flat_columns(results["scores"], None),
                 results.get("chance", {}))]
    return [(row_label(results), results["name"], headline(protocol_of(results)["task"]), columns(results),
             results.get("chance", {}))]


def compare(paths: list[str], out_dir: Path) -> dict[str, Path]:
    table = [row for p in paths for row in rows_of(load_results(p))]
    if not table:
        raise UserError(f"nothing to compare in {', '.join(paths)}")
    names = list(dict.fromkeys(c for *_, cols, _ in table for c in cols))
    header = ["encoder", "eval", "metric", *names, "chance"]
    rows = [[label, name, metric, *[cols.get(c) for c in names], chance.get(metric)]
            for label, name, metric, cols, chance in table]
    out_dir.mkdir(parents=True, exist_ok=True)
    fmt = lambda v: "" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    markdown = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    markdown += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *[[fmt(v) for v in row] for row in rows]])
    written = {"markdown": write_atomic(out_dir / "compare.md", "\n".join(markdown) + "\n"),
               "csv": write_atomic(out_dir / "compare.csv", buffer.getvalue())}
    chart = plot_compare(table, names, out_dir / "compare.png")
    if chart is not None:
        written["chart"] = chart
    return written


def plot_compare(table, names: list[str], path: Path) -> Path | None:
    from .plots import _figure

    figure = _figure()
    if figure is None:
        return None
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(table))
    for i, (label, name, metric, cols, _) in enumerate(table):
        xs = [j + (i - (len(table) - 1) / 2) * width for j in range(len(names))]
        values = [cols.get(c, float("nan")) for c in names]
        axes.bar(xs, values, width, label=f"{label}, {name} ({metric})", color=f"C{i}")
    chances = {(name, chance.get(metric)) for _, name, metric, _, chance in table if chance.get(metric) is not None}
    for k, (name, chance) in enumerate(sorted(chances)):
        axes.axhline(chance, color=f"{0.2 + 0.5 * k / max(1, len(chances))}", linestyle=":",
                     label=f"chance, {name} ({chance:.1f})")
    axes.set_xticks(range(len(names)), names)
    axes.set_ylabel("score (% unless the column says otherwise)")
    axes.set_title("scores across encoders and runs")
    axes.grid(alpha=0.3, axis="y")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png")
    return path
