"""``vispre eval EVAL_RECIPE --encoder DIR [key=value ...]``: score an exported encoder.

Features are extracted once per split and cached; the linear-probe grid, kNN and few-shot probes run
on them; ``OUT/results.json`` holds the scores with their protocol, next to PNG plots.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("vispre.eval")


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", metavar="DIR", default=None,
                        help="an exported encoder folder (config.json + model.safetensors); required, except by "
                             "offline_rl recipes whose arms name their own")
    parser.add_argument("--random-init", action="store_true", default=None,
                        help="the same architecture with random weights (seeded by the recipe's seed): the baseline")
    parser.add_argument("--output", metavar="DIR", default=None,
                        help="where results.json and the plots go (default: output_dir, else "
                             "ENCODER/eval/NAME, NAME-random-init with --random-init)")
    parser.add_argument("--append-to-card", action="store_true", default=None,
                        help="add the scores and their protocol to the export's scores.json and model card")
    parser.add_argument("--print-config", action="store_true", default=None, help="print the resolved recipe and exit")
    parser.add_argument("--progress", action="store_true", default=None,
                        help="progress bars even when stderr is no terminal (on a terminal they show unless -q)")
    parser.add_argument("--arms", metavar="NAME,...", default=None,
                        help="offline_rl recipes: run only these arms (finished runs are reused, so arms run in "
                             "separate processes, then all of them, fill one table)")
    parser.add_argument("--random-init-results", metavar="JSON", default=None,
                        help="results.json of the same recipe at random init, drawn on the plots (default: "
                             "OUTPUT-random-init/results.json when it exists)")


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval", help="score an exported encoder: linear / MAP / decoder probe grids, kNN, few-shot (recipes in "
                     "eval/); 'vispre eval compare RESULTS.json ...' tabulates several",
        description="Evaluate the encoder exported in DIR ('vispre export') with an evaluation recipe (eval/*.yaml): "
                    "DINOv2's grid of linear heads trained in one pass over cached frozen features, MAP and decoder "
                    "probes on the tokens (map.enabled=true, decoder.enabled=true), DINO's kNN, few-shot logistic "
                    "regression; for a CLIP export, zero-shot classification and image-text retrieval "
                    "(eval/zero_shot_*.yaml, eval/retrieval_coco.yaml). key=value arguments override recipe "
                    "fields, e.g. "
                    "'linear.epochs=5 features.batch_size=64 test.limit=500'. "
                    "'vispre eval compare A/results.json B/results.json --output DIR' writes one table "
                    "(Markdown + CSV) and one chart across encoders.")
    parser.add_argument("recipe", help="evaluation recipe YAML (eval/*.yaml), or a shipped recipe's name "
                                       "(vispre recipes eval)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe fields to override")
    _options(parser)
    # argparse fills positionals greedily: in 'RECIPE --encoder DIR k=v' the (empty) overrides are taken before
    # k=v arrives and k=v would be an error. Whatever follows the first option is kept here and re-read by run().
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)
    return parser


def _merge_rest(args: argparse.Namespace) -> argparse.Namespace:
    """Options and key=value arguments in any order: re-read what the first parse left in ``rest``."""
    if args.rest:
        tail = argparse.ArgumentParser(prog="vispre eval")
        tail.add_argument("overrides", nargs="*")
        _options(tail)
        more = tail.parse_intermixed_args(args.rest)
        for key, value in vars(more).items():
            if key == "overrides":
                args.overrides = list(args.overrides) + list(value)
            elif value is not None:
                setattr(args, key, value)
    for flag in ("random_init", "append_to_card", "print_config", "progress"):
        setattr(args, flag, bool(getattr(args, flag)))
    if args.progress:  # vispre.utils.progress: bars also into a pipe or a log file
        import os

        os.environ["VISPRE_PROGRESS"] = "1"
    return args


def run(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation import ProbeRecipe, evaluate
    from ..evaluation.probe_recipe import check_config
    from ..export.read import load_encoder
    from ..utils.recipe_files import resolve_recipe
    from ..utils.typed_config import ConfigError, load_config, preview_yaml

    args = _merge_rest(args)
    if args.recipe == "compare":
        return run_compare(args)
    args.recipe = resolve_recipe(args.recipe, "eval")  # a path, or a shipped recipe's name (vispre recipes eval)
    if recipe_kind(args.recipe) == "offline_rl":
        return run_offline_rl(args)  # --encoder optional there: arms may name their own exports
    if recipe_kind(args.recipe) == "suite":
        return run_suite(args)
    if recipe_kind(args.recipe) in ("zero_shot", "retrieval"):
        return run_clip_eval(args, recipe_kind(args.recipe))
    kind = recipe_kind(args.recipe)
    if kind != "probe":
        raise SystemExit(f"vispre eval: error: {args.recipe} is a kind: {kind} recipe, which vispre eval does not "
                         "run (its comment says what does)")
    if args.print_config:  # no value checks: the recipe as it stands, values still missing (train.path) as ???
        print(preview_yaml(ProbeRecipe, args.recipe, args.overrides), end="")
        return 0
    if not args.encoder:
        raise SystemExit("vispre eval: error: --encoder DIR is required")
    cfg = load_config(ProbeRecipe, args.recipe, args.overrides)
    check_config(cfg)
    if args.append_to_card and args.random_init:
        raise ConfigError("--append-to-card with --random-init would put a random encoder's scores on this "
                          "model's card; write them with --output instead")
    torch.manual_seed(cfg.seed)  # the random-init draw (and nothing else random happens before this)
    encoder = load_encoder(args.encoder, random_init=args.random_init)
    suffix = "-random-init" if args.random_init else ""
    out = say_if_replacing(Path(args.output or cfg.output_dir or Path(args.encoder) / "eval" / f"{cfg.name}{suffix}"))
    encoder_info = {"path": str(Path(args.encoder).resolve()), "random_init": args.random_init,
                    "random_init_seed": cfg.seed if args.random_init else None}
    results = evaluate(cfg, encoder, out, encoder_info=encoder_info, baseline=random_init_results(args, out),
                       progress=True)
    print(results["table"])
    print(f"results: {out / 'results.json'}" + (f"; plots: {', '.join(results['plots'])}" if results["plots"] else ""))
    if args.append_to_card:
        from ..export.write import append_scores

        protocol = {k: v for k, v in results["protocol"].items() if k != "host"}
        protocol["features"] = {k: v for k, v in protocol["features"].items() if k != "cache"}
        card = append_scores(args.encoder, cfg.name, results["scores"], protocol)
        print(f"scores added to {card} and the model card")
    return 0


def random_init_results(args: argparse.Namespace, out: Path) -> dict | None:
    """The random-init run of the same recipe, for the plots' reference line."""
    import json

    if args.random_init:
        return None
    default = out.with_name(f"{out.name}-random-init") / "results.json"
    path = Path(args.random_init_results) if args.random_init_results else default
    if not path.is_file():
        if args.random_init_results:
            raise FileNotFoundError(f"--random-init-results: no file {path}")
        return None
    return json.loads(path.read_text())


def suite_members(recipe: str, overrides: list[str]) -> list[tuple[str, Path, list[str]]]:
    """(name, recipe path, overrides) of each member of a ``kind: suite`` recipe; ``NAME.key=value`` goes to
    member NAME only, an unprefixed override to every member."""
    from omegaconf import OmegaConf

    raw = OmegaConf.load(recipe)
    members = [Path(recipe).parent / str(m) for m in raw.get("members", [])]
    if not members:
        raise SystemExit(f"{recipe}: a suite needs members: [RECIPE.yaml, ...]")
    names = [m.stem for m in members]
    shared = [o for o in overrides if o.split("=", 1)[0].split(".", 1)[0] not in names]
    return [(name, path, shared + [o.split(".", 1)[1] for o in overrides if o.startswith(f"{name}.")])
            for name, path in zip(names, members)]


def run_suite(args: argparse.Namespace) -> int:
    """Every member recipe on the same encoder, then the mean of their scores (OUT/results.json)."""
    import torch
    from omegaconf import OmegaConf

    from ..evaluation import ProbeRecipe, evaluate
    from ..evaluation.probe_recipe import check_config
    from ..evaluation.report import RESULTS_FILE, suite_summary, write_json
    from ..export.read import load_encoder
    from ..utils.typed_config import load_config

    name = str(OmegaConf.load(args.recipe).get("name", Path(args.recipe).stem))
    members = [(member, load_config(ProbeRecipe, path, over))
               for member, path, over in suite_members(args.recipe, args.overrides)]
    for _, cfg in members:
        check_config(cfg)
    if args.print_config:
        from ..utils.typed_config import to_yaml

        print("\n---\n".join(to_yaml(cfg) for _, cfg in members))
        return 0
    if not args.encoder:
        raise SystemExit("vispre eval: error: --encoder DIR is required")
    suffix = "-random-init" if args.random_init else ""
    out = Path(args.output or Path(args.encoder) / "eval" / f"{name}{suffix}")
    results = {}
    for member, cfg in members:
        torch.manual_seed(cfg.seed)
        encoder = load_encoder(args.encoder, random_init=args.random_init)
        info = {"path": str(Path(args.encoder).resolve()), "random_init": args.random_init}
        results[member] = evaluate(cfg, encoder, out / member, encoder_info=info, progress=True)
        print(results[member]["table"])
    summary = suite_summary(name, results)
    write_json(out / RESULTS_FILE, summary)
    print(f"{name} mean: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["mean"].items()))
    print(f"results: {out / RESULTS_FILE}")
    return 0


def run_clip_eval(args: argparse.Namespace, kind: str) -> int:
    """Zero-shot classification or image-text retrieval with a CLIP export's two towers (open_clip folder)."""
    from ..utils.typed_config import load_config, preview_yaml

    if kind == "zero_shot":
        from ..evaluation.zero_shot import ZeroShotRecipe as schema
        from ..evaluation.zero_shot import zero_shot as evaluate
    else:
        from ..evaluation.retrieval import RetrievalRecipe as schema
        from ..evaluation.retrieval import retrieval as evaluate
    if args.print_config:
        print(preview_yaml(schema, args.recipe, args.overrides), end="")
        return 0
    if not args.encoder:
        raise SystemExit("vispre eval: error: --encoder DIR is required (a CLIP run's export)")
    if args.random_init or args.append_to_card:
        raise SystemExit(f"vispre eval: error: {kind} recipes take neither --random-init nor --append-to-card")
    cfg = load_config(schema, args.recipe, args.overrides)
    out = say_if_replacing(Path(args.output or cfg.output_dir or Path(args.encoder) / "eval" / cfg.name))
    results = evaluate(cfg, args.encoder, out)
    print(results["table"])
    print(f"results: {out / 'results.json'}")
    return 0


def say_if_replacing(out: Path) -> Path:
    """A second eval with the same recipe name (and encoder) writes the same folder: say so before its
    results.json is replaced (--output DIR keeps both)."""
    if (out / "results.json").exists():
        log.warning("%s already holds results.json from an earlier eval: replacing it (--output DIR keeps both)", out)
    return out


def run_compare(args: argparse.Namespace) -> int:
    """``vispre eval compare RESULTS.json ... [--output DIR]``: one table and one chart across encoders."""
    from ..evaluation.compare import compare

    if not args.overrides:
        raise SystemExit("vispre eval compare: error: give the results.json files (or their folders) to compare")
    written = compare(args.overrides, Path(args.output or "eval-compare"))
    print(written["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


def recipe_kind(path: str) -> str:
    """``kind:`` at the top of an eval recipe: ``offline_rl`` recipes go to vispre.rl, the rest are probes."""
    from omegaconf import OmegaConf

    raw = OmegaConf.load(path)
    if "kind" not in raw and "_base_" in raw:  # the kind a recipe inherits
        return recipe_kind(Path(path).parent / str(raw["_base_"]))
    return str(raw.get("kind", "probe"))


def run_offline_rl(args: argparse.Namespace) -> int:
    """Offline RL from pixels: every arm (scratch, the --encoder export frozen / fine-tuned, random) x seed."""
    from ..rl.rl_recipe import load_offline_rl_config
    from ..rl.run import run_offline_rl as run_rl
    from ..utils.typed_config import ConfigError, to_yaml

    cfg = load_offline_rl_config(args.recipe, args.overrides)
    if args.arms:
        wanted = [name.strip() for name in args.arms.split(",") if name.strip()]
        unknown = sorted(set(wanted) - {arm.name for arm in cfg.arms})
        if unknown:
            raise ConfigError(f"--arms: {', '.join(unknown)} not among the recipe's arms "
                              f"({', '.join(arm.name for arm in cfg.arms)})")
        cfg.arms = [arm for arm in cfg.arms if arm.name in wanted]
    if args.print_config:
        print(to_yaml(cfg))
        return 0
    if args.output:
        cfg.output_dir = args.output
    run_rl(cfg, args.encoder)
    print(f"results: {cfg.output_dir}/results.json, results.md and curves/")
    return 0
