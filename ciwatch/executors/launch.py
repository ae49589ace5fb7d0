"""How the per-step supervisor starts the step's program: fork, then in the child
its own session, its cgroups and resource limits, then exec.

Why not ``posix_spawn``: it cannot set resource limits or a cgroup for the
new process only, and setting them on the supervisor would bind the supervisor
too (a CPU time limit would kill it). The child here is a fork of the
single-threaded supervisor and makes only ``os``/``resource``/``signal`` calls
before ``execve``. An exec failure comes back over a close-on-exec pipe as
``<errno> <stage>`` (stage: cgroup, rlimit or spawn); end of file on it means
the program runs.
"""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Mapping, Sequence

from ciwatch.errors import ExecutorError

__all__ = ["LaunchError", "launch"]


class LaunchError(ExecutorError):
    """The program could not be started; `stage` says at which step."""

    def __init__(self, errno: int, stage: str) -> None:
        super().__init__(errno, stage)
        self.errno = errno
        self.stage = stage


def launch(
    path: bytes,
    argv: Sequence[bytes],
    env: Mapping[bytes, bytes],
    out_fd: int,
    cgroup_procs: Sequence[bytes],
    rlimits: Sequence[tuple[int, int, int]],
    sigdef: Sequence[int],
) -> int:
    """Start `path` in a new session, stdin from /dev/null, stdout and stderr on
    `out_fd`; returns its pid or raises LaunchError."""
    err_r, err_w = os.pipe()  # both close-on-exec
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(err_r)
        os.close(err_w)
        raise LaunchError(exc.errno or 0, "spawn") from None
    if pid == 0:
        _child(path, argv, env, out_fd, cgroup_procs, rlimits, sigdef, err_w)
    os.close(err_w)
    said = b""
    try:
        while True:
            chunk = os.read(err_r, 64)
            if not chunk:
                break
            said += chunk
    finally:
        os.close(err_r)
    if said:
        os.waitpid(pid, 0)
        code, _, stage = said.decode("ascii", "replace").partition(" ")
        raise LaunchError(int(code) if code.isdigit() else 0, stage or "spawn")
    return pid


def _child(path, argv, env, out_fd, cgroup_procs, rlimits, sigdef, err_w) -> None:
    stage = b"spawn"
    try:
        os.setsid()
        stage = b"cgroup"
        me = b"%d" % os.getpid()
        for procs in cgroup_procs:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, me)
            finally:
                os.close(fd)
        stage = b"rlimit"
        for which, soft, hard in rlimits:
            resource.setrlimit(which, (soft, hard))
        stage = b"spawn"
        null = os.open(b"/dev/null", os.O_RDONLY)
        if null != 0:
            os.dup2(null, 0)
            os.close(null)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        for sig in sigdef:
            if signal.getsignal(sig) is not signal.SIG_DFL:
                signal.signal(sig, signal.SIG_DFL)  # SIGPIPE, SIGXFSZ: Python ignores them
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        os.execve(path, list(argv), env)
    except OSError as exc:
        _say(err_w, b"%d %s" % (exc.errno or 0, stage))
    except BaseException:  # noqa: B036 - nothing may unwind into the supervisor's code
        _say(err_w, b"0 %s" % stage)
    os._exit(127)


def _say(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass
