"""`ciwatch demo`: an example repository made from the shipped pipeline."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from ciwatch.git import init_repo_with_files


def make_example_repo(target: Path) -> Path:
    """Create (once) a git repository at `target` holding the example pipeline."""
    if (target / ".git").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    src = resources.files("ciwatch") / "examples" / "demo"
    with resources.as_file(src) as folder:
        shutil.copytree(folder, target, dirs_exist_ok=True)
    init_repo_with_files(target, message="Example pipeline for ciwatch")
    return target
