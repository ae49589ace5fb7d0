"""One control group per step: memory and process limits, exact peak memory, clean kill.

Why cgroups: steps may run as root, and RLIMIT_NPROC does not bind root;
RLIMIT_AS counts address space, not memory. A cgroup holds every process the
step starts, whatever it does, and the kernel enforces its limits.

Where step cgroups are made (`find`, in cgroupfs.py):

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
from ciwatch.executors.cgroupfs import Hierarchy, enter_leaf, find, write_value

# Hierarchy, find and enter_leaf are re-exported: callers know them from here.
__all__ = [
    "Hierarchy",
    "StepCgroup",
    "Usage",
    "alive",
    "create",
    "enter_leaf",
    "find",
    "remove_dir",
]

PREFIX = "ciwatch-"


@dataclass(frozen=True)
class Usage:
    """What a step cgroup saw, read before it is removed."""

    peak_bytes: int | None  # None: this kernel does not say
    oom_kills: int  # processes killed by the OOM killer
    fork_failures: int  # forks refused at the process limit


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
                write_value(self.memory / "memory.max", memory_bytes)
                _write_if_there(self.memory / "memory.swap.max", 0)  # the limit is real memory
                _write_if_there(self.memory / "memory.oom.group", 1)  # the whole step goes
            else:
                write_value(self.memory / "memory.limit_in_bytes", memory_bytes)
                _write_if_there(self.memory / "memory.memsw.limit_in_bytes", memory_bytes)
        if processes is not None and self.pids is not None:
            write_value(self.pids / "pids.max", processes)

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


def remove_dir(path: Path, timeout: float = 5.0) -> str:
    """Remove one cgroup without children, killing what is left in it; "" or
    what went wrong."""
    return _remove(path, time.monotonic() + timeout, time.sleep)


def alive(pid: int) -> bool:
    return _alive(pid)


def _enable_controllers(parent: Path) -> None:
    try:
        enabled = set((parent / "cgroup.subtree_control").read_text().split())
        missing = {"memory", "pids"} - enabled
        if missing:
            write_value(
                parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(missing))
            )
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


def _write_if_there(path: Path, value: int | str) -> bool:
    try:
        write_value(path, value)
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
