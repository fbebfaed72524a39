"""The comparison's outputs: results.json (protocol + every run), results.md (table), curves/ARM.png."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..utils.io import atomic_output, write_atomic, write_json


def _stats(values: list[float]) -> dict:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return {"mean": None, "std": None, "per_seed": []}
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "per_seed": [float(v) for v in values]}


METRICS = ("success", "length", "value_mae", "value_corr")


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Per arm: mean, std (over seeds, population std) and per-seed values of the final evaluation."""
    arms: dict[str, dict] = {}
    for run in runs:
        arms.setdefault(run["arm"], {"runs": []})["runs"].append(run)
    for arm in arms.values():
        finals = [r["final"] for r in arm["runs"]]
        for m in METRICS:
            arm[m] = _stats([f.get(m) for f in finals])
        arm["seeds"] = [r["seed"] for r in arm["runs"]]
        arm["train_seconds"] = _stats([r["train_seconds"] for r in arm["runs"]])
        arm["eval_seconds"] = _stats([r["eval_seconds"] for r in arm["runs"]])
        arm["feature_seconds"] = arm["runs"][0].get("feature_seconds", 0.0)
        del arm["runs"]
    return arms


def _cell(s: dict, digits: int = 2) -> str:
    if s["mean"] is None:
        return "-"
    seeds = ", ".join(f"{v:.{digits}f}" for v in s["per_seed"])
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} ({seeds})"


def _context(p: dict) -> list[str]:
    """What the numbers mean: held-out layouts and the random-policy reference, where known."""
    lines, env = [], p["env"]
    if "distinct_eval_layouts" in env:
        lines.append(f"Evaluation on {env['distinct_eval_layouts']} layouts; episodes on a layout that occurs in the "
                     f"training data: {env['eval_episodes_on_a_training_layout']} (held-out layouts: "
                     f"{env['holdout_layouts']}, {env['train_rows_dropped']} training rows dropped for them).")
    random = p.get("reference", {}).get("uniform_random_policy")
    if random:
        lines.append(f"Uniformly random actions on the same episodes: success {random['success']:.2f}, "
                     f"episode length {random['length']:.1f}.")
    return lines


def markdown_table(name: str, protocol: dict, arms: dict[str, dict]) -> str:
    p, a, e = protocol, protocol["agent"], protocol["eval"]
    lines = [f"# {name}", "",
             (f"env {p['env']['kind']}:{p['env']['name']}, data {p['dataset']['train']} "
              f"({p['dataset']['transitions']} transitions, frame stack {p['dataset']['frame_stack']}); agent "
              f"{a['name']}, {a['steps']} steps, batch {a['batch_size']}, lr {a['lr']}, seeds {p['seeds']}; "
              f"{e['episodes']} episodes per seed, policy {e['policy']}."),
             *_context(p),
             ("Values are mean ± std over seeds (per-seed values in brackets). Value error: |V - G| against "
              "Monte-Carlo returns G of the validation split."), "",
             ("| arm | encoder | success | episode length | value MAE | value corr | train s / seed | eval s / seed "
              "| features s |"),
             "|---|---|---|---|---|---|---|---|---|"]
    states = p["dataset"].get("observations") == "states"
    encoders = {arm["name"]: arm["encoder"] if arm["kind"] != "scratch" or arm["architecture"] == "export"
                else "none (states)" if states else arm["architecture"] for arm in p["arms"]}
    for name_, arm in arms.items():
        train_s, eval_s = arm["train_seconds"]["mean"] or 0.0, arm["eval_seconds"]["mean"] or 0.0
        lines.append(f"| {name_} | {encoders.get(name_, '')} | {_cell(arm['success'])} | {_cell(arm['length'], 1)} | "
                     f"{_cell(arm['value_mae'])} | {_cell(arm['value_corr'])} | {train_s:.0f} | {eval_s:.0f} | "
                     f"{arm['feature_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_curves(out_dir: Path, runs: list[dict]) -> list[Path]:
    """One PNG per arm: success and value error against update steps, a line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for arm in dict.fromkeys(r["arm"] for r in runs):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
        for run in (r for r in runs if r["arm"] == arm):
            steps = [p["step"] for p in run["curve"]]
            ax1.plot(steps, [p.get("success", np.nan) for p in run["curve"]], "o-", label=f"seed {run['seed']}")
            ax2.plot(steps, [p.get("value_mae", np.nan) for p in run["curve"]], "o-", label=f"seed {run['seed']}")
        ax1.set(xlabel="updates", ylabel="success rate", ylim=(-0.02, 1.02), title=f"{arm}: success")
        ax2.set(xlabel="updates", ylabel="|V - G|", title=f"{arm}: value error (val)")
        ax1.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{arm}.png"
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(out: Path, name: str, protocol: dict, runs: list[dict]) -> dict:
    arms = summarise(runs)
    results = {"name": name, "protocol": protocol, "arms": arms, "runs": runs}
    write_json(out / "results.json", results)
    write_atomic(out / "results.md", markdown_table(name, protocol, arms))
    results["plots"] = [str(p) for p in plot_curves(out / "curves", runs)]
    return results
