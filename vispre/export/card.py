"""The model card (README.md) of an exported encoder, and the scores that go on it.

The card is rendered from two files in the export folder, so it can always be rebuilt and adding
scores twice under one name replaces them instead of repeating a section:

    export.json   what was exported (written by vispre.export)
    scores.json   {name: {"scores": {metric: value}, "protocol": {...}}} (``append_scores``)

It is a ``huggingface_hub.ModelCard``: its metadata carries the licence, the training datasets (Hub ids, as
given to ``vispre export --license --dataset``) and a ``model-index`` with every score. The folder is what
``--push-to-hub`` publishes, so what it holds names no local path: absolute paths (a data spec, the
checkpoint, an eval protocol's files) appear as ``<local>/NAME`` (``public``); export.json's local originals
stay in the hidden ``.local.json``, which uploads leave out.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..utils.io import write_atomic, write_json

PROVENANCE = "export.json"
SCORES = "scores.json"
CARD = "README.md"
LOCAL = ".local.json"  # hidden: the local paths export.json's public copy replaced (never uploaded)
NO_LICENSE = "other"  # the Hub's value for "not one of the listed licences"; the card says none was given
# an absolute local path: "/..." or "~/..." that does not continue a URL ("s3://b/k", "https://h/p"), a relative
# path ("a/b", "{a,b}/c"), markup ("</details>") or an already replaced "<local>/NAME"; "file://" URLs are local;
# "::" joins several sources in a data spec
_ABSOLUTE = re.compile(r"(?:file://|(?<=::)|(?<![\w.:/~<>})\]*$%-]))(?:~/|/(?!/))(?:(?!::)[^\s'\"`,;|)\]}<>])+")


def public(value):
    """``value`` (str, or JSON-like containers of them) with each absolute local path replaced by
    ``<local>/NAME`` (its last component): what a card, export.json and scores.json may publish."""
    if isinstance(value, str):
        return _ABSOLUTE.sub(_local_name, value)
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [public(v) for v in value]
    return value


def _local_name(match: re.Match) -> str:
    name = match.group(0).rstrip("/").rsplit("/", 1)[-1]
    return f"<local>/{name}" if name not in ("", "~") else "<local>"


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
    table[name] = public(_plain({"scores": scores, "protocol": protocol}))
    write_json(file, table)
    write_card(out)
    return file


def write_provenance(out_dir: str | Path, provenance: dict) -> None:
    """export.json with local paths replaced (``public``), and the replaced originals in the hidden .local.json."""
    out = Path(out_dir)
    shown = public(provenance)
    write_json(out / PROVENANCE, shown)
    local = {k: v for k, v in provenance.items() if shown.get(k) != v}
    if local:
        write_json(out / LOCAL, local)


def write_card(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    info = json.loads((out / PROVENANCE).read_text())
    scores = json.loads((out / SCORES).read_text()) if (out / SCORES).exists() else {}
    path = out / CARD
    write_atomic(path, render(info, scores))
    return path


def card_data(info: dict, scores: dict):
    """The card's metadata as ``huggingface_hub.ModelCardData``: licence, datasets, tags, model-index."""
    from huggingface_hub import EvalResult, ModelCardData

    results = []
    for name, entry in scores.items():
        protocol = entry.get("protocol") or {}
        for metric, value in _flat(entry["scores"]):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                results.append(EvalResult(
                    task_type="image-classification", task_name=f"{protocol.get('task', 'probe')} probe ({name})",
                    dataset_type=str(protocol.get("eval") or name), dataset_name=name, metric_type=metric,
                    metric_name=metric, metric_value=value))
    tags = ["image-feature-extraction", "timm", "vispre", info["method"]]
    tags += ["open_clip"] if info.get("open_clip") else []
    return ModelCardData(
        library_name="timm", pipeline_tag="image-feature-extraction", tags=tags,
        license=info.get("license") or NO_LICENSE, license_name=None if info.get("license") else "unspecified",
        datasets=list(info.get("datasets") or []) or None, model_name=info["recipe"],
        eval_results=results or None)


def render(info: dict, scores: dict) -> str:
    """README.md: a huggingface_hub ModelCard (YAML metadata from ``card_data``), local paths replaced."""
    from huggingface_hub import ModelCard

    info, scores = public(info), public(scores)
    body = _body(info, scores)
    card = ModelCard(f"---\n{card_data(info, scores).to_yaml()}\n---\n\n{body}")
    return str(card)


def _body(info: dict, scores: dict) -> str:
    method = info["method"] + (f" (base: {info['base']})" if info.get("base") else "")
    copy = {"target": "target network (EMA of the online one)", "online": "online network"}[info["which"]]
    size = info["input"]["input_size"]
    license_line = (f"Licence: `{info['license']}`" if info.get("license") else
                    "Licence: none given at export (`vispre export --license`); the weights follow the terms "
                    "of the data they were trained on.")
    lines = [
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
        f"| checkpoint | `{info['checkpoint']}` |", "", license_line, "",
        "## Use", "", "```python", "import timm", "",
        'model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True).eval()',
        "config = timm.data.resolve_data_config({}, model=model)",
        "transform = timm.data.create_transform(**config)",
        "features = model(transform(image).unsqueeze(0))  # [1, num_features]", "```", ""]
    if info.get("onnx"):
        lines += [(f"`model.onnx`: the same pooled features as an ONNX graph, input `pixel_values` "
                   f"[batch, 3, {size[1]}, {size[2]}] normalised as above, output `features` [batch, num_features]."),
                  ""]
    if info.get("open_clip"):
        lines += ["### open_clip (both towers)", "", "```python", "import open_clip", "",
                  'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:PATH/TO/THIS/FOLDER")',
                  'tokenizer = open_clip.get_tokenizer("local-dir:PATH/TO/THIS/FOLDER")',
                  "image_features = model.encode_image(preprocess(image).unsqueeze(0), normalize=True)",
                  'text_features = model.encode_text(tokenizer(["a photo of a dog"]), normalize=True)', "```", "",
                  f"Needs {info['open_clip']['requires']}.", ""]
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



