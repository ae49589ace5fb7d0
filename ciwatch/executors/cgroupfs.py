"""The cgroup filesystem as this process sees it: where step cgroups may be made
(`find`, from /proc/self/mountinfo and /proc/self/cgroup) and, on a delegated
cgroup v2, moving the daemon into a leaf of its own (`enter_leaf`).

cgroup v1 (or the v1 half of a hybrid layout): step cgroups go in ciwatch's own
cgroup of the `memory` and of the `pids` hierarchy, each when writable (as
root). cgroup v2 (unified): next to ciwatch's own cgroup, when its parent is
delegated to ciwatch (systemd's `Delegate=`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Hierarchy", "enter_leaf", "find", "v1_mounts", "write_value"]

_DELEGATE_XATTRS = ("trusted.delegate", "user.delegate")


@dataclass(frozen=True)
class Hierarchy:
    """Where step cgroups are made: a parent directory per controller (None: not
    available). For v2 both are the same directory."""

    version: int  # 1 or 2
    memory: Path | None
    pids: Path | None

    def describe(self) -> str:
        if self.version == 2:
            return f"cgroup v2 under {self.memory}"
        parts = [f"{n} under {d}" for n, d in (("memory", self.memory), ("pids", self.pids)) if d]
        return "cgroup v1: " + ", ".join(parts)


def find(proc: Path = Path("/proc")) -> Hierarchy | None:
    """Where this process may make step cgroups, or None when nowhere."""
    try:
        mounts = (proc / "self" / "mountinfo").read_text()
        own = (proc / "self" / "cgroup").read_text()
    except OSError:
        return None
    v1: dict[str, tuple[str, str]] = {}  # controller -> (mount root, mount point)
    v2: tuple[str, str] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        fstype, superopts = fields[sep + 1], fields[sep + 3] if len(fields) > sep + 3 else ""
        root, point = _unescape(fields[3]), _unescape(fields[4])
        if fstype == "cgroup2":
            v2 = (root, point)
        elif fstype == "cgroup":
            for opt in superopts.split(","):
                if opt in ("memory", "pids"):
                    v1[opt] = (root, point)
    paths: dict[str, str] = {}
    for line in own.splitlines():
        hid, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        for name in names.split(",") if names else ["" if hid == "0" else names]:
            paths[name] = path
    memory = _v1_dir(v1.get("memory"), paths.get("memory"))
    pids = _v1_dir(v1.get("pids"), paths.get("pids"))
    if memory or pids:
        return Hierarchy(1, memory, pids)
    if v2 is not None and "" in paths:
        parent = _v2_parent(v2, paths[""])
        if parent is not None:
            return Hierarchy(2, parent, parent)
    return None


def v1_mounts(proc: Path = Path("/proc")) -> dict[str, Path] | None:
    """The cgroup v1 hierarchies, when every cgroup mount (v1 and v2) shows its
    hierarchy from the root: controller or ``name=`` option -> mount point
    (a v2 mount on a hybrid layout as ""). None on a v2-only layout, when a
    mount shows only part of its hierarchy (a cgroup namespace), or unreadable."""
    try:
        mounts = (proc / "self" / "mountinfo").read_text()
    except OSError:
        return None
    found: dict[str, Path] = {}
    v1 = False
    for line in mounts.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        fstype = fields[sep + 1]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        if _unescape(fields[3]) != "/":
            return None
        point = Path(_unescape(fields[4]))
        if fstype == "cgroup2":
            found[""] = point
            continue
        v1 = True
        superopts = fields[sep + 3] if len(fields) > sep + 3 else ""
        for opt in superopts.split(","):
            if opt not in ("rw", "ro"):
                found[opt] = point
    return found if v1 else None


def _unescape(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")


def _inside(mount: tuple[str, str], path: str) -> Path | None:
    root, point = mount
    if root != "/" and path != root and not path.startswith(root.rstrip("/") + "/"):
        return None  # our cgroup is not visible through this mount
    rel = path[len(root) :] if root != "/" else path
    return Path(point, rel.lstrip("/"))


def _v1_dir(mount: tuple[str, str] | None, path: str | None) -> Path | None:
    if mount is None or path is None:
        return None
    found = _inside(mount, path)
    if found is None or not os.access(found / "cgroup.procs", os.W_OK):
        return None
    return found


def _v2_parent(mount: tuple[str, str], path: str) -> Path | None:
    own = _inside(mount, path)
    if own is None or path in ("", "/"):
        return None
    parent = own.parent
    try:
        controllers = set((parent / "cgroup.controllers").read_text().split())
    except OSError:
        return None
    if not {"memory", "pids"} <= controllers or not _delegated(parent):
        return None
    return parent


def _delegated(path: Path) -> bool:
    """Given to us to manage: systemd marks such a cgroup; without the mark, a
    non-root user owning it is the other way delegation shows."""
    for name in _DELEGATE_XATTRS:
        try:
            if os.getxattr(path, name) in (b"1", b"1\n"):
                return True
        except OSError:
            continue
    uid = os.geteuid()
    try:
        owner = (path / "cgroup.procs").stat().st_uid
    except OSError:
        return False
    return uid != 0 and owner == uid and os.access(path / "cgroup.subtree_control", os.W_OK)


def write_value(path: Path, value: int | str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def enter_leaf(proc: Path = Path("/proc"), name: str = "daemon") -> Path | None:
    """On cgroup v2, move this process into a leaf of its own delegated cgroup
    (what systemd 254's `DelegateSubgroup=` does), so step cgroups can be made
    beside it: a v2 cgroup holding processes cannot hand controllers down.
    Returns the leaf, or None when there is nothing to do (v1, not delegated,
    or already in a leaf)."""
    try:
        mounts = (proc / "self" / "mountinfo").read_text()
        own = (proc / "self" / "cgroup").read_text()
    except OSError:
        return None
    v2 = None
    for line in mounts.splitlines():
        fields = line.split()
        if "-" in fields and fields[fields.index("-") + 1] == "cgroup2":
            v2 = (_unescape(fields[3]), _unescape(fields[4]))
    path = next((ln[3:] for ln in own.splitlines() if ln.startswith("0::")), None)
    if v2 is None or path is None or path in ("", "/"):
        return None
    here = _inside(v2, path)
    if here is None or here.name == name or not _delegated(here):
        return None
    leaf = here / name
    try:
        leaf.mkdir(exist_ok=True)
        write_value(leaf / "cgroup.procs", os.getpid())
    except OSError:
        return None
    return leaf
