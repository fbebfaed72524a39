"""Upload an export folder to the Hugging Face Hub (``vispre export ... --push-to-hub REPO``).

Afterwards anyone loads it with ``timm.create_model("hf-hub:REPO", pretrained=True)``.
"""

from __future__ import annotations

from pathlib import Path

from .card import _ABSOLUTE

TEXT_SUFFIXES = (".json", ".md", ".txt", ".yaml", ".yml")


def folder_files(folder: str | Path) -> list[tuple[str, int]]:
    """(name, bytes) of the files an upload sends: the export's own top-level files. Sub-folders (such as
    the eval/ results and feature caches ``vispre eval`` may keep there) and hidden files stay local."""
    return sorted((p.name, p.stat().st_size) for p in Path(folder).iterdir() if p.is_file() and p.name[0] != ".")


def local_paths(folder: str | Path, names: list[str]) -> list[tuple[str, str]]:
    """(file, path) for each absolute local path in the text files ``names`` of ``folder`` (an export written
    before vispre replaced them, or a file added by hand)."""
    found = []
    for name in names:
        if name.endswith(TEXT_SUFFIXES):
            text = (Path(folder) / name).read_text(errors="replace")
            found += [(name, m.group(0)) for m in _ABSOLUTE.finditer(text)][:3]
    return found


def push_to_hub(folder: str | Path, repo_id: str, dry_run: bool = False, private: bool = False,
                commit_message: str = "Add vispre encoder") -> list[tuple[str, int]]:
    """Create ``repo_id`` (a model repo) if needed and upload the folder; ``dry_run``: only list the files.

    Credentials come from huggingface_hub's usual places (``hf auth login``, ``HF_TOKEN``).
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not an exported encoder (no config.json)")
    files = folder_files(folder)
    leaks = local_paths(folder, [name for name, _ in files])
    if leaks:
        raise ValueError(f"{folder}: refusing to publish local paths: "
                         + "; ".join(f"{name}: {path}" for name, path in leaks[:5])
                         + " (re-export the folder with this vispre, which writes them as <local>/NAME)")
    if dry_run:
        return files
    from huggingface_hub import HfApi

    api = HfApi()
    repo = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), repo_type="model",
                      commit_message=commit_message, allow_patterns=[name for name, _ in files])
    return files
