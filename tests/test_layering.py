"""The package's import graph, read from the source (nothing imported): no cycle between modules, and no
layer importing one above it. The pipeline reads data -> views -> models -> methods -> pretrain -> export ->
evaluation / rl, with utils at the bottom and commands / cli on top."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "vispre"

# each area, and the areas it may never import
NEVER = {
    "utils": {"data", "envs", "views", "models", "methods", "pretrain", "export", "evaluation", "rl", "commands",
              "cli"},
    "data": {"envs", "views", "models", "methods", "pretrain", "export", "evaluation", "rl", "commands", "cli"},
    "envs": {"views", "models", "methods", "pretrain", "export", "evaluation", "rl", "commands", "cli"},
    "views": {"models", "methods", "pretrain", "export", "evaluation", "rl", "commands", "cli"},
    "models": {"methods", "pretrain", "export", "evaluation", "rl", "commands", "cli"},
    "methods": {"pretrain", "export", "evaluation", "rl", "commands", "cli"},
    "pretrain": {"export", "evaluation", "rl", "commands", "cli"},
    "export": {"evaluation", "rl", "commands", "cli"},
    "evaluation": {"methods", "pretrain", "rl", "commands", "cli"},
    "rl": {"methods", "pretrain", "commands", "cli"},
}
# reading an export must not pull in the training side: evaluation and rl import it
NEVER_MODULES = {"vispre.export.read": {"methods", "pretrain"}, "vispre.export": {"methods", "pretrain"}}


def modules() -> dict[str, Path]:
    out = {}
    for file in ROOT.rglob("*.py"):
        parts = list(file.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = file
    return out


def imports(name: str, file: Path, known: dict) -> set[str]:
    """The vispre modules ``name`` imports (a name imported from a package resolves to its submodule if one
    exists, else to the package)."""
    package = name if file.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known] or [module]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("vispre") and target != name:
                found.add(target)
    return found


def area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.fixture(scope="module")
def graph():
    known = modules()
    return {name: imports(name, file, known) for name, file in known.items()}


def test_no_layer_imports_one_above_it(graph):
    breaks = [f"{m} -> {d}" for m, deps in graph.items() for d in deps if area(d) in NEVER.get(area(m), ())]
    breaks += [f"{m} -> {d}" for m, banned in NEVER_MODULES.items() for d in graph.get(m, ()) if area(d) in banned]
    assert not breaks, "layering breaks:\n" + "\n".join(sorted(breaks))


def test_no_import_cycle(graph):
    """Strongly connected groups of modules; a group is a cycle between files when it holds two or more modules
    that are not package faces (a face re-exporting its submodules loops with them harmlessly)."""
    faces = {m for m, f in modules().items() if f.name == "__init__.py"}
    index, low, stack, on, groups = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    cycles = [g for g in groups if len([m for m in g if m not in faces]) > 1]
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_top_level_shows_the_pipeline():
    loose = sorted(f.name for f in ROOT.glob("*.py") if f.name not in ("__init__.py", "__main__.py", "cli.py"))
    assert len(loose) <= 4, f"loose modules directly under vispre/: {loose}"
