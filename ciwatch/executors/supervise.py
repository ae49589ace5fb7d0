"""A per-step supervisor process: the subreaper that owns one step's processes.

Why: a step can escape its process group and session (``setsid``, a double
fork, a daemon) and keep its output pipe open after its shell exits. The
supervisor is forked from ciwatch, marks itself a *child subreaper*
(``prctl(PR_SET_CHILD_SUBREAPER)``) so every orphan of the step is re-parented
to it instead of to init, starts the shell in a new session and reaps
everything. At the end of the step, or when asked, it signals every descendant
it has (found by walking ``/proc/*/stat`` by parent pid, repeated until it has
no child left), so nothing the step started outlives it.

It is a fork of a possibly multi-threaded parent, so the child only makes
``os``/``select``/``signal`` calls on objects prepared before the fork: no
imports, no locks, no logging, garbage collection off, and it never returns
into the parent's code (``os._exit``). The shell itself is started by
``launch`` (a fork of the supervisor that joins the step's cgroups and sets
its resource limits before it execs).

Protocol. Parent -> supervisor, control pipe: ``T`` SIGTERM (then SIGCONT) to
every descendant; ``K`` SIGKILL every descendant until none is left; end of file
(the parent closed it, or died) acts as ``K``. Supervisor -> parent, status
pipe, ASCII lines::

    S <pid>             the shell started
    E <errno> <stage>   it could not start (stage: chdir | cgroup | rlimit | spawn)
    W <word>            a warning (no-subreaper)
    X <wait status>     the shell exited
    T <n>               SIGTERM sent to n processes (on request)
    L <n>               the shell exited and left n processes: SIGTERM sent;
                        SIGKILL follows after the grace period
    K <n>               SIGKILL sent to n processes in all
    R <cpu_us> <kib>    resources of every process of the step, all reaped:
                        user + system CPU in microseconds, the largest
                        maximum resident set size in KiB (0: unknown, see
                        ``subreaper._usage``)

After the last line the supervisor exits: end of file on the status pipe means
the step's processes are all gone. The supervisor's side is
ciwatch.executors.subreaper.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ciwatch.executors.subreaper import supervise

PIPE_SIZE = 1 << 20  # fewer wake-ups for a step that prints a lot


@dataclass(frozen=True)
class SpawnRequest:
    path: bytes  # the executable, already resolved
    argv: tuple[bytes, ...]
    env: Mapping[bytes, bytes]  # the complete environment
    cwd: bytes
    grace: float  # seconds between SIGTERM and SIGKILL for processes left behind
    cgroup_procs: tuple[bytes, ...] = ()  # cgroup.procs files the shell joins
    rlimits: tuple[tuple[int, int, int], ...] = ()  # (RLIMIT_*, soft, hard) for the shell


@dataclass(frozen=True)
class Event:
    """One status line from the supervisor."""

    kind: str  # S E W X T L K (see the module doc)
    value: int = 0
    word: str = ""


def load_prctl() -> Callable[..., int] | None:
    """libc's prctl, or None where there is none (then no subreaper)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


class Supervisor:
    """The parent's handle on a running supervisor."""

    def __init__(self, pid: int, out_fd: int, status_fd: int, ctl_fd: int) -> None:
        self.pid = pid
        self.out_fd = out_fd  # the step's stdout and stderr, merged
        self.status_fd = status_fd
        self._ctl_fd = ctl_fd
        self._status_buf = b""
        self._closed = False

    def terminate(self) -> None:
        self._send(b"T")

    def kill(self) -> None:
        self._send(b"K")

    def _send(self, cmd: bytes) -> None:
        try:
            os.write(self._ctl_fd, cmd)
        except OSError:
            pass  # already gone: nothing left to signal

    def read_events(self) -> list[Event] | None:
        """Events ready on the status pipe; None once the supervisor has exited."""
        chunk = os.read(self.status_fd, 4096)
        if not chunk:
            return None
        self._status_buf += chunk
        *lines, self._status_buf = self._status_buf.split(b"\n")
        events = []
        for line in lines:
            kind, _, rest = line.decode("ascii", "replace").partition(" ")
            value, _, word = rest.partition(" ")
            try:
                events.append(Event(kind, int(value), word))
            except ValueError:
                events.append(Event(kind, 0, rest))
        return events

    def close(self, timeout: float = 2.0) -> bool:
        """Close our ends (the supervisor kills whatever is left on end of file)
        and reap it. True if reaped within `timeout`; otherwise a background
        thread reaps it later."""
        if self._closed:
            return True
        self._closed = True
        for fd in (self._ctl_fd, self.out_fd, self.status_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid:
                return True
            if time.monotonic() >= deadline:
                threading.Thread(target=_reap, args=(self.pid,), daemon=True).start()
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def start(request: SpawnRequest, prctl: Callable[..., int] | None) -> Supervisor:
    """Fork the supervisor, which starts the step's shell. Raises OSError when
    the fork itself fails (pipes, process limit)."""
    max_fd = os.sysconf("SC_OPEN_MAX")
    sigdef = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))
    handled = tuple(s for s in sigdef if callable(signal.getsignal(s)))
    out_r, out_w = os.pipe()
    ctl_r, ctl_w = os.pipe()
    st_r, st_w = os.pipe()
    try:
        fcntl.fcntl(out_r, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, AttributeError):
        pass
    try:
        pid = os.fork()
    except OSError:
        for fd in (out_r, out_w, ctl_r, ctl_w, st_r, st_w):
            os.close(fd)
        raise
    if pid == 0:  # the supervisor: never returns
        code = 70
        try:
            code = supervise(request, prctl, out_w, ctl_r, st_w, max_fd, sigdef, handled)
        except BaseException:  # noqa: B036 - nothing may unwind into the parent's code
            pass
        finally:
            os._exit(code)
    for fd in (out_w, ctl_r, st_w):
        os.close(fd)
    return Supervisor(pid, out_r, st_r, ctl_w)
