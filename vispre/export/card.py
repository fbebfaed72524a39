"""The model card (README.md) of an exported encoder, and the scores that go on it.

The card is rendered from two files in the export folder, so it can always be rebuilt and adding
scores twice under one name replaces them instead of repeating a section:

    export.json   what was exported (written by vispre.export)
    scores.json   {name: {"scores": {metric: value}, "protocol": {...}}} (``append_scores``)
"""

from __future__ import annotations

import json
from pathlib import Path

from ..utils.io import write_atomic, write_json

PROVENANCE = "export.json"
SCORES = "scores.json"
CARD = "README.md"


def append_scores(out_dir: str | Path, name: str, scores: dict, protocol: dict) -> Path:
    """Add (or replace) the score set ``name`` with the protocol that produced it; rewrite the card.

    ``scores``: metric -> number (e.g. {"top1": 93.1, "top5": 99.0}); ``protocol``: everything needed
    to reproduce them (dataset, encoder layer, resolution, transform, grid, epochs, seeds). Both must
    be JSON-serialisable. Returns the path of scores.json.
    """
    out = Path(out_dir)
    if not (out / PROVENANCE).is_file():
        raise FileNotFoundError(f"{out} is not a vispre export (no {PROVENANCE}); export the encoder first")
    file = out / SCORES
    table = json.loads(file.read_text()) if file.exists() else {}
    table[name] = _plain({"scores": scores, "protocol": protocol})
    write_json(file, table)
    write_card(out)
    return file


def write_card(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    info = json.loads((out / PROVENANCE).read_text())
    scores = json.loads((out / SCORES).read_text()) if (out / SCORES).exists() else {}
    path = out / CARD
    write_atomic(path, render(info, scores))
    return path


def render(info: dict, scores: dict) -> str:
    method = info["method"] + (f" (base: {info['base']})" if info.get("base") else "")
    copy = {"target": "target network (EMA of the online one)", "online": "online network"}[info["which"]]
    size = info["input"]["input_size"]
    lines = [
        "---", "library_name: timm", "pipeline_tag: image-feature-extraction",
        "tags: [image-feature-extraction, timm, vispre]", "---", "",
        f"# {info['recipe']}: {method}, {info['architecture']}", "",
        (f"An image encoder pretrained with vispre {info['vispre_version']}. This folder loads with timm "
         "alone; the classifier head is removed (`num_classes=0`), so the model returns pooled features."), "",
        "| | |", "|---|---|",
        f"| recipe | `{info['recipe']}` |",
        f"| method | {method} |",
        f"| architecture | `{info['architecture']}` `{json.dumps(info['model_args'])}` |",
        f"| data | `{info['data']['spec']}` ({info['data']['format']}) |",
        f"| steps | {info['step']} of {info['steps_planned']} |",
        f"| weights | {copy} |",
        (f"| input | {size[1]}x{size[2]} px, mean {_floats(info['input']['mean'])}, "
         f"std {_floats(info['input']['std'])}, {info['input']['interpolation']} |"),
        f"| checkpoint | `{info['checkpoint']}` |", "",
        "## Use", "", "```python", "import timm", "",
        'model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True).eval()',
        "config = timm.data.resolve_data_config({}, model=model)",
        "transform = timm.data.create_transform(**config)",
        "features = model(transform(image).unsqueeze(0))  # [1, num_features]", "```", ""]
    if info.get("onnx"):
        lines += [(f"`model.onnx`: the same pooled features as an ONNX graph, input `pixel_values` "
                   f"[batch, 3, {size[1]}, {size[2]}] normalised as above, output `features` [batch, num_features]."),
                  ""]
    if info.get("modules"):
        lines += ["## Extra modules", "", "| file | class | parameters |", "|---|---|---|"]
        lines += [f"| `{name}.safetensors` | `{m['class']}` | {m['parameters']:,} |"
                  for name, m in info["modules"].items()]
        lines.append("")
    lines += ["## Scores", ""]
    if not scores:
        lines += ["None yet: `vispre eval EVAL_RECIPE --encoder THIS_FOLDER --append-to-card` adds them.", ""]
    for name, entry in scores.items():
        lines += [f"### {name}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {metric} | {_value(value)} |" for metric, value in _flat(entry["scores"])]
        lines += ["", "<details><summary>protocol</summary>", "", "```json",
                  json.dumps(entry["protocol"], indent=1), "```", "</details>", ""]
    lines += ["## Recipe", "", "<details><summary>resolved recipe</summary>", "", "```yaml",
              info["recipe_yaml"].rstrip(), "```", "</details>", ""]
    return "\n".join(lines)


def _plain(data):
    """JSON types only: numpy / torch scalars and arrays (what evaluation code returns) become numbers and lists."""
    def convert(value):
        if hasattr(value, "tolist"):
            return value.tolist()
        raise TypeError(f"append_scores: {type(value).__name__} {value!r} is not JSON-serialisable")

    return json.loads(json.dumps(data, default=convert))


def _flat(scores: dict, prefix: str = ""):
    """(metric, value) rows; nested score dicts become 'group/metric'."""
    for key, value in scores.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value


def _floats(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)



