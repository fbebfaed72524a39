"""Shipped recipes: ``recipes/`` (pretraining) and ``eval/`` (evaluation) travel in the package as
``vispre/_recipes`` and ``vispre/_eval_recipes`` (setup.py maps the folders), so an installed vispre runs
``vispre pretrain demo/simclr`` without a checkout. In a source checkout (an editable install) the
top-level folders themselves are used, so a recipe edited there is the one that runs.

A recipe argument is a path when that file exists, else a shipped recipe's name (``demo/simclr``,
``demo_digits``, with or without ``.yaml``, with or without the ``recipes/`` or ``eval/`` prefix the
README's commands use). ``_base_`` includes stay relative to the file, inside the same folder tree.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import UserError

KINDS = {"pretrain": ("_recipes", "recipes"), "eval": ("_eval_recipes", "eval")}


def recipe_root(kind: str) -> Path | None:
    """The folder of shipped ``kind`` recipes (``pretrain`` or ``eval``), None when there is none."""
    packaged, checkout = KINDS[kind]
    package = Path(str(resources.files("vispre")))
    for folder in (package / packaged, package.parent / checkout):  # an installed wheel, a source checkout
        if folder.is_dir() and any(folder.rglob("*.yaml")):
            return folder
    return None


def shipped_recipes(kind: str) -> list[tuple[str, Path]]:
    """(name, path) of every shipped ``kind`` recipe, sorted; the name is the path below the root without
    ``.yaml`` (``demo/simclr``)."""
    root = recipe_root(kind)
    if root is None:
        return []
    return sorted((p.relative_to(root).with_suffix("").as_posix(), p) for p in root.rglob("*.yaml"))


def describe(path: Path) -> str:
    """A recipe's one-line description: its first comment line."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line:
            break  # recipes put their description first; one that starts with keys has none
    return ""


def resolve_recipe(name: str, kind: str) -> str:
    """``name`` itself when it is a file, else the shipped ``kind`` recipe of that name (as a path string)."""
    if Path(name).is_file():
        return name
    root = recipe_root(kind)
    prefix = KINDS[kind][1] + "/"
    stem = name[len(prefix):] if name.startswith(prefix) else name
    if root is not None:
        for candidate in (root / stem, root / f"{stem}.yaml"):
            if candidate.is_file():
                return str(candidate)
    if name.endswith((".yaml", ".yml")) and str(Path(name).parent) not in ("", ".") and Path(name).parent.is_dir():
        raise UserError(f"recipe {name} does not exist")  # a path into an existing folder: meant as a path
    other = "eval" if kind == "pretrain" else "pretrain"
    hint = ""
    if any(n == stem.removesuffix(".yaml") for n, _ in shipped_recipes(other)):
        hint = f"; {stem} is a{'n' if other == 'eval' else ''} {other} recipe (vispre {other} {stem})"
    raise UserError(f"recipe {name}: no such file, and no shipped {kind} recipe of that name{hint} "
                    "('vispre recipes' lists them)")
