"""PNG plots of an evaluation: probe score per learning rate (a line per input variant) and kNN
score per k, with the chance level and, when known, the random-init encoder's score as horizontal
lines; legends sit beside the axes, never over the data. matplotlib's object API with the Agg
canvas: no global backend switch, no display. Without matplotlib (``pip install vispre[eval]``) the
plots are skipped with a warning."""

from __future__ import annotations

import logging
from pathlib import Path

from ..utils.io import atomic_output

log = logging.getLogger("vispre.evaluation")


def _figure():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install 'vispre[eval]')")
        return None
    figure = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def draw_levels(axes, levels: dict | None, metric: str) -> None:
    """Horizontal reference lines: chance (grey) and the random-init encoder (red), labelled in the legend."""
    levels = levels or {}
    chance = (levels.get("chance") or {}).get(metric)
    if chance is not None:
        axes.axhline(chance, color="0.5", linestyle=":", label=f"chance ({chance:.1f})")
    random_init = levels.get("random_init")
    if random_init is not None:
        axes.axhline(random_init, color="C3", linestyle="-.", label=f"random init ({random_init:.1f})")


def outside_legend(axes) -> None:
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def plot_probe(linear: dict, metric: str, path: str | Path, title: str = "", levels: dict | None = None) -> Path | None:
    """Val (solid) and test (dashed) ``metric`` per base learning rate; the chosen head circled; ``levels``:
    {"chance": {metric: x}, "random_init": y} drawn as lines."""
    figure = _figure()
    if figure is None:
        return None
    axes = figure.add_subplot()
    variants = list(dict.fromkeys(row["variant"] for row in linear["heads"]))
    for i, variant in enumerate(variants):
        rows = [r for r in linear["heads"] if r["variant"] == variant]
        lrs = [r["lr"] for r in rows]
        colour = f"C{i}"
        axes.plot(lrs, [r["val"][metric] for r in rows], "o-", color=colour, label=f"{variant} (val)")
        axes.plot(lrs, [r["test"][metric] for r in rows], "--", color=colour, alpha=0.6, label=f"{variant} (test)")
    best = linear["best"]
    axes.plot([best["lr"]], [best["val"][metric]], "o", markersize=14, markerfacecolor="none", color="k",
              label=f"chosen: {best['variant']}, lr {best['lr']:g}")
    axes.set_xscale("log")
    axes.set_xlabel("base learning rate (x batch/256)" if best["lr_scaled"] != best["lr"] else "learning rate")
    axes.set_ylabel(f"{metric} (%)")
    draw_levels(axes, levels, metric)
    axes.set_title(title or "linear probe")
    axes.grid(alpha=0.3)
    outside_legend(axes)
    return _save(figure, Path(path))


def plot_knn(knn: dict, metric: str, path: str | Path, title: str = "", levels: dict | None = None) -> Path | None:
    figure = _figure()
    if figure is None:
        return None
    axes = figure.add_subplot()
    ks = sorted(int(k) for k in knn["per_k"])
    axes.plot(ks, [knn["per_k"][str(k)][metric] for k in ks], "o-", label="kNN (test)")
    draw_levels(axes, levels, metric)
    outside_legend(axes)
    axes.set_xscale("log")
    axes.set_xticks(ks, [str(k) for k in ks])
    axes.set_xlabel("k (neighbours)")
    axes.set_ylabel(f"{metric} (%)")
    axes.set_title(title or "kNN")
    axes.grid(alpha=0.3)
    return _save(figure, Path(path))
