"""A step's resource limits, as the process and sandbox executors apply them.

- `open_files`, `file_size`, `cpu_time`: resource limits (soft and hard) set
  in the step's first process, inherited by all it starts. `cpu_time` counts
  per process, as `ulimit -t` does; the hard limit is one second above the
  soft one, so SIGXCPU comes first and SIGKILL after.
- `memory`, `processes`: the step's cgroup (see cgroups.py), which also gives
  the step's exact peak memory and whether the OOM killer or the process limit
  acted. Without a writable memory cgroup, `memory` becomes an address-space
  limit (RLIMIT_AS: allocations past it fail; programs that reserve much
  address space, such as the JVM or Go, may not start). Without a writable
  pids cgroup a step with `processes` is not started: no other limit holds a
  step that runs as root, nor one user's processes apart from another's.
"""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace

from ciwatch.errors import ExecutorError
from ciwatch.executors.base import LogSink
from ciwatch.executors.cgroups import Hierarchy, StepCgroup, Usage
from ciwatch.model import FailureKind, StepResult, StepState
from ciwatch.pipeline.plan import Resources
from ciwatch.pipeline.resources import describe_limit, rlimit_seconds

__all__ = ["Guard", "prepare", "explain"]

_INFINITY = resource.RLIM_INFINITY


@dataclass
class Guard:
    """What one step gets: limits for its first process and its cgroup, if any."""

    resources: Resources
    rlimits: tuple[tuple[int, int, int], ...] = ()
    cgroup: StepCgroup | None = None
    usage: Usage | None = None  # read by `close`

    @property
    def cgroup_procs(self) -> tuple[bytes, ...]:
        if self.cgroup is None:
            return ()
        return tuple(os.fsencode(p) for p in self.cgroup.procs_files)

    def close(self, sink: LogSink) -> None:
        """Read what the cgroup saw, then remove it (killing anything left)."""
        if self.cgroup is None:
            return
        self.usage = self.cgroup.usage()
        problem = self.cgroup.remove()
        if problem:
            sink.note(problem)
        self.cgroup = None


def prepare(
    res: Resources,
    hierarchy: Hierarchy | None,
    sink: LogSink,
    make: Callable[[Hierarchy], StepCgroup],
) -> Guard:
    """The guard for a step with `res`; raises ExecutorError when a limit it
    has cannot be enforced here. `make` creates the step's cgroup."""
    rlimits: list[tuple[int, int, int]] = []
    cgroup = None
    if hierarchy is not None:
        try:
            cgroup = make(hierarchy)
        except ExecutorError as exc:
            sink.note(f"warning: {exc}; the step runs without a cgroup")
    if cgroup is not None:
        try:
            cgroup.limit(_whole(res.memory_bytes), _whole(res.processes))
        except OSError as exc:
            cgroup.remove()
            raise ExecutorError(
                f"cannot set the step's limits in {exc.filename or 'its cgroup'}: {exc.strerror}"
            ) from exc
    if res.processes is not None and (cgroup is None or cgroup.pids is None):
        if cgroup is not None:
            cgroup.remove()
        raise ExecutorError(
            f"{describe_limit('processes', res.processes)} cannot be enforced here: "
            "no writable pids cgroup (see the resource limits in docs/security.md)"
        )
    if res.memory_bytes is not None and (cgroup is None or cgroup.memory is None):
        sink.note(
            f"{describe_limit('memory_bytes', res.memory_bytes)}: no writable memory cgroup, "
            "enforced as an address-space limit (allocations past it fail)"
        )
        rlimits.append(_rlimit(resource.RLIMIT_AS, res.memory_bytes, sink, "memory_bytes"))
    if res.open_files is not None:
        rlimits.append(_rlimit(resource.RLIMIT_NOFILE, res.open_files, sink, "open_files"))
    if res.file_size_bytes is not None:
        rlimits.append(_rlimit(resource.RLIMIT_FSIZE, res.file_size_bytes, sink, "file_size_bytes"))
    if res.cpu_seconds is not None:
        seconds = rlimit_seconds(res.cpu_seconds)
        rlimits.append(_rlimit(resource.RLIMIT_CPU, seconds, sink, "cpu_seconds", extra=1))
    return Guard(res, tuple(rlimits), cgroup)


def _whole(value: float | None) -> int | None:
    return None if value is None else int(value)


def _rlimit(which: int, value: float, sink: LogSink, field: str, extra: int = 0):
    """(which, soft, hard), within the hard limit ciwatch itself has: a step
    cannot be given more than that, so it gets the most there is, and is told."""
    soft, hard = int(value), int(value) + extra
    _, ours = resource.getrlimit(which)
    if ours != _INFINITY and hard > ours:
        sink.note(
            f"{describe_limit(field, value)} is above this system's hard limit "
            f"({ours}); using {ours}"
        )
        hard = ours
        soft = min(soft, ours)
    return (which, soft, hard)


def explain(result: StepResult, guard: Guard, sink: LogSink, status: int | None) -> StepResult:
    """The result with a reason naming the limit that stopped the step, if one did.

    `status` is the shell's wait status: a signal that killed it, or an exit
    code 128+N (a shell reports so a process it waited for that died of signal
    N; so does the sandbox for its shell)."""
    res, usage = guard.resources, guard.usage
    oom = usage.oom_kills if usage is not None else 0
    forks = usage.fork_failures if usage is not None else 0
    if result.state is StepState.SUCCESS:
        if oom:
            what = "memory_bytes"
            limit = describe_limit(what, res.memory_bytes) if res.memory_bytes else "memory"
            sink.note(f"a process of the step was killed: {limit} exceeded")
        return result
    if result.state is not StepState.FAILURE or result.failure not in (
        FailureKind.EXIT,
        FailureKind.SIGNAL,
    ):
        return result
    sig = _signal_of(status)
    why = ""
    if oom:
        if res.memory_bytes is not None:
            why = f"killed: {describe_limit('memory_bytes', res.memory_bytes)} exceeded"
        else:
            why = "killed: out of memory (the kernel's OOM killer)"
        why += f" ({result.reason})"
    elif sig == signal.SIGXCPU and res.cpu_seconds is not None:
        why = _by_signal("cpu_seconds", rlimit_seconds(res.cpu_seconds), "SIGXCPU", result)
    elif sig == signal.SIGXFSZ and res.file_size_bytes is not None:
        why = _by_signal("file_size_bytes", res.file_size_bytes, "SIGXFSZ", result)
    elif forks and res.processes is not None:
        why = f"{describe_limit('processes', res.processes)} reached (fork failed; {result.reason})"
    if not why:
        return result
    sink.note(why)
    return replace(result, reason=why)


def _by_signal(field: str, value: float, name: str, result: StepResult) -> str:
    text = f"{describe_limit(field, value)} exceeded ({name}"
    if result.failure is FailureKind.EXIT:
        text += f"; {result.reason}"
    return text + ")"


def _signal_of(status: int | None) -> int | None:
    if status is None:
        return None
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return -code
    return code - 128 if 128 < code < 128 + 65 else None
