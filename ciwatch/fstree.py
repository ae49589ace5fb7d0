"""Removing a directory tree that a step may have made hostile.

Symlinks are never followed, directories a step locked (mode 000) are opened
up first, other mounts under the tree are left alone, and deep trees do not
hit the recursion limit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _mounts_under(root: Path) -> set[str]:
    """Mount points below `root` (bind mounts of the same filesystem included,
    which st_dev alone cannot show)."""
    try:
        lines = Path("/proc/self/mountinfo").read_bytes().splitlines()
    except OSError:
        return set()
    prefix = os.fsencode(root) + b"/"
    # Field 5 is the mount point, with space, tab, newline, backslash octal-escaped.
    points = (line.split(b" ")[4] for line in lines if len(line.split(b" ")) > 4)
    return {
        os.fsdecode(p.decode("unicode_escape").encode("latin-1"))
        for p in points
        if p.startswith(prefix)
    }


def _open_dir(parent_fd: int, name: str, shown: str, problems: list[str]) -> tuple | None:
    """(fd, entries) of a directory, opened up first if a step locked it (mode 000)."""
    try:  # never through a symlink: a dir swapped for a link is refused, not chmod-ed
        os.chmod(name, 0o700, dir_fd=parent_fd, follow_symlinks=False)
    except (OSError, ValueError, NotImplementedError):
        pass
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        problems.append(f"{shown}: {exc.strerror}")
        return None
    try:
        return fd, os.listdir(fd)
    except OSError as exc:
        os.close(fd)
        problems.append(f"{shown}: {exc.strerror}")
        return None


def remove_tree(root: Path) -> list[str]:
    """Remove `root` without following symlinks or entering other mounts.
    Iterative (deep trees do not hit the recursion limit); returns what failed."""
    problems: list[str] = []
    try:
        top = os.open(root.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return [] if isinstance(exc, FileNotFoundError) else [f"{root.parent}: {exc.strerror}"]
    stack: list[tuple[int, str, str, list[str]]] = []  # (fd, name in parent, shown, left)
    try:
        try:
            st = os.lstat(root.name, dir_fd=top)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(root.name, dir_fd=top)  # a link where the root was: the link only
                return problems
        except FileNotFoundError:
            return problems
        mounts = _mounts_under(root)
        opened = _open_dir(top, root.name, str(root), problems)
        if opened:
            stack.append((opened[0], root.name, str(root), opened[1]))
        while stack:
            fd, name, shown, left = stack[-1]
            if not left:
                stack.pop()
                os.close(fd)
                try:
                    os.rmdir(name, dir_fd=stack[-1][0] if stack else top)
                except OSError as exc:
                    problems.append(f"{shown}: {exc.strerror}")
                continue
            child = left.pop()
            where = f"{shown}/{child}"
            try:
                cst = os.lstat(child, dir_fd=fd)
                if not stat.S_ISDIR(cst.st_mode):
                    os.unlink(child, dir_fd=fd)
                elif cst.st_dev != st.st_dev or where in mounts:
                    problems.append(f"{where}: a filesystem is mounted here; left alone")
                elif opened := _open_dir(fd, child, where, problems):
                    stack.append((opened[0], child, where, opened[1]))
            except FileNotFoundError:
                pass
            except OSError as exc:
                problems.append(f"{where}: {exc.strerror}")
        return problems
    finally:
        for fd, *_ in stack:
            os.close(fd)
        os.close(top)
