"""One control group per step: memory and process limits, exact peak memory, clean kill.

Why cgroups: steps may run as root, and RLIMIT_NPROC does not bind root;
RLIMIT_AS counts address space, not memory. A cgroup holds every process the
step starts, whatever it does, and the kernel enforces its limits.

Where step cgroups are made (`find`):

- cgroup v1 (or the v1 half of a hybrid layout): in ciwatch's own cgroup of
  the `memory` and of the `pids` hierarchy, each when writable (as root).
- cgroup v2 (unified): next to ciwatch's own cgroup, when its parent is
  delegated to ciwatch: systemd's `Delegate=` (the daemon moves itself into a
  leaf at start, `enter_leaf`; step cgroups are that leaf's siblings). Controllers
  `memory` and `pids` are enabled in the parent's `cgroup.subtree_control`.

A step cgroup is named ``ciwatch-<pid>-<n>`` (the pid of the ciwatch process
that made it); one left by a process that died is removed by the next one
made in the same place. Files used: v2 ``memory.max``, ``memory.swap.max``,
``memory.oom.group``, ``memory.peak``, ``memory.events`` (oom_kill),
``pids.max``, ``pids.events`` (max), ``cgroup.kill``; v1
``memory.limit_in_bytes``, ``memory.memsw.limit_in_bytes``,
``memory.max_usage_in_bytes``, ``memory.oom_control`` (oom_kill), ``pids.max``,
``pids.events``.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ciwatch.errors import ExecutorError

__all__ = ["Hierarchy", "StepCgroup", "Usage", "find", "create"]

PREFIX = "ciwatch-"
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


@dataclass(frozen=True)
class Usage:
    """What a step cgroup saw, read before it is removed."""

    peak_bytes: int | None  # None: this kernel does not say
    oom_kills: int  # processes killed by the OOM killer
    fork_failures: int  # forks refused at the process limit


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


class StepCgroup:
    """One step's cgroup directories (one for v2; memory and pids for v1)."""

    def __init__(self, version: int, memory: Path | None, pids: Path | None) -> None:
        self.version = version
        self.memory = memory
        self.pids = pids

    @property
    def dirs(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(d for d in (self.memory, self.pids) if d is not None))

    @property
    def procs_files(self) -> tuple[Path, ...]:
        """What the step's first process writes its pid to, to join."""
        return tuple(d / "cgroup.procs" for d in self.dirs)

    def limit(self, memory_bytes: int | None, processes: int | None) -> None:
        """Set the limits (None: none); raises OSError."""
        if memory_bytes is not None and self.memory is not None:
            if self.version == 2:
                _write(self.memory / "memory.max", memory_bytes)
                _write_if_there(self.memory / "memory.swap.max", 0)  # the limit is real memory
                _write_if_there(self.memory / "memory.oom.group", 1)  # the whole step goes
            else:
                _write(self.memory / "memory.limit_in_bytes", memory_bytes)
                _write_if_there(self.memory / "memory.memsw.limit_in_bytes", memory_bytes)
        if processes is not None and self.pids is not None:
            _write(self.pids / "pids.max", processes)

    def usage(self) -> Usage:
        peak = None
        oom = forks = 0
        if self.memory is not None:
            name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
            peak = _read_int(self.memory / name)
            events = "memory.events" if self.version == 2 else "memory.oom_control"
            oom = _keyed(self.memory / events).get("oom_kill", 0)
        if self.pids is not None:
            forks = _keyed(self.pids / "pids.events").get("max", 0)
        return Usage(peak, oom, forks)

    def remove(self, timeout: float = 5.0, sleep: Callable[[float], None] = time.sleep) -> str:
        """Kill whatever is left in it and remove it; "" or what went wrong."""
        deadline = time.monotonic() + timeout
        problem = ""
        for path in reversed(self.dirs):
            problem = _remove(path, deadline, sleep) or problem
        return problem


def create(hierarchy: Hierarchy, pid: int, start: int = 0) -> StepCgroup:
    """A new step cgroup (``ciwatch-<pid>-<n>``, the first n >= start free in
    every parent); raises ExecutorError saying where and why it cannot."""
    parents = {"memory": hierarchy.memory, "pids": hierarchy.pids}
    for parent in dict.fromkeys(p for p in parents.values() if p is not None):
        _sweep(parent)
        if hierarchy.version == 2:
            _enable_controllers(parent)
    n = start
    while True:
        name = f"{PREFIX}{pid}-{n}"
        made: dict[str, Path] = {}
        try:
            for key, parent in parents.items():
                if parent is None:
                    continue
                path = parent / name
                if path not in made.values():
                    path.mkdir()
                made[key] = path
        except FileExistsError:
            for path in dict.fromkeys(made.values()):
                _rmdir(path)
            n += 1
            continue
        except OSError as exc:
            for path in dict.fromkeys(made.values()):
                _rmdir(path)
            raise ExecutorError(
                f"cannot create the step's cgroup {exc.filename}: {exc.strerror}"
            ) from exc
        return StepCgroup(hierarchy.version, made.get("memory"), made.get("pids"))


def _enable_controllers(parent: Path) -> None:
    try:
        enabled = set((parent / "cgroup.subtree_control").read_text().split())
        missing = {"memory", "pids"} - enabled
        if missing:
            _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(missing)))
    except OSError as exc:
        raise ExecutorError(
            f"cannot enable the memory and pids controllers in {parent}: {exc.strerror} "
            "(ciwatch must run in a leaf cgroup below it, e.g. systemd's DelegateSubgroup=)"
        ) from exc


def _sweep(parent: Path) -> None:
    """Remove step cgroups whose maker died (they are empty, or killed now)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        owner = name[len(PREFIX) :].partition("-")[0]
        if owner.isdigit() and not _alive(int(owner)):
            _remove(parent / name, time.monotonic() + 1.0, time.sleep)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path, deadline: float, sleep: Callable[[float], None]) -> str:
    delay = 0.001
    while True:
        try:
            path.rmdir()
            return ""
        except FileNotFoundError:
            return ""
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                return f"cannot remove the step's cgroup {path}: {exc.strerror}"
        _kill_all(path)
        sleep(delay)
        delay = min(delay * 2, 0.05)


def _kill_all(path: Path) -> None:
    if _write_if_there(path / "cgroup.kill", 1):
        return
    try:
        pids = (path / "cgroup.procs").read_text().split()
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _write(path: Path, value: int | str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _write_if_there(path: Path, value: int | str) -> bool:
    try:
        _write(path, value)
    except OSError:
        return False  # an older kernel, or no swap accounting: not needed for the limit
    return True


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _keyed(path: Path) -> dict[str, int]:
    """A flat keyed file ("oom_kill 1\\nmax 3") as a dict; {} if unreadable."""
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


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
        _write(leaf / "cgroup.procs", os.getpid())
    except OSError:
        return None
    return leaf
