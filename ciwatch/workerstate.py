"""What one run may change in a worker process, put back before the next run.

A worker executes runs one after another. The runner and the executors are
not meant to touch process-wide state, but a bug, or a library, could: so
the worker records the state before a run and restores it after. What can be
put back is (cwd, environment, umask, signal handlers, logging handlers and
filters); what cannot be undone safely (a file descriptor or a thread the run
left behind, which something may still use) is reported, and the worker
retires after the run instead of taking another.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

_SIGNALS = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))
_LOGGERS = ("", "ciwatch")  # the root logger and ciwatch's own


def open_fds() -> frozenset[int]:
    return frozenset(int(name) for name in os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    """The process's resident memory now (not its peak)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _handler(sig: int):
    try:
        return signal.getsignal(sig)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class ProcessState:
    cwd: str
    environ: tuple[tuple[str, str], ...]
    umask: int
    handlers: tuple[tuple[int, object], ...]
    loggers: tuple[tuple[str, tuple, tuple, int, bool], ...]
    handler_filters: tuple[tuple[logging.Handler, tuple], ...]
    fds: frozenset[int]
    threads: frozenset[int]

    @classmethod
    def capture(cls) -> ProcessState:
        mask = os.umask(0o022)
        os.umask(mask)
        loggers = tuple(
            (name, tuple(lg.handlers), tuple(lg.filters), lg.level, lg.propagate)
            for name in _LOGGERS
            for lg in (logging.getLogger(name),)
        )
        handlers = {h for _, hs, _, _, _ in loggers for h in hs}
        return cls(
            cwd=os.getcwd(),
            environ=tuple(sorted(os.environ.items())),
            umask=mask,
            handlers=tuple((s, h) for s in _SIGNALS if (h := _handler(s)) is not None),
            loggers=loggers,
            handler_filters=tuple((h, tuple(h.filters)) for h in handlers),
            fds=open_fds(),
            threads=frozenset(t.ident for t in threading.enumerate() if t.ident),
        )

    def restore(self) -> list[str]:
        """Put back what a run changed; returns what was changed (for the log)."""
        changed = []
        if os.getcwd() != self.cwd:
            changed.append("working directory")
            os.chdir(self.cwd)
        if tuple(sorted(os.environ.items())) != self.environ:
            changed.append("environment")
            os.environ.clear()
            os.environ.update(dict(self.environ))
        if os.umask(self.umask) != self.umask:
            changed.append("umask")
        for sig, handler in self.handlers:
            if _handler(sig) is not handler:
                changed.append(f"handler of {signal.Signals(sig).name}")
                signal.signal(sig, handler)
        for name, hs, filters, level, propagate in self.loggers:
            lg = logging.getLogger(name)
            if (tuple(lg.handlers), tuple(lg.filters), lg.level, lg.propagate) != (
                hs,
                filters,
                level,
                propagate,
            ):
                changed.append(f"logger {name or 'root'}")
                lg.handlers[:], lg.filters[:] = list(hs), list(filters)
                lg.setLevel(level)
                lg.propagate = propagate
        for h, filters in self.handler_filters:
            h.filters[:] = list(filters)  # e.g. the run's secret masking
        return changed

    def leaks(self, settle: float = 1.0, clock: Callable[[], float] = time.monotonic) -> list[str]:
        """File descriptors and threads the run left behind (waiting up to
        `settle` seconds for threads that are ending)."""
        deadline = clock() + settle
        while True:
            extra = [
                t for t in threading.enumerate() if t.ident not in self.threads and t.is_alive()
            ]
            if not extra or clock() >= deadline:
                break
            extra[0].join(timeout=max(0.0, deadline - clock()))
        found = [f"thread {t.name!r}" for t in extra]
        fds = sorted(open_fds() - self.fds)
        if fds:
            found.append("file descriptors " + ", ".join(map(str, fds)))
        return found
