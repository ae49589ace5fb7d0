"""The filesystem side of retention: finding ciwatch's numbered directories,
measuring trees without following links, and the locks a pass takes.

Only names ciwatch itself makes are recognised (decimal ids without leading
zeros, `<run number>-<attempt>`); anything else in the state directory is
left alone. Nothing here follows a symlink.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_ID = re.compile(r"[1-9][0-9]{0,17}")
_ATTEMPT = re.compile(r"([1-9][0-9]{0,17})-([1-9][0-9]{0,8})")


def _real_dirs(root: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(root) as entries:
            return [e for e in entries if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def numbered_dirs(root: Path) -> list[tuple[int, Path]]:
    """(id, path) of the directories in `root` named by an id (`runs/17`)."""
    return sorted((int(e.name), root / e.name) for e in _real_dirs(root) if _ID.fullmatch(e.name))


def workspace_dirs(repo_dir: Path) -> dict[int, list[Path]]:
    """Run number -> its attempts' directories (`workspaces/<repo id>/<number>-<attempt>`)."""
    out: dict[int, list[Path]] = {}
    for e in _real_dirs(repo_dir):
        m = _ATTEMPT.fullmatch(e.name)
        if m:
            out.setdefault(int(m.group(1)), []).append(repo_dir / e.name)
    return {n: sorted(paths) for n, paths in out.items()}


def old_entries(root: Path, *, prefix: str = "", older_than: float | None = None) -> list[Path]:
    """Entries of `root` (files, links, directories) whose name starts with
    `prefix` and, with `older_than`, last modified before it (unix time)."""
    found: list[Path] = []
    try:
        with os.scandir(root) as entries:
            for e in entries:
                if not e.name.startswith(prefix):
                    continue
                try:
                    mtime = e.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
                if older_than is None or mtime < older_than:
                    found.append(root / e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(found)


def tree_size(path: Path) -> int:
    """Bytes a tree takes on disk (allocated blocks), links not followed, other
    filesystems not entered; 0 when it does not exist. What cannot be read
    (a directory a step locked) is not counted."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    total = st.st_blocks * 512
    if not stat.S_ISDIR(st.st_mode):
        return total
    dev, stack = st.st_dev, [str(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for e in entries:
                    try:
                        s = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += s.st_blocks * 512
                    if stat.S_ISDIR(s.st_mode) and s.st_dev == dev:
                        stack.append(e.path)
        except OSError:
            continue
    return total


def park(path: Path) -> Path:
    """Move a directory aside (`.gc-<name>` beside it) before removing it, so
    that whatever makes a new one under the old name starts afresh."""
    target = path.with_name(f".gc-{path.name}")
    os.rename(path, target)
    return target


class PassLock:
    """An exclusive flock on `path` for one retention pass: `with` gives True
    when held, False when another pass holds it and `wait` is False."""

    def __init__(self, path: Path, *, wait: bool) -> None:
        self.path = path
        self.wait = wait
        self.fd: int | None = None

    def __enter__(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # drops the flock
            self.fd = None


def mirror_dirs(root: Path) -> list[tuple[int, Path]]:
    """(repo id, path) of the mirrors in `root` (`mirrors/<repo id>.git`)."""
    found = []
    for e in _real_dirs(root):
        rid = e.name.removesuffix(".git")
        if e.name.endswith(".git") and _ID.fullmatch(rid):
            found.append((int(rid), root / e.name))
    return sorted(found)


@contextmanager
def free_lock(path: Path) -> Iterator[bool]:
    """The flock on `path` (a mirror's fetch lock), taken without waiting:
    True when it was free (held for the `with`), False when someone holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


@contextmanager
def cache_locks(cache_dir: Path) -> Iterator[bool]:
    """Every slot lock of a repository's cached checkouts (ciwatch.wscache),
    taken without waiting: True when all were free (they stay held for the
    `with`), False when a run holds one."""
    fds: list[int] = []
    free = True
    try:
        try:
            with os.scandir(cache_dir) as it:
                names = sorted(e.name for e in it if e.is_file(follow_symlinks=False))
        except FileNotFoundError:
            names, free = [], False  # gone meanwhile: nothing to do
        for name in names:
            if not name.endswith(".lock"):
                continue
            try:
                fd = os.open(cache_dir / name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                free = False
                break
        yield free
    finally:
        for fd in fds:
            os.close(fd)
