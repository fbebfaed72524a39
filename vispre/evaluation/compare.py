"""``vispre eval compare RESULTS...``: one table (Markdown + CSV) and one chart across encoders.

Each argument is a ``results.json`` (or the folder holding one). A row is one (encoder, recipe);
the columns are the headline metric of every probe any of them ran (linear, MAP, decoder, kNN at
its reported k, few-shot), plus the chance level. The chart draws those scores as grouped bars,
one group per probe and one colour per row, the chance level as a line, the legend beside it.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..utils.io import atomic_output, write_atomic
from .metrics import headline

PROBES = ("linear", "map", "decoder")


def load_results(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.json (run 'vispre eval' first)")
    results = json.loads(path.read_text())
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


def compare(paths: list[str], out_dir: Path) -> dict[str, Path]:
    runs = [load_results(p) for p in paths]
    table = [(row_label(r), r["name"], headline(protocol_of(r)["task"]), columns(r), r.get("chance", {})) for r in runs]
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
    axes.set_ylabel("score (%)")
    axes.set_title("probes across encoders")
    axes.grid(alpha=0.3, axis="y")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png")
    return path
