"""Starting a step: its script file, its shell found, the supervisor's spawn request.

Everything here either returns what the process executor needs or raises
CannotStart with a message for the step's log (an ERROR/INFRA result).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ciwatch.errors import ExecutorError
from ciwatch.executors import limits, supervise
from ciwatch.executors.base import StepSpec

__all__ = [
    "CannotStart",
    "Wrap",
    "describe",
    "request",
    "resolve_executable",
    "unlink",
    "write_script",
]

Wrap = Callable[[StepSpec, Sequence[str]], Sequence[str]]
"""Turns the step's command (resolved shell, its arguments, the script file)
into the argv actually spawned; argv[0] must be an executable's path. Raises
ExecutorError when the step cannot be started that way."""


class CannotStart(ExecutorError):
    """The step could not be started (becomes an ERROR/INFRA result)."""


def resolve_executable(cmd: str, env: Mapping[str, str], workdir: Path) -> str | None:
    """Where `cmd` is, looked up in env's PATH (not ciwatch's own) like execvp."""
    if "/" in cmd:
        return cmd  # relative ones resolve against the workdir, the step's cwd
    path = env.get("PATH") or os.confstr("CS_PATH") or "/bin:/usr/bin"
    for folder in path.split(":"):
        candidate = Path(workdir, folder or ".", cmd)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(Path(folder or ".", cmd))
    return None


def write_script(spec: StepSpec) -> Path:
    folder = Path(spec.script_dir)
    path = folder / f"step-{spec.step.index}.sh"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o700)
        try:
            os.fchmod(fd, 0o700)
            view = memoryview(spec.step.script.encode("utf-8", "surrogateescape"))
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except OSError as exc:
        raise CannotStart(f"cannot write the step script {path}: {exc.strerror}") from exc
    return path


def request(
    spec: StepSpec, script: Path, wrap: Wrap | None, guard: limits.Guard
) -> supervise.SpawnRequest:
    step = spec.step
    if not step.shell:
        raise CannotStart("no shell configured")
    env: dict[bytes, bytes] = {}
    for key, value in spec.env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise CannotStart(f"invalid environment variable name {key!r}")
        env[os.fsencode(key)] = os.fsencode(value)
    found = resolve_executable(step.shell[0], spec.env, spec.workdir)
    if found is None:
        path = spec.env.get("PATH", "")
        raise CannotStart(f"shell {step.shell[0]!r} not found in PATH ({path or 'unset'})")
    argv: Sequence[str] = (*step.shell, str(script))
    path = found
    if wrap is not None:
        argv = wrap(spec, (found, *step.shell[1:], str(script)))
        path = argv[0]
    return supervise.SpawnRequest(
        path=os.fsencode(path),
        argv=tuple(os.fsencode(a) for a in argv),
        env=env,
        cwd=os.fsencode(spec.workdir),
        grace=spec.grace,
        cgroup_procs=guard.cgroup_procs,
        rlimits=guard.rlimits,
    )


def describe(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


def unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
