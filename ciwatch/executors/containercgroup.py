"""A parent cgroup per container step: its CPU time and peak memory, read
after the container, and the container's own cgroup, are gone.

podman with the cgroupfs manager on cgroup v1 puts a container's cgroup at
``<--cgroup-parent>/libpod-<id>`` in every hierarchy (and its conmon at
``<parent>/conmon``), making the parent where it is missing. ciwatch makes the
parent ``/ciwatch-ct-<pid>-<token>`` in the cpuacct and memory hierarchies
first. The kernel charges CPU time and memory to every ancestor of a cgroup, so
the parent's ``cpuacct.usage`` and ``memory.max_usage_in_bytes`` still hold
the container's use (and conmon's: milliseconds, a few MB) once its cgroup is
removed. The parent is then removed from every hierarchy; one left by a
ciwatch process that died is removed by the next parent made.

Elsewhere (cgroup v2 only, podman's systemd manager, docker, rootless, no
writable cgroup) there is no parent, and nothing is measured.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ciwatch.errors import ExecutorError
from ciwatch.executors.base import LogSink
from ciwatch.executors.cgroups import alive, remove_dir
from ciwatch.executors.engine import Engine

PREFIX = "ciwatch-ct-"
_NEEDED = ("cpuacct", "memory")


@dataclass(frozen=True)
class Accounting:
    cpu_seconds: float | None  # user + system of everything in the container
    peak_bytes: int | None


class ParentCgroup:
    """One step's parent cgroup, `name` in every hierarchy in `mounts`."""

    def __init__(self, name: str, mounts: Mapping[str, Path]) -> None:
        self.name = name
        self._mounts = dict(mounts)

    @property
    def argument(self) -> str:
        """What ``--cgroup-parent`` gets."""
        return "/" + self.name

    def usage(self) -> Accounting:
        ns = _read_int(self._mounts["cpuacct"] / self.name / "cpuacct.usage")
        peak = _read_int(self._mounts["memory"] / self.name / "memory.max_usage_in_bytes")
        return Accounting(None if ns is None else ns / 1e9, peak or None)

    def remove(self) -> str:
        """Remove it (and what the engine made below it) everywhere; "" or the
        first thing that went wrong."""
        problem = ""
        for point in dict.fromkeys(self._mounts.values()):
            problem = problem or _remove_tree(point / self.name)
        return problem


def where(
    engine: Engine,
    engine_args: Sequence[str],
    find: Callable[[], Mapping[str, Path] | None],
) -> Mapping[str, Path] | None:
    """The hierarchies step parents are made in, or None when there are none
    to make (see the module doc). Asks the engine once: call once per engine."""
    if any(a.startswith("--cgroup") for a in engine_args):
        return None  # the configuration decides where containers go
    try:
        if engine.cgroups() != ("cgroupfs", "v1"):
            return None
    except ExecutorError:
        return None
    return find()


def finish(parent: ParentCgroup | None, sink: LogSink) -> Accounting:
    """What the step used; removes its parent (a problem becomes a note)."""
    if parent is None:
        return Accounting(None, None)
    used = parent.usage()
    problem = parent.remove()
    if problem:
        sink.note(problem)
    return used


def make(mounts: Mapping[str, Path] | None, pid: int, token: str) -> ParentCgroup:
    """A new parent cgroup for one container step; raises ExecutorError saying
    where and why it cannot be made."""
    if mounts is None or not all(c in mounts for c in _NEEDED):
        raise ExecutorError("no cgroup v1 cpuacct and memory hierarchies")
    for point in dict.fromkeys(mounts.values()):
        _sweep(point)
    name = f"{PREFIX}{pid}-{token}"
    made: list[Path] = []
    try:
        for controller in _NEEDED:
            path = mounts[controller] / name
            path.mkdir()
            made.append(path)
    except OSError as exc:
        for path in made:
            remove_dir(path)
        raise ExecutorError(
            f"cannot create the step's cgroup {exc.filename}: {exc.strerror}"
        ) from exc
    return ParentCgroup(name, mounts)


def _sweep(point: Path) -> None:
    """Remove parents whose maker died."""
    try:
        names = os.listdir(point)
    except OSError:
        return
    for name in names:
        if name.startswith(PREFIX):
            owner = name[len(PREFIX) :].partition("-")[0]
            if owner.isdigit() and not alive(int(owner)):
                _remove_tree(point / name, timeout=1.0)


def _remove_tree(path: Path, timeout: float = 5.0) -> str:
    """Children first: a cgroup with children cannot be removed."""
    if not path.is_dir():
        return ""
    problem = ""
    for top, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            problem = problem or remove_dir(Path(top, d), timeout)
    return problem or remove_dir(path, timeout)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
