"""The `sandbox` executor: the `process` executor with each step inside bubblewrap.

A step sees the whole filesystem read-only, except its workspace and its own
HOME and TMPDIR (from the step's environment), which are bound read-write, and
a fresh /tmp. Hidden paths (the state directory: the database, mirrors, other
workspaces, tokens, the daemon's files) are covered with an empty read-only
tmpfs, or /dev/null for a file, so the step can neither read nor write them.
The step gets its own PID namespace: it sees only its own processes, and
everything it forks dies with the namespace when its shell exits
(``--unshare-pid``; bwrap's init is PID 1). With ``network=False`` it also
gets an empty network namespace.

Supervision, timeouts, cancel and output are the process executor's: the
supervisor starts bwrap instead of the shell. Differences from ``process``:
a shell killed by a signal shows as exit code 128+N (bwrap's init reports it
that way), and on a timeout or cancel SIGTERM also reaches bwrap itself, which
takes the whole namespace down at once, so traps in the step may not run.

Mount order matters: hidden paths are covered first and the writable paths
bound after, so a workspace inside the hidden state directory stays usable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ciwatch.errors import ExecutorError
from ciwatch.executors.base import CancelToken, LogSink, StepSpec
from ciwatch.executors.process import ProcessExecutor
from ciwatch.model import StepResult

INSTALL_HINT = "install the bubblewrap package"
USERNS_HINT = "unprivileged user namespaces are off: sysctl kernel.unprivileged_userns_clone=1"


class SandboxExecutor:
    """Runs steps under bubblewrap (implements executors.base.Executor).

    `bwrap` is the program (a name looked up in ciwatch's own PATH, or a path);
    `network=False` gives the step no network at all, not even loopback;
    `hide` lists paths the step must not see. Other keyword arguments go to
    ProcessExecutor (`poll`, `monotonic`, `drain`, `kill_wait`, `read_size`,
    `cgroups`). Resource limits and the step's cgroup apply to bwrap and all
    it starts, as for `process`.
    """

    def __init__(
        self,
        *,
        bwrap: str = "bwrap",
        network: bool = True,
        hide: Sequence[Path] = (),
        clock: Callable[[], float] = time.time,
        **process_options,
    ) -> None:
        self._bwrap = bwrap
        self._network = network
        self._hide = tuple(Path(p) for p in hide)
        # bwrap's init (PID 1 of the step's namespace) can outlive the shell by a
        # moment while the kernel tears the namespace down: not the step's doing.
        self._process = ProcessExecutor(
            clock, wrap=self.command, leftover_notes=False, **process_options
        )

    def run(self, spec: StepSpec, sink: LogSink, cancel: CancelToken) -> StepResult:
        return self._process.run(spec, sink, cancel)

    def command(self, spec: StepSpec, step_argv: Sequence[str]) -> list[str]:
        """The bwrap argv running `step_argv` (shell, its args, the script)."""
        bwrap = _find(self._bwrap)
        argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        argv += ["--tmpfs", "/tmp"]
        hidden, covered = [], []
        for path in self._hide:
            real = os.path.realpath(path)
            if os.path.isdir(real):
                argv += ["--tmpfs", real]
                covered.append(real)
            elif os.path.lexists(real):
                argv += ["--ro-bind", "/dev/null", real]
            else:
                continue  # nothing there to hide
            hidden.append(real)
        workdir = os.path.realpath(spec.workdir)
        for name, path in _writable(spec, workdir):
            _refuse_exposing(name, path, hidden)
            argv += ["--bind", path, path]
        script_dir = os.path.realpath(spec.script_dir)
        argv += ["--ro-bind", script_dir, script_dir]
        for real in covered:
            # Read-only only now: bwrap made the mount points inside it above.
            argv += ["--remount-ro", real]
        argv += ["--unshare-pid", "--die-with-parent"]
        if not self._network:
            argv.append("--unshare-net")
        argv += ["--chdir", workdir, "--", *step_argv]
        return argv


def check_sandbox(bwrap: str = "bwrap", timeout: float = 10.0) -> None:
    """Raise ExecutorError, with the fix, unless bwrap can create the
    namespaces steps need. Call once at start-up when `executor.kind` is sandbox."""
    path = _find(bwrap)
    probe = [path, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    probe += ["--unshare-pid", "--unshare-net", "--die-with-parent", "--", "true"]
    try:
        done = subprocess.run(
            probe, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise ExecutorError(f"bubblewrap not found ({bwrap}): {INSTALL_HINT}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExecutorError(f"bubblewrap ({path}) cannot run: {exc}") from exc
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip() or f"exit {done.returncode}"
        raise ExecutorError(f"bubblewrap cannot create a sandbox: {said}; {USERNS_HINT}")


def _find(bwrap: str) -> str:
    found = shutil.which(bwrap)
    if found is None:
        raise ExecutorError(f"bubblewrap not found ({bwrap}): {INSTALL_HINT}")
    return found


def _writable(spec: StepSpec, workdir: str) -> list[tuple[str, str]]:
    """The workspace, then the step's HOME and TMPDIR when they are directories."""
    paths = [("workspace", workdir)]
    for name in ("HOME", "TMPDIR"):
        value = spec.env.get(name, "")
        if os.path.isabs(value) and os.path.isdir(value):
            paths.append((name, os.path.realpath(value)))
    return paths


def _refuse_exposing(name: str, path: str, hidden: list[str]) -> None:
    """A read-write bind of `/` or of a hidden path's parent would undo the hiding."""
    for real in hidden:
        if path == "/" or real == path or real.startswith(path.rstrip("/") + "/"):
            raise ExecutorError(
                f"{name} {path} would expose the hidden path {real} to the step; "
                "give the step its own directory"
            )
    if path == "/":
        raise ExecutorError(f"{name} is /: the step cannot be given the whole filesystem")
