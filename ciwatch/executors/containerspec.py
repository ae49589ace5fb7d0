"""What ``podman run``/``docker run`` is asked for one step: name, labels,
mounts, environment and limits, as an argv list.

The environment never reaches the command line, where ``ps`` shows it to every
user: values go into an env file (0600, in the step's private script dir,
never mounted into the container); values holding a line break, which an env
file cannot carry, go into the engine client's own environment and only their
names onto the command line (``--env NAME``).

Paths are mounted at the same place as on the host, so paths in logs and in
the environment (``CIWATCH_WORKSPACE``, HOME, TMPDIR) are the same under every
executor. The script file alone is mounted read-only: not the directory, which
holds the env files of the run's other steps.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ciwatch.errors import ExecutorError
from ciwatch.executors.base import StepSpec
from ciwatch.executors.engine import OWNER_LABEL, SCOPE_LABEL, Engine
from ciwatch.pipeline.plan import Resources

_NAME_PART = re.compile(r"[^A-Za-z0-9_.-]+")
_ENV_NAME_BAD = re.compile(r"[=\s\0]")


@dataclass(frozen=True)
class RunRequest:
    argv: tuple[str, ...]
    client_env: dict[str, str] | None  # the engine client's environment; None: ciwatch's


@dataclass(frozen=True)
class StepFiles:
    script: Path
    env_file: Path
    aside: dict[str, str]  # variables for the client's environment (see the module doc)

    def remove(self) -> None:
        for path in (self.script, self.env_file):
            try:
                os.unlink(path)
            except OSError:
                pass


def container_name(env: Mapping[str, str], index: int, token: str) -> str:
    """ciwatch-<repo>-<run number>-<step index>-<token>: findable in `podman ps`."""
    repo = _NAME_PART.sub("-", env.get("CIWATCH_REPO", "")).strip("-.")[:40]
    number = env.get("CIWATCH_RUN_NUMBER", "")
    parts = [p for p in ("ciwatch", repo, number if number.isdigit() else "") if p]
    return "-".join([*parts, str(index), token])


def labels(env: Mapping[str, str], index: int, scope: str, owner: str) -> list[str]:
    values = {
        SCOPE_LABEL: scope,
        OWNER_LABEL: owner,
        "ciwatch.run": env.get("CIWATCH_RUN_ID", ""),
        "ciwatch.repo": env.get("CIWATCH_REPO", ""),
        "ciwatch.step": str(index),
    }
    args = []
    for key, value in values.items():
        if value and "\n" not in value:
            args += ["--label", f"{key}={value}"]
    return args


def limit_args(resources: Resources | None) -> list[str]:
    """The step's `resources:` as engine options (nothing for an unset one)."""
    if resources is None:
        return []
    args = []
    memory = _whole(resources.memory_bytes)
    if memory is not None:
        args += ["--memory", str(memory), "--memory-swap", str(memory)]  # no swap beyond it
    processes = _whole(resources.processes)
    if processes is not None:
        args += ["--pids-limit", str(processes)]
    for name, value in (
        ("nofile", _whole(resources.open_files)),
        ("fsize", _whole(resources.file_size_bytes)),
        ("cpu", _whole(resources.cpu_seconds, up=True)),
    ):
        if value is not None:
            args += ["--ulimit", f"{name}={value}:{value}"]
    return args


def _whole(value: float | None, *, up: bool = False) -> int | None:
    if value is None or not math.isfinite(value):
        return None
    return max(1, math.ceil(value) if up else int(value))


def env_file(env: Mapping[str, str]) -> tuple[bytes, dict[str, str]]:
    """(env file content, variables that must travel in the client's environment)."""
    lines: list[bytes] = []
    aside: dict[str, str] = {}
    for key, value in env.items():
        if not key or _ENV_NAME_BAD.search(key) or key.startswith("#") or "\0" in value:
            raise ExecutorError(f"invalid environment variable name {key!r}")
        if "\n" in value or "\r" in value:
            aside[key] = value
        else:
            lines.append(f"{key}={value}\n".encode("utf-8", "surrogateescape"))
    return b"".join(lines), aside


def mount_args(spec: StepSpec, script: Path) -> list[str]:
    """The workspace, the step's HOME and TMPDIR (read-write) and the script
    (read-only), each at its host path."""
    workdir = os.path.realpath(spec.workdir)
    paths = [workdir]
    for name in ("HOME", "TMPDIR"):
        value = spec.env.get(name, "")
        if os.path.isabs(value) and os.path.isdir(value):
            real = os.path.realpath(value)
            if real not in paths:
                paths.append(real)
    args = []
    for path in paths:
        _mountable(path)
        args += ["--volume", f"{path}:{path}:rw"]
    script_path = str(script)
    _mountable(script_path)
    args += ["--volume", f"{script_path}:{script_path}:ro"]
    return args


def _mountable(path: str) -> None:
    if path == "/":
        raise ExecutorError("cannot mount / into a container: give the step its own directory")
    if ":" in path or "," in path or not path.isprintable():
        raise ExecutorError(f"cannot mount {path!r} into a container: ':' and ',' are not allowed")


def run_request(
    engine: Engine,
    spec: StepSpec,
    *,
    name: str,
    image: str,
    files: StepFiles,
    network: bool,
    engine_args: Sequence[str],
    scope: str,
    owner: str,
    resources: Resources | None,
    cgroup_parent: str | None = None,
) -> RunRequest:
    """The full `run` argv and the client environment it needs."""
    argv = [engine.program, "run", "--name", name, "--init", "--pull", "never"]
    if cgroup_parent is not None:
        argv += ["--cgroup-parent", cgroup_parent]  # see containercgroup
    argv += labels(spec.env, spec.step.index, scope, owner)
    if engine.name == "podman":
        # Straight to our pipe, not through a log file; no image or engine
        # defaults (TERM, container=...) in the step's environment.
        argv += ["--log-driver", "passthrough", "--unsetenv-all"]
    else:
        argv += ["--log-driver", "none"]
        if os.getuid() != 0:
            # docker's root in the container is the host's: files in the
            # workspace stay ours to clean.
            argv += ["--user", f"{os.getuid()}:{os.getgid()}"]
    if not network:
        argv += ["--network", "none"]
    argv += mount_args(spec, files.script)
    argv += ["--workdir", os.path.realpath(spec.workdir), "--env-file", str(files.env_file)]
    for key in files.aside:
        argv += ["--env", key]
    argv += [*engine_args, *limit_args(resources)]  # ours last: a step's limits win
    argv += ["--", image, *spec.step.shell, str(files.script)]
    client_env = None if engine.env is None else dict(engine.env)
    if files.aside:
        client_env = dict(os.environ if engine.env is None else engine.env)
        client_env.update(files.aside)
    return RunRequest(tuple(argv), client_env)


def write_files(spec: StepSpec, token: str) -> StepFiles:
    """The script (0700) and the env file (0600) in the step's private dir;
    raises ExecutorError (nothing left behind) when they cannot be written."""
    folder = Path(spec.script_dir)
    stem = f"step-{spec.step.index}-{token}"
    content, aside = env_file(spec.env)
    files = StepFiles(folder / f"{stem}.sh", folder / f"{stem}.env", aside)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_private(files.script, spec.step.script.encode("utf-8", "surrogateescape"), 0o700)
        _write_private(files.env_file, content, 0o600)
    except OSError as exc:
        files.remove()
        raise ExecutorError(f"cannot write {exc.filename or folder}: {exc.strerror}") from exc
    return files


def _write_private(path: Path, data: bytes, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
