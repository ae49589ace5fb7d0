"""The `process` executor: a step runs as plain processes on this machine.

The script is written to ``<script_dir>/step-<index>.sh`` (0700; named by the
step's index, never its name) and run as ``[*shell, scriptfile]`` in the
workspace with exactly the given environment, stdin from /dev/null and stdout
and stderr merged into one pipe, in a session of its own under a per-step
supervisor that is a child subreaper (see ``supervise``).

Ending a step: a timeout, an idle timeout (no output for that long) or a cancel
sends SIGTERM to every process of the step, then SIGKILL after ``spec.grace``
seconds. When the shell exits by itself, processes it left behind (background
jobs, ``setsid``, double forks) get the same SIGTERM-then-SIGKILL treatment, so
nothing outlives the step; the step's result is still the shell's. The end of
the step is the shell's exit, never the end of its output pipe: a process that
escapes with the pipe open cannot hold ciwatch, and reading stops at most
``drain`` seconds after the last process of the step is gone.

Resource limits (``step.resources``) and the step's cgroup: see ``limits``.
"""

from __future__ import annotations

import itertools
import math
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from ciwatch.errors import ExecutorError
from ciwatch.executors import cgroups, limits, stepstart, supervise
from ciwatch.executors.base import CancelToken, LogSink, StepSpec
from ciwatch.executors.stepstart import Wrap
from ciwatch.model import FailureKind, StepResult, StepState


@dataclass
class _Progress:
    """What the watch loop learned (mutable, local to one run)."""

    spawn_error: str = ""  # "chdir" or "spawn" when the shell could not start
    spawn_errno: int = 0
    status: int | None = None  # the shell's wait status
    stop: FailureKind | None = None  # why we stopped it, if we did
    kill_sent: bool = False
    killed: int = 0  # processes SIGKILLed (reported by the supervisor)
    leftovers: int = 0  # processes left running when the shell exited
    no_subreaper: bool = False
    cpu_seconds: float | None = None  # the step's processes, all of them
    max_rss_kib: int | None = None  # the largest of them


def format_duration(seconds: float) -> str:
    """2 -> "2s", 0.5 -> "0.5s", 90 -> "1m30s", 3600 -> "1h"."""
    if seconds < 60:
        return f"{round(seconds, 2):g}s"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n)


def stop_reason(
    cancel: CancelToken, ran: float, timeout: float, quiet: float, idle: float | None
) -> tuple[FailureKind | None, str]:
    """Why a step that `ran` seconds, the last `quiet` of them without output,
    must be stopped now, with the words of the note; (None, "") if it need not."""
    if cancel.canceled:
        return FailureKind.CANCELED, cancel.reason or "canceled"
    if ran >= timeout:
        return FailureKind.TIMEOUT, f"timed out after {format_duration(timeout)}"
    if idle is not None and quiet >= idle:
        return FailureKind.IDLE_TIMEOUT, f"no output for {format_duration(idle)} (idle timeout)"
    return None, ""


class ProcessExecutor:
    """Runs steps as supervised local processes (implements executors.base.Executor).

    `clock` stamps results; `monotonic` measures timeouts; `poll` bounds how
    long a cancel takes to be noticed. `wrap`, if given, runs the step's command
    under another program (a sandbox) with the same supervision;
    `leftover_notes=False` silences the note about processes left behind, for
    a wrapper whose own processes outlive the shell by design. `cgroups` is
    where step cgroups are made: "auto" finds it (cgroups.find), None never
    makes one.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        poll: float = 0.05,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        drain: float = 1.0,
        kill_wait: float = 5.0,
        read_size: int = 256 * 1024,
        wrap: Wrap | None = None,
        leftover_notes: bool = True,
        cgroups: cgroups.Hierarchy | None | str = "auto",
    ) -> None:
        self._clock = clock
        self._poll = poll
        self._mono = monotonic
        self._drain = drain
        self._kill_wait = kill_wait
        self._read_size = read_size
        self._wrap = wrap
        self._leftover_notes = leftover_notes
        self._prctl = supervise.load_prctl()
        self._cgroups = _find_cgroups() if cgroups == "auto" else cgroups
        self._cgroup_seq = itertools.count()

    def run(self, spec: StepSpec, sink: LogSink, cancel: CancelToken) -> StepResult:
        started = self._clock()
        if cancel.canceled:
            reason = f"{cancel.reason or 'canceled'} (before it started)"
            return self._result(StepState.CANCELED, FailureKind.CANCELED, reason, started)
        script = guard = None
        try:
            script = stepstart.write_script(spec)
            guard = limits.prepare(spec.step.resources, self._cgroups, sink, self._new_cgroup)
            request = stepstart.request(spec, script, self._wrap, guard)
            sup = supervise.start(request, self._prctl)
        except (stepstart.CannotStart, ExecutorError, OSError) as exc:
            if script is not None:
                stepstart.unlink(script)
            if guard is not None:
                guard.close(sink)
            reason = f"cannot start step: {stepstart.describe(exc)}"
            sink.note(reason)
            return self._result(StepState.ERROR, FailureKind.INFRA, reason, started)
        try:
            progress = self._watch(sup, spec, sink, cancel)
        finally:
            sup.close()
            guard.close(sink)
            stepstart.unlink(script)
        return self._finish(progress, spec, cancel, sink, started, guard)

    def _new_cgroup(self, hierarchy: cgroups.Hierarchy) -> cgroups.StepCgroup:
        return cgroups.create(hierarchy, os.getpid(), next(self._cgroup_seq))

    def _result(self, state, failure, reason, started, exit_code=None) -> StepResult:
        return StepResult(
            state=state,
            exit_code=exit_code,
            failure=failure,
            reason=reason,
            started_at=started,
            finished_at=self._clock(),
        )

    def _watch(self, sup, spec: StepSpec, sink: LogSink, cancel: CancelToken) -> _Progress:
        p = _Progress()
        step = spec.step
        mono = self._mono
        start = last_out = mono()
        idle = step.idle_timeout
        term_at = kill_at = exited_at = done_at = None
        poller = select.poll()
        poller.register(sup.out_fd, select.POLLIN)
        poller.register(sup.status_fd, select.POLLIN)
        out_open = st_open = True
        while out_open or st_open:
            now = mono()
            wait = self._poll
            if not st_open:
                wait = done_at + self._drain - now
            elif p.stop is None and p.status is None:
                wait = min(wait, start + step.timeout - now)
                if idle is not None:
                    wait = min(wait, last_out + idle - now)
            elif kill_at is None and term_at is not None:
                wait = min(wait, term_at + spec.grace - now)
            for fd, _ in poller.poll(max(0, math.ceil(wait * 1000))):
                if fd == sup.out_fd:
                    data = os.read(fd, self._read_size)
                    if data:
                        sink.write(data)
                        last_out = mono()
                    else:
                        out_open = False
                        poller.unregister(fd)
                    continue
                events = sup.read_events()
                if events is None:
                    st_open = False
                    poller.unregister(fd)
                    done_at = mono()
                    continue
                for ev in events:
                    _apply(ev, p)
                    if ev.kind == "X":
                        exited_at = mono()
            now = mono()
            if not st_open:
                if out_open and now >= done_at + self._drain:
                    sink.note(
                        "the step's output pipe is still open after all its processes ended "
                        f"(held outside the step?); stopped reading after {self._drain:g}s"
                    )
                    break
                continue
            if p.stop is None and p.status is None and not p.spawn_error:
                p.stop, what = stop_reason(cancel, now - start, step.timeout, now - last_out, idle)
                if p.stop is not None:
                    sup.terminate()
                    term_at = now
                    sink.note(f"{what}: sending SIGTERM to the step's processes")
            elif p.stop is not None and kill_at is None and now >= term_at + spec.grace:
                sup.kill()
                kill_at = now
                p.kill_sent = True
                sink.note(
                    f"still running {format_duration(spec.grace)} after SIGTERM: sending SIGKILL"
                )
            if kill_at is not None:
                limit = kill_at + self._kill_wait
            elif exited_at is not None:
                limit = exited_at + spec.grace + self._kill_wait
            else:
                limit = None
            if limit is not None and now >= limit:
                sink.note("some of the step's processes did not exit after SIGKILL; not waiting")
                break
        return p

    def _finish(self, p: _Progress, spec, cancel, sink, started, guard) -> StepResult:
        result = self._outcome(p, spec, cancel, sink, started)
        result = limits.explain(result, guard, sink, p.status)
        peak = guard.usage.peak_bytes if guard.usage is not None else None
        # The cgroup's peak is the step's whole memory; the sampled one, its largest process.
        rss = math.ceil(peak / 1024) if peak else p.max_rss_kib
        return replace(result, cpu_seconds=p.cpu_seconds, max_rss_kib=rss)

    def _outcome(self, p: _Progress, spec, cancel, sink, started) -> StepResult:
        if p.no_subreaper:
            sink.note("warning: no subreaper: processes that left the step may have survived it")
        if p.leftovers and p.stop is None and self._leftover_notes:
            how = "SIGTERM"
            if p.killed:
                how += f", then SIGKILL after {format_duration(spec.grace)}"
            sink.note(
                f"the step's shell exited and left {p.leftovers} process(es) running: "
                f"stopped them ({how})"
            )
        if p.spawn_error:
            if p.spawn_error == "chdir":
                what = f"working directory {spec.workdir}"
            elif p.spawn_error == "cgroup":
                what = "cannot join the step's cgroup"
            elif p.spawn_error == "rlimit":
                what = "cannot set the step's resource limits"
            else:
                what = f"shell {spec.step.shell[0]!r}"
            reason = f"cannot start step: {what}: {os.strerror(p.spawn_errno)}"
            sink.note(reason)
            return self._result(StepState.ERROR, FailureKind.INFRA, reason, started)
        code = None if p.status is None else os.waitstatus_to_exitcode(p.status)
        if p.stop is not None:
            how = "SIGTERM"
            if p.kill_sent and p.killed:
                how += f", then SIGKILL after {format_duration(spec.grace)} grace"
            if p.stop is FailureKind.CANCELED:
                reason = f"{cancel.reason or 'canceled'} ({how})"
                state = StepState.CANCELED
            elif p.stop is FailureKind.TIMEOUT:
                reason = f"timed out after {format_duration(spec.step.timeout)} ({how})"
                state = StepState.FAILURE
            else:
                idle = format_duration(spec.step.idle_timeout or 0)
                reason = f"no output for {idle} (idle timeout; {how})"
                state = StepState.FAILURE
            exit_code = code if code is not None and code >= 0 else None
            return self._result(state, p.stop, reason, started, exit_code)
        if code is None:
            reason = "lost track of the step's shell (no exit status)"
            sink.note(reason)
            return self._result(StepState.ERROR, FailureKind.INFRA, reason, started)
        if code == 0:
            return self._result(StepState.SUCCESS, None, "", started, 0)
        if code > 0:
            return self._result(
                StepState.FAILURE, FailureKind.EXIT, f"exit code {code}", started, code
            )
        reason = f"killed by signal {_signal_name(-code)}"
        return self._result(StepState.FAILURE, FailureKind.SIGNAL, reason, started)


def _apply(ev: supervise.Event, p: _Progress) -> None:
    if ev.kind == "X":
        p.status = ev.value
    elif ev.kind == "E":
        p.spawn_error = ev.word or "spawn"
        p.spawn_errno = ev.value
    elif ev.kind == "L":
        p.leftovers = ev.value
    elif ev.kind == "K":
        p.killed = ev.value
    elif ev.kind == "W":
        p.no_subreaper = True
    elif ev.kind == "R":
        p.cpu_seconds = ev.value / 1_000_000
        try:
            p.max_rss_kib = int(ev.word) or None  # 0: not measurable (see supervise)
        except ValueError:
            pass  # a malformed line: the figure stays unknown


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def _find_cgroups() -> cgroups.Hierarchy | None:
    return cgroups.find()
