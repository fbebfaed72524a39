"""``vispre eval compare`` across kinds of runs (issue 16): probe results.json, zero-shot results.json, an
offline-RL comparison's results.json and an export's scores.json in one Markdown + CSV table and a chart."""

import json

from vispre.cli import main
from vispre.rl.report import summarise


def write(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def test_compare_collects_probes_zero_shot_offline_rl_and_card_scores(tmp_path, capsys):
    probe = write(tmp_path / "encA/eval/digits/results.json", {
        "name": "digits", "protocol": {"task": "single", "encoder": {"path": "/runs/encA", "random_init": False}},
        "linear": {"best": {"test": {"top1": 71.234, "top5": 99.0}}},
        "knn": {"report_k": 20, "per_k": {"20": {"top1": 60.5}}}, "chance": {"top1": 10.0}})
    zero_shot = write(tmp_path / "clip/eval/zs/results.json", {
        "name": "zs", "kind": "zero_shot", "scores": {"top1": 42.0, "top5": 80.0},
        "protocol": {"task": "zero_shot", "encoder": {"path": "/runs/clip", "random_init": False}}})
    runs = [{"arm": arm, "seed": seed, "final": {"success": s, "length": 10.0, "value_mae": 0.1, "value_corr": c},
             "train_seconds": 1.0, "eval_seconds": 1.0}
            for arm, seed, s, c in (("scratch", 0, 0.2, 0.5), ("scratch", 1, 0.4, 0.7), ("icvf", 0, 0.6, 0.9))]
    rl = write(tmp_path / "rl/results.json", {"name": "minigrid", "protocol": {}, "arms": summarise(runs),
                                              "runs": runs})
    card = write(tmp_path / "encB/scores.json", {"demo_digits": {
        "scores": {"linear/top1": 70.8, "linear/top5": 99.1, "knn/k20/top1": 61.25, "fewshot/10shot/top1": 50.0,
                   "fewshot/10shot/top1_std": 1.5}, "protocol": {"task": "single"}}})
    out = tmp_path / "cmp"
    assert main(["eval", "compare", str(probe.parent), str(zero_shot), str(rl), str(card.parent),
                 "--output", str(out)]) == 0
    table = (out / "compare.md").read_text().splitlines()
    assert table[0] == ("| encoder | eval | metric | linear | knn k20 | top1 | top5 | success % | value corr | 10-shot "
                        "| chance |")
    assert table[2:] == [
        "| encA | digits | top1 | 71.23 | 60.50 |  |  |  |  |  | 10.00 |",
        "| clip | zs | score |  |  | 42.00 | 80.00 |  |  |  |  |",
        "| scratch | minigrid | success |  |  |  |  | 30.00 | 0.60 |  |  |",  # the mean of seeds 0.2, 0.4
        "| icvf | minigrid | success |  |  |  |  | 60.00 | 0.90 |  |  |",
        "| encB | demo_digits | top1 | 70.80 | 61.25 |  |  |  |  | 50.00 |  |",
    ]
    assert (out / "compare.csv").read_text().splitlines()[1] == "encA,digits,top1,71.23,60.50,,,,,,10.00"
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "| icvf | minigrid |" in capsys.readouterr().out


def test_compare_of_a_folder_without_results_is_one_line(tmp_path, capsys):
    assert main(["eval", "compare", str(tmp_path), "--output", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{tmp_path}: no results.json or scores.json" in err
