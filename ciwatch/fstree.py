"""Removing a directory tree that a step may have made hostile.

Every name is opened relative to its parent's descriptor with O_NOFOLLOW, so
a symlink (to a file, a directory, itself) is unlinked and never followed,
and nothing outside `root` is ever touched. Directories a step locked (mode
000, read-only) are opened up first. Other filesystems mounted below `root`
(bind mounts of the same filesystem too) are left alone and reported.

Deep trees cost neither recursion nor one descriptor per level: at most
`_OPEN_FDS` descriptors are held, and a parent whose descriptor was closed is
reopened through `..` from its child and checked to be the same directory.
A directory is read in batches, so a million entries do not sit in memory.
What cannot be removed (an immutable file, a busy mount point) is reported,
never raised.
"""

from __future__ import annotations

import errno
import os
import stat
from itertools import islice
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FDS = 64  # descriptors held along the current path, the root's included
_BATCH = 4096  # directory entries read at a time
_MAX_PROBLEMS = 50  # listed; the rest are counted

# A trie of mount points below the root, by path component; the key None marks one.
_Trie = dict


class _Frame:
    """One directory on the path from the root to where the walk is (the
    walk's own state, changed as it goes)."""

    __slots__ = ("name", "fd", "ident", "mounts", "todo", "failed")

    def __init__(self, name: str, fd: int, ident: tuple[int, int], mounts: _Trie | None) -> None:
        self.name = name  # in the parent; the root's own name for the root
        self.fd: int | None = fd  # None once closed to stay under _OPEN_FDS
        self.ident = ident  # (st_dev, st_ino): a reopened descriptor must match it
        self.mounts = mounts  # the part of the mount trie below this directory
        self.todo: list[tuple[str, bool]] = []  # (name, is a directory), read, not yet removed
        self.failed: set[str] = set()  # entries left behind: not read again


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.more = 0

    def add(self, text: str) -> None:
        if len(self.items) < _MAX_PROBLEMS:
            self.items.append(text)
        else:
            self.more += 1

    def result(self) -> list[str]:
        tail = [f"(and {self.more} more problems)"] if self.more else []
        return self.items + tail


def _unescape(field_: bytes) -> str:
    # mountinfo octal-escapes space, tab, newline and backslash
    return os.fsdecode(field_.decode("unicode_escape").encode("latin-1"))


def _mount_trie(root: Path) -> _Trie | None:
    """Mount points strictly below `root` as a trie; None when there are none."""
    try:
        lines = Path("/proc/self/mountinfo").read_bytes().splitlines()
    except OSError:
        return None
    base = os.path.realpath(root).rstrip("/") + "/"
    trie: _Trie = {}
    for line in lines:
        parts = line.split(b" ")
        if len(parts) <= 4:
            continue
        point = _unescape(parts[4])
        if not point.startswith(base):
            continue
        node = trie
        for part in point[len(base) :].split("/"):
            node = node.setdefault(part, {})
        node[None] = {}
    return trie or None


def _open_dir(parent_fd: int, name: str) -> int:
    """A descriptor of directory `name`, chmod-ed open first if a step locked it."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:
        # Never through a link: fchmodat without following refuses one.
        os.chmod(name, 0o700, dir_fd=parent_fd, follow_symlinks=False)
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)


def _writable(fd: int, st: os.stat_result) -> None:
    """Entries can be unlinked only from a directory we may write and search."""
    if st.st_mode & 0o300 != 0o300:
        try:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
        except OSError:
            pass  # not ours: the unlinks below report it


def _read_batch(frame: _Frame) -> list[tuple[str, bool]]:
    """The next entries still to remove, directories flagged (from d_type when
    the filesystem gives it, so a file costs no stat)."""
    with os.scandir(frame.fd) as entries:
        wanted = (e for e in entries if e.name not in frame.failed)
        return [(e.name, e.is_dir(follow_symlinks=False)) for e in islice(wanted, _BATCH)]


class _Walk:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems = _Problems()
        self.stack: list[_Frame] = []
        self.open_count = 0
        self.closed_upto = 1  # frames 1..closed_upto-1 have no descriptor (the root keeps its)

    def where(self, name: str | None = None) -> str:
        names = [f.name for f in self.stack[1:]] + ([name] if name is not None else [])
        return os.path.join(str(self.root), *names)

    def fail(self, name: str, why: str) -> None:
        top = self.stack[-1]
        top.failed.add(name)
        self.problems.add(f"{self.where(name)}: {why}")

    def push(self, name: str, fd: int, st: os.stat_result, mounts: _Trie | None) -> None:
        self.stack.append(_Frame(name, fd, (st.st_dev, st.st_ino), mounts))
        self.open_count += 1
        if self.open_count > _OPEN_FDS:
            # The lowest open one but the root's: reopened through `..` when needed.
            frame = self.stack[self.closed_upto]
            os.close(frame.fd)
            frame.fd = None
            self.closed_upto += 1
            self.open_count -= 1

    def close_all(self) -> None:
        for frame in self.stack:
            if frame.fd is not None:
                os.close(frame.fd)
                frame.fd = None
        self.open_count = 0

    def reopen_parent(self) -> bool:
        """Give the parent of the top frame a descriptor again, through `..`."""
        child, parent = self.stack[-1], self.stack[-2]
        fd = os.open("..", _DIR_FLAGS, dir_fd=child.fd)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != parent.ident:
            os.close(fd)
            return False
        parent.fd = fd
        self.open_count += 1
        self.closed_upto -= 1
        return True

    def enter(self, name: str) -> None:
        """Descend into directory `name` of the top frame, unless it is a mount."""
        top = self.stack[-1]
        below = top.mounts.get(name) if top.mounts else None
        if below is not None and None in below:
            self.fail(name, "a filesystem is mounted here; left alone")
            return
        try:
            fd = _open_dir(top.fd, name)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                self.unlink(name)  # no longer a directory (swapped for a link or a file)
            else:
                self.fail(name, exc.strerror or str(exc))
            return
        st = os.fstat(fd)
        if st.st_dev != self.stack[0].ident[0]:
            os.close(fd)
            self.fail(name, "a filesystem is mounted here; left alone")
            return
        _writable(fd, st)
        self.push(name, fd, st, below)

    def unlink(self, name: str) -> None:
        top = self.stack[-1]
        try:
            os.unlink(name, dir_fd=top.fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            self.enter(name)  # became a directory since it was listed
        except OSError as exc:
            self.fail(name, exc.strerror or str(exc))

    def leave(self, parent_fd: int) -> None:
        """The top directory is empty (or holds what could not go): remove it."""
        frame = self.stack.pop()
        os.close(frame.fd)
        self.open_count -= 1
        try:
            os.rmdir(frame.name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if self.stack:
                self.stack[-1].failed.add(frame.name)
            if not frame.failed:  # else the cause inside is reported already
                self.problems.add(f"{self.where(frame.name)}: {exc.strerror or exc}")

    def run(self, top_fd: int) -> None:
        unlink = os.unlink
        while self.stack:
            frame = self.stack[-1]
            if not frame.todo:
                frame.todo = _read_batch(frame)
                if not frame.todo:  # emptied: remove it from its parent
                    if len(self.stack) > 1 and self.stack[-2].fd is None:
                        if not self.reopen_parent():
                            self.problems.add(f"{self.where()}: moved while being removed; left")
                            return
                    self.leave(self.stack[-2].fd if len(self.stack) > 1 else top_fd)
                    continue
                frame.todo.reverse()  # taken from the end: in the order read
            todo, fd = frame.todo, frame.fd
            while todo:
                name, is_dir = todo.pop()
                if is_dir:
                    self.enter(name)
                    if self.stack[-1] is not frame:
                        break  # went down into it; the rest of `todo` waits
                    continue
                try:  # the common case inline: a million files are a million of these
                    unlink(name, dir_fd=fd)
                except OSError:
                    self.unlink(name)


def remove_tree(root: Path) -> list[str]:
    """Remove `root` and everything under it, never following a symlink,
    never entering another mount, never touching anything outside it.
    Returns what could not be removed ("path: reason"), empty on success."""
    root = Path(os.path.abspath(root))
    try:
        top = os.open(root.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return [] if isinstance(exc, FileNotFoundError) else [f"{root.parent}: {exc.strerror}"]
    walk = _Walk(root)
    try:
        try:
            st = os.lstat(root.name, dir_fd=top)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(root.name, dir_fd=top)  # a link where the root was: the link only
                return []
            fd = _open_dir(top, root.name)
        except FileNotFoundError:
            return []
        except OSError as exc:
            return [f"{root}: {exc.strerror or exc}"]
        st = os.fstat(fd)
        _writable(fd, st)
        walk.push(root.name, fd, st, _mount_trie(root))
        try:
            walk.run(top)
        except OSError as exc:  # the walk's own descriptors failed (EMFILE, EIO)
            walk.problems.add(f"{walk.where()}: {exc.strerror or exc}")
        return walk.problems.result()
    finally:
        walk.close_all()
        os.close(top)
