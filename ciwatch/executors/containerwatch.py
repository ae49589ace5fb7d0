"""Watching a container step while it runs: its output to the log sink, the
timeout, idle timeout and cancel (SIGTERM through the engine, SIGKILL after
the grace), and the engine client's own end. The reasons and notes are the
process executor's."""

from __future__ import annotations

import math
import os
import select
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from ciwatch.errors import ExecutorError
from ciwatch.executors.base import StepSpec
from ciwatch.executors.containerresult import Progress
from ciwatch.executors.engine import Engine
from ciwatch.executors.process import format_duration, stop_reason


@dataclass(frozen=True)
class Watcher:
    mono: Callable[[], float]
    poll: float  # seconds between checks while nothing happens
    drain: float  # how long the output pipe may stay open after the container ended
    kill_wait: float  # how long to wait for the engine after SIGKILL
    read_size: int

    def watch(self, proc, engine: Engine, name: str, spec: StepSpec, sink, cancel) -> Progress:
        p = Progress()
        step = spec.step
        mono = self.mono
        start = last_out = mono()
        idle = step.idle_timeout
        term_at = kill_at = exited_at = None
        fd = proc.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        out_open = True
        while True:
            now = mono()
            wait = self.poll
            if p.rc is not None:
                wait = exited_at + self.drain - now
            elif p.stop is None:
                wait = min(wait, start + step.timeout - now)
                if idle is not None:
                    wait = min(wait, last_out + idle - now)
            elif kill_at is None:
                wait = min(wait, term_at + spec.grace - now)
            if out_open:
                for _, _ in poller.poll(max(0, math.ceil(wait * 1000))):
                    data = os.read(fd, self.read_size)
                    if not data:
                        out_open = False
                        poller.unregister(fd)
                        break
                    sink.write(data)
                    p.saw(data)
                    last_out = mono()
            elif p.rc is None:
                try:
                    proc.wait(timeout=max(0.0, wait))
                except subprocess.TimeoutExpired:
                    pass
            if p.rc is None and proc.poll() is not None:
                p.rc = proc.returncode
                exited_at = mono()
            now = mono()
            if p.rc is not None:
                if not out_open:
                    break
                if now >= exited_at + self.drain:
                    sink.note(
                        "the step's output pipe is still open after its container ended "
                        f"(held outside the step?); stopped reading after {self.drain:g}s"
                    )
                    break
                continue
            if p.stop is None:
                p.stop, what = stop_reason(cancel, now - start, step.timeout, now - last_out, idle)
                if p.stop is not None:
                    sink.note(f"{what}: sending SIGTERM to the step's processes")
                    self._signal(engine, name, proc, "TERM", sink)
                    term_at = mono()
            elif kill_at is None and now >= term_at + spec.grace:
                sink.note(
                    f"still running {format_duration(spec.grace)} after SIGTERM: sending SIGKILL"
                )
                self._signal(engine, name, proc, "KILL", sink)
                kill_at = mono()
                p.kill_sent = True
            elif kill_at is not None and now >= kill_at + self.kill_wait:
                sink.note("the step's container did not end after SIGKILL; not waiting")
                break
        return p

    def _signal(self, engine: Engine, name: str, proc, sig: str, sink) -> None:
        try:
            if engine.kill(name, sig, timeout=self.kill_wait):
                return
        except ExecutorError as exc:
            sink.note(f"could not signal container {name}: {exc}")
        if proc.poll() is None:
            # No container yet (still being created): the client passes the
            # signal on once it has one, or gives up.
            _signal_group(proc, signal.SIGKILL if sig == "KILL" else signal.SIGTERM)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except OSError:
        pass  # already gone


def end_client(proc: subprocess.Popen) -> None:
    """Make sure the engine client is gone and reaped, and its pipe closed."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGKILL)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    if proc.stdout is not None:
        proc.stdout.close()
