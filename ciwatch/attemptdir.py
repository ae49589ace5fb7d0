"""One attempt's directory (its checkout, HOME and TMPDIR) and where it lives.

Layout under the state root::

    workspaces/<repo_id>/<run>-<attempt>/
        src/                        the checkout (the step's cwd)
        home/                       the step's HOME
        tmp/                        the step's TMPDIR

No path is ever derived from a ref, a repository name or a step name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ciwatch.diskspace import human_size, measure
from ciwatch.errors import WorkspaceError
from ciwatch.fstree import remove_tree

__all__ = ["Workspace", "no_space", "non_negative", "workspace_dir"]


def non_negative(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise WorkspaceError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def no_space(path: Path, detail: str) -> str | None:
    """A plain "no space left on device" message when `detail` (git's or the
    system's words) says the filesystem holding `path` is full; else None."""
    if "No space left on device" not in detail and "Disk quota exceeded" not in detail:
        return None
    try:
        free = f"{human_size(measure(path).free)} free"
    except OSError:
        free = "free space unknown"
    return f"no space left on device ({free} on the filesystem of {path}): {detail}"


def workspace_dir(root: Path, repo_id: int, run_number: int, attempt: int) -> Path:
    """The attempt directory: built from numbers only, never from ref or step names."""
    return (
        Path(root)
        / "workspaces"
        / str(non_negative("repo_id", repo_id))
        / f"{non_negative('run_number', run_number)}-{non_negative('attempt', attempt)}"
    )


@dataclass(frozen=True)
class Workspace:
    """One attempt's directory. Steps run in `path` with HOME=`home`, TMPDIR=`tmp`;
    home and tmp sit beside the checkout, so nothing there shows in `git status`."""

    root: Path

    @property
    def path(self) -> Path:
        return self.root / "src"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def create(self) -> None:
        if self.root.exists() and any(self.root.iterdir()):
            raise WorkspaceError(f"workspace {self.root} already exists")
        try:
            for d in (self.root, self.home, self.tmp):
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            detail = f"cannot create workspace {self.root}: {exc.strerror or exc}"
            raise WorkspaceError(no_space(self.root, detail) or detail) from None

    def remove(self) -> None:
        """Delete the attempt directory and nothing else: symlinks are unlinked,
        never followed; other filesystems mounted inside are left alone;
        unreadable dirs are opened up first. Retried once; what is still left
        raises WorkspaceError naming it."""
        root = Path(os.path.abspath(self.root))
        if root == Path(root.anchor) or not root.name:
            raise WorkspaceError(f"refusing to remove {root}")
        problems = remove_tree(root)
        if problems:
            problems = remove_tree(root)
        if problems:
            more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
            shown = "; ".join(problems[:5]) + more
            raise WorkspaceError(f"could not remove workspace {root} (tried twice): {shown}")
