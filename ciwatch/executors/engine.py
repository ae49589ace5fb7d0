"""The container engine (podman or docker) as ciwatch calls it.

Finding and checking the engine, asking about images and containers, pulling
with a deadline, and removing containers that an earlier ciwatch process left
behind. Every call is an argv list with a timeout; what reaches the command
line is a container name ciwatch made or an image name checked by
``ciwatch.imageref``.

Ownership. Every container ciwatch starts carries two labels: the *scope*
(a hash of the state directory, so two ciwatch installations on one engine
leave each other alone) and the *owner*: the host, the boot and the process
(pid and start time) that started it. A container whose owner process is gone
is a leftover: nobody watches it any more, and `remove_leftovers` kills and
removes it. A container whose owner still runs (a worker that outlived a
daemon restart) is kept.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ciwatch.errors import ExecutorError
from ciwatch.executors.base import CancelToken

ENGINES = ("podman", "docker")
INSTALL_HINT = "install podman (apt-get install podman) or docker, or set executor.engine"
SCOPE_LABEL = "ciwatch.scope"
OWNER_LABEL = "ciwatch.owner"
_NEVER_STARTED = "0001-01-01"  # how both engines show the start of a container that never ran


@dataclass(frozen=True)
class ContainerState:
    """What the engine says about a container after its `run` returned."""

    status: str  # created, running, exited, ...
    exit_code: int | None
    oom_killed: bool
    started: bool  # False: the engine failed before the step's shell could run


@dataclass(frozen=True)
class Engine:
    """One engine program. `env` is the environment of the engine's own
    processes (None: ciwatch's); a step's environment never goes there."""

    name: str  # podman | docker
    program: str  # its path
    env: Mapping[str, str] | None = None
    timeout: float = 30.0  # for the short calls (inspect, kill, rm, ps)

    def call(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        limit = self.timeout if timeout is None else timeout
        try:
            return subprocess.run(
                [self.program, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=None if self.env is None else dict(self.env),
                timeout=limit,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ExecutorError(
                f"`{self.name} {args[0]}` gave no answer within {limit:g}s"
            ) from exc
        except OSError as exc:
            raise ExecutorError(f"cannot run {self.program}: {exc.strerror}") from exc

    def has_image(self, image: str) -> bool:
        done = self.call("image", "inspect", "--format", "{{.Id}}", "--", image)
        return done.returncode == 0

    def pull(self, image: str, timeout: float, cancel: CancelToken, poll: float = 0.1) -> str:
        """Pull `image`; "" when done, else what went wrong. Stops early on a cancel."""
        try:
            proc = subprocess.Popen(
                [self.program, "pull", "--quiet", "--", image],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=None if self.env is None else dict(self.env),
                start_new_session=True,
            )
        except OSError as exc:
            return f"cannot run {self.program}: {exc.strerror}"
        waited = 0.0
        while True:
            try:
                _, err = proc.communicate(timeout=poll)
                break
            except subprocess.TimeoutExpired:
                waited += poll
                if cancel.canceled or waited >= timeout:
                    proc.kill()
                    proc.communicate()
                    if cancel.canceled:
                        return "canceled while pulling"
                    return f"no answer within {timeout:g}s (executor.pull_timeout)"
        if proc.returncode == 0:
            return ""
        return last_line(err) or f"{self.name} pull exited with {proc.returncode}"

    def kill(self, name: str, signal: str, timeout: float | None = None) -> bool:
        """Send `signal` (TERM, KILL) to the container's first process; False if
        the engine could not (no such container yet, or not running)."""
        done = self.call("kill", "--signal", signal, "--", name, timeout=timeout)
        return done.returncode == 0

    def remove(self, name: str) -> str:
        """Kill and remove the container; "" when it is gone (or never existed)."""
        args = ["rm", "--force"]
        if self.name == "podman":
            args += ["--time", "0"]  # podman would otherwise wait 10 s for a running one
        done = self.call(*args, "--", name)
        said = last_line(done.stderr)
        if done.returncode == 0 or "no such container" in said.lower():
            return ""
        return said or f"exit {done.returncode}"

    def cgroups(self) -> tuple[str, str] | None:
        """podman's (cgroup manager, cgroup version), e.g. ("cgroupfs", "v1");
        None for docker or when podman does not say."""
        if self.name != "podman":
            return None
        done = self.call("info", "--format", "{{.Host.CgroupManager}} {{.Host.CgroupsVersion}}")
        words = done.stdout.decode(errors="replace").split()
        return (words[0], words[1]) if done.returncode == 0 and len(words) == 2 else None

    def state(self, name: str) -> ContainerState | None:
        """The container's state; None when the engine has no such container."""
        fmt = "{{.State.Status}}|{{.State.ExitCode}}|{{.State.OOMKilled}}|{{.State.StartedAt}}"
        done = self.call("container", "inspect", "--format", fmt, "--", name)
        if done.returncode != 0:
            return None
        status, code, oom, started = (done.stdout.decode(errors="replace").strip() + "|||").split(
            "|"
        )[:4]
        return ContainerState(
            status=status,
            exit_code=int(code) if code.lstrip("-").isdigit() else None,
            oom_killed=oom.strip().lower() == "true",
            started=bool(started.strip()) and not started.strip().startswith(_NEVER_STARTED),
        )


def last_line(data: bytes) -> str:
    lines = [x.strip() for x in data.decode("utf-8", "replace").splitlines() if x.strip()]
    return lines[-1] if lines else ""


def find_engine(
    name: str | None = None, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> Engine:
    """The engine `name`, or podman if installed, else docker. Raises
    ExecutorError with the fix when there is none."""
    path = (os.environ if env is None else env).get("PATH") or os.defpath
    for candidate in (name,) if name else ENGINES:
        if candidate not in ENGINES:
            raise ExecutorError(f"unknown container engine {candidate!r}: use podman or docker")
        found = shutil.which(candidate, path=path)
        if found:
            return Engine(candidate, found, env, timeout)
    wanted = name or "podman or docker"
    raise ExecutorError(f"container engine not found ({wanted} in PATH): {INSTALL_HINT}")


def check_engine(engine: Engine) -> None:
    """Raise ExecutorError, with the fix, unless the engine answers. Call once
    at start-up when `executor.kind` is container."""
    done = engine.call("version")
    if done.returncode != 0:
        said = last_line(done.stderr) or f"exit {done.returncode}"
        hint = ""
        if engine.name == "docker":
            hint = "; check that the docker daemon runs and that this user may use it"
        raise ExecutorError(f"{engine.name} ({engine.program}) does not work: {said}{hint}")


def scope_of(state_dir: str | Path) -> str:
    """The scope label value of one ciwatch installation (its state directory)."""
    real = os.path.realpath(state_dir)
    return hashlib.sha256(os.fsencode(real)).hexdigest()[:16]


def process_identity(pid: int) -> str | None:
    """ "<pid>.<start time>" of a live process; None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return f"{pid}.{int(data[data.rfind(b')') + 2 :].split()[19])}"
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def owner_of(pid: int) -> str:
    """The owner label value for containers started by process `pid`."""
    return f"{socket.gethostname()}/{_boot_id()}/{process_identity(pid) or pid}"


def owner_gone(owner: str) -> bool:
    """True when the process named by an owner label no longer runs. Another
    host's containers are never ours to judge: False."""
    host, _, rest = owner.partition("/")
    boot, _, ident = rest.partition("/")
    if host != socket.gethostname():
        return False
    if boot != _boot_id():
        return True  # the machine restarted since
    pid = ident.partition(".")[0]
    return not pid.isdigit() or process_identity(int(pid)) != ident


def remove_leftovers(
    engine: Engine, scope: str, gone: Callable[[str], bool] = owner_gone
) -> list[str]:
    """Kill and remove the containers of `scope` whose owner is gone; their
    names. Raises ExecutorError when the engine cannot list them."""
    owner = (
        f'{{{{index .Labels "{OWNER_LABEL}"}}}}'
        if engine.name == "podman"
        else f'{{{{.Label "{OWNER_LABEL}"}}}}'
    )
    listed = engine.call(
        "ps",
        "--all",
        "--filter",
        f"label={SCOPE_LABEL}={scope}",
        "--format",
        "{{.Names}}\t" + owner,
    )
    if listed.returncode != 0:
        said = last_line(listed.stderr) or f"exit {listed.returncode}"
        raise ExecutorError(f"cannot list containers with {engine.name}: {said}")
    removed = []
    for line in listed.stdout.decode("utf-8", "replace").splitlines():
        name, _, label = line.partition("\t")
        # One at a time: a name that is gone meanwhile must not spoil the others.
        if name and label and gone(label.strip()) and not engine.remove(name.strip()):
            removed.append(name.strip())
    return removed
