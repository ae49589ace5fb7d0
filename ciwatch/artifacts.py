"""Collect a step's artifacts from its workspace into the run's artifact dir.

Only regular files inside the workspace are taken. Symlinks are never
followed (a link to /etc/shadow or to the daemon's token is skipped and
reported), and every file is opened with O_NOFOLLOW so a link swapped in
after the walk cannot be read through either.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Collected:
    path: str  # relative to the workspace, '/'-separated
    size: int
    stored: Path


@dataclass(frozen=True)
class Collection:
    files: tuple[Collected, ...]
    skipped: tuple[str, ...]  # human notes: symlinks, unreadable files


def _copy_nofollow(src: Path, dst: Path) -> int:
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{src} is not a regular file")
        dst.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        with open(dst, "wb") as out:
            while chunk := os.read(fd, _CHUNK):
                out.write(chunk)
                size += len(chunk)
        return size
    finally:
        os.close(fd)


def collect(
    workspace: Path,
    patterns: Iterable[str],
    dest: Path,
    matches: Callable[[str], bool],
) -> Collection:
    """Copy every regular file under `workspace` whose relative path `matches`.

    `patterns` is only used to say what was asked for; `matches` decides.
    """
    del patterns
    files: list[Collected] = []
    skipped: list[str] = []
    root = str(workspace)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            rel_dir = ""
            dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in sorted(filenames) + sorted(
            d for d in dirnames if os.path.islink(os.path.join(dirpath, d))
        ):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if not matches(rel):
                continue
            full = Path(dirpath, name)
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                skipped.append(f"{rel}: a symbolic link, not followed")
                continue
            if not stat.S_ISREG(mode):
                continue
            try:
                size = _copy_nofollow(full, dest / rel)
            except OSError as exc:
                skipped.append(f"{rel}: {exc.strerror or exc}")
                continue
            files.append(Collected(rel, size, dest / rel))
    return Collection(tuple(files), tuple(skipped))
