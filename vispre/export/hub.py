"""Upload an export folder to the Hugging Face Hub (``vispre export ... --push-to-hub REPO``).

Afterwards anyone loads it with ``timm.create_model("hf-hub:REPO", pretrained=True)``.
"""

from __future__ import annotations

from pathlib import Path


def folder_files(folder: str | Path) -> list[tuple[str, int]]:
    """(name, bytes) of the files an upload sends: the export's own top-level files. Sub-folders (such as
    the eval/ results and feature caches ``vispre eval`` may keep there) and hidden files stay local."""
    return sorted((p.name, p.stat().st_size) for p in Path(folder).iterdir() if p.is_file() and p.name[0] != ".")


def push_to_hub(folder: str | Path, repo_id: str, dry_run: bool = False, private: bool = False,
                commit_message: str = "Add vispre encoder") -> list[tuple[str, int]]:
    """Create ``repo_id`` (a model repo) if needed and upload the folder; ``dry_run``: only list the files.

    Credentials come from huggingface_hub's usual places (``hf auth login``, ``HF_TOKEN``).
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not an exported encoder (no config.json)")
    files = folder_files(folder)
    if dry_run:
        return files
    from huggingface_hub import HfApi

    api = HfApi()
    repo = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), repo_type="model",
                      commit_message=commit_message, allow_patterns=[name for name, _ in files])
    return files
