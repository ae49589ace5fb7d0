"""The supervisor's side of ciwatch.executors.supervise: what runs in the forked
supervisor process only (the protocol is described there).

It is a fork of a possibly multi-threaded parent, so nothing here imports,
takes a lock or logs: only ``os``/``select``/``signal`` calls on objects
prepared before the fork, and `supervise` returns the exit code for the
caller's ``os._exit``.
"""

from __future__ import annotations

import fcntl
import gc
import os
import resource
import select
import signal
import time

from ciwatch.executors.launch import LaunchError, launch

__all__ = ["supervise"]

PR_SET_CHILD_SUBREAPER = 36
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def supervise(req, prctl, out_w, ctl_r, st_w, max_fd, sigdef, handled) -> int:
    gc.disable()  # no finalizers of the parent's objects run here
    for sig in handled:
        signal.signal(sig, signal.SIG_DFL)  # no handler of the parent's runs here
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)  # the parent decides when the step stops
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # SIG_IGN would reap before we can wait
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    out_w, ctl_r, st_w = _keep_only((out_w, ctl_r, st_w), max_fd)

    def report(line: bytes) -> None:
        try:
            os.write(st_w, line)
        except OSError:
            pass  # the parent is gone; we still clean up

    if prctl is None or prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        report(b"W 0 no-subreaper\n")
    try:
        os.chdir(req.cwd)
    except OSError as exc:
        report(b"E %d chdir\n" % exc.errno)
        return 0
    try:
        shell = launch(req.path, req.argv, req.env, out_w, req.cgroup_procs, req.rlimits, sigdef)
    except LaunchError as exc:
        report(b"E %d %s\n" % (exc.errno, exc.stage.encode("ascii", "replace")))
        return 0
    os.close(out_w)  # only the step holds the output pipe now
    report(b"S %d\n" % shell)
    _watch(shell, ctl_r, report, req.grace)
    return 0


def _keep_only(fds, max_fd):
    """Close every descriptor but `fds` (moved above 2 if needed); 0-2 -> /dev/null."""
    kept = []
    for fd in fds:
        kept.append(fd if fd > 2 else fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3))
    low = 0
    for fd in sorted(kept):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, max_fd)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        if fd != null:
            os.dup2(null, fd)
    if null > 2:
        os.close(null)
    return kept


def _watch(shell, ctl_r, report, grace) -> None:
    me = os.getpid()
    poller = select.poll()
    poller.register(ctl_r, select.POLLIN)
    try:
        pidfd = os.pidfd_open(shell)
        poller.register(pidfd, select.POLLIN)
    except (OSError, AttributeError):
        pidfd = -1  # older kernel: poll for the exit instead
    status = None
    ctl_open = True
    killing = False
    leftover_deadline = None
    killed = set()
    nap = 1  # ms; while waiting for processes to go, back off up to 10 ms
    while True:
        busy = killing or leftover_deadline is not None or pidfd < 0
        if busy:
            nap = min(nap * 2, 10)
        for fd, _ in poller.poll(nap if busy else 500):
            if fd == ctl_r:
                cmd = os.read(ctl_r, 64) if ctl_open else b""
                if not cmd:
                    ctl_open = False
                    poller.unregister(ctl_r)
                    killing = True
                elif b"K" in cmd:
                    killing = True
                elif b"T" in cmd and not killing:
                    report(b"T %d\n" % len(_signal_tree(me, signal.SIGTERM)))
            elif fd == pidfd:
                poller.unregister(pidfd)
                pidfd = -2
        gone = False
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                gone = True
                break
            if pid == 0:
                break
            if pid == shell:
                status = st
                report(b"X %d\n" % st)
        if gone:
            break
        if killing:
            killed.update(_signal_tree(me, signal.SIGKILL))
        elif status is not None and leftover_deadline is None:
            report(b"L %d\n" % len(_signal_tree(me, signal.SIGTERM)))
            leftover_deadline = time.monotonic() + grace
        elif leftover_deadline is not None and time.monotonic() >= leftover_deadline:
            killing = True
    if killed:
        report(b"K %d\n" % len(killed))
    report(b"R %d %d\n" % _usage())


def _usage():
    """(CPU microseconds, peak KiB or 0) of every process we reaped.

    Every process of the step is reaped by now (we are their subreaper), so
    the children's usage covers the shell and all its descendants. The shell
    was spawned from our memory (vfork-like), and Linux carries our resident
    size over into its peak at exec: a peak not above our own may be ours, so
    it is reported unknown (0) rather than as the step's."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_us = round((usage.ru_utime + usage.ru_stime) * 1_000_000)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return cpu_us, usage.ru_maxrss if usage.ru_maxrss > own else 0


def _descendants(me):
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open("/proc/" + name + "/stat", os.O_RDONLY)
            try:
                data = os.read(fd, 512)
            finally:
                os.close(fd)
            ppid = int(data[data.rfind(b")") + 2 :].split(b" ", 2)[1])
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        children.setdefault(ppid, []).append(int(name))
    found = []
    stack = [me]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


def _signal_tree(me, sig):
    pids = _descendants(me)
    for pid in pids:
        try:
            os.kill(pid, sig)
            if sig == signal.SIGTERM:
                os.kill(pid, signal.SIGCONT)  # a stopped process gets its SIGTERM now
        except OSError:
            pass
    return pids
