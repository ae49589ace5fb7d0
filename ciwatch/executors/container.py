"""The `container` executor: each step in its own container (podman or docker).

The image is the step's ``image:``, else the executor's default. The step runs
``[*shell, script]`` in the image with the workspace, HOME and TMPDIR mounted
read-write at their host paths (the workspace is the working directory), the
script mounted read-only, exactly the given environment (see
``containerspec``), ``--network none`` when the network is off, and its
``resources:`` as ``--memory``, ``--pids-limit`` and ``--ulimit``. A small init
(``--init``) is the container's PID 1: the shell gets signals as under the
process executor, and when the shell ends the PID namespace ends with it, so
nothing the step started outlives it. Output goes straight to ciwatch's pipe.

Ending a step: a timeout, an idle timeout or a cancel runs ``kill --signal
TERM``, then ``kill --signal KILL`` after ``spec.grace`` seconds; the notes and
reasons are the process executor's. Whatever happened, the container is then
removed (``rm --force``): it is created without ``--rm`` so that its state
(exit code, OOM kill) can be read first. Containers of a ciwatch process that
died are removed by ``engine.remove_leftovers``.

Exit codes: a shell killed by a signal shows as 128+N (as under the sandbox).
A step killed for exceeding its memory limit says so; engines that do not
report the OOM kill (podman on cgroup v1 hybrid hosts) get "killed by signal
SIGKILL" with the limit named as the likely cause.

CPU time and peak memory: podman with the cgroupfs manager on cgroup v1, as
root, runs each container below a parent cgroup ciwatch makes for the step and
reads after the container is gone (see ``containercgroup``). Elsewhere they
are not measured (None); accounting never fails a step.
"""

from __future__ import annotations

import math
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from ciwatch.errors import ExecutorError
from ciwatch.executors import containercgroup, containerspec
from ciwatch.executors.base import CancelToken, LogSink, StepSpec
from ciwatch.executors.cgroupfs import v1_mounts
from ciwatch.executors.containerresult import Verdict, cannot_start, verdict
from ciwatch.executors.containerwatch import Watcher, end_client
from ciwatch.executors.engine import Engine, find_engine, owner_of, remove_leftovers, scope_of
from ciwatch.executors.images import Images
from ciwatch.model import FailureKind, StepResult, StepState


class ContainerExecutor:
    """Runs steps in containers (implements executors.base.Executor).

    `engine` is podman or docker (None: podman if installed, else docker);
    `image` the image of steps without one; `engine_args` extra ``run``
    options (e.g. ``--runtime runc``); `pull` never | missing | always, with
    `pull_timeout` seconds per pull; `scope` the state directory (see
    ``engine``); `engine_env` the engine client's environment (None:
    ciwatch's). `token` names containers uniquely; `owner` is the owner label
    (default: this process). `cgroup_mounts` finds the cgroup v1 hierarchies
    for CPU and memory accounting (see ``containercgroup``).
    """

    def __init__(
        self,
        *,
        engine: str | None = None,
        image: str | None = None,
        engine_args: Sequence[str] = (),
        network: bool = True,
        pull: str = "missing",
        pull_timeout: float = 600.0,
        scope: str | Path = "",
        engine_env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        token: Callable[[], str] = lambda: secrets.token_hex(4),
        owner: str | None = None,
        poll: float = 0.05,
        drain: float = 1.0,
        kill_wait: float = 5.0,
        read_size: int = 256 * 1024,
        cgroup_mounts: Callable[[], Mapping[str, Path] | None] = v1_mounts,
    ) -> None:
        self._images = Images(image, pull, pull_timeout, monotonic)
        self._engine_name = engine
        self._engine_env = engine_env
        self._engine_args = tuple(engine_args)
        self._network = network
        self._scope = scope_of(scope) if scope else "none"
        self._owner = owner or owner_of(os.getpid())
        self._clock = clock
        self._token = token
        self._watcher = Watcher(monotonic, poll, drain, kill_wait, read_size)
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._cgroup_mounts = cgroup_mounts
        self._accounting: Mapping[str, Path] | None | bool = False  # False: not looked yet

    @property
    def engine(self) -> Engine:
        """The engine, found on first use; raises ExecutorError with the fix."""
        with self._lock:
            if self._engine is None:
                self._engine = find_engine(self._engine_name, self._engine_env)
            return self._engine

    def sweep(self) -> list[str]:
        """Remove this installation's containers whose ciwatch process died (see
        ``engine.remove_leftovers``); their names. An engine that is missing or
        fails is left for the steps to report."""
        try:
            return remove_leftovers(self.engine, self._scope)
        except ExecutorError:
            return []

    def run(self, spec: StepSpec, sink: LogSink, cancel: CancelToken) -> StepResult:
        started = self._clock()
        if not cancel.canceled:
            try:
                engine = self.engine
                image = self._images.image_for(spec.step.image)
                self._images.ensure(engine, image, sink, cancel)
            except ExecutorError as exc:
                if not cancel.canceled:
                    return self._result(cannot_start(str(exc)), sink, started)
        if cancel.canceled:
            reason = f"{cancel.reason or 'canceled'} (before it started)"
            return self._result(
                Verdict(StepState.CANCELED, FailureKind.CANCELED, reason), sink, started
            )
        token = self._token()
        name = containerspec.container_name(spec.env, spec.step.index, token)
        files = None
        parent = self._parent(engine, token)
        try:
            files = containerspec.write_files(spec, token)
            proc = self._start(engine, spec, name, image, files, parent)
        except (ExecutorError, OSError) as exc:
            if files is not None:
                files.remove()
            containercgroup.finish(parent, sink)
            return self._result(cannot_start(_describe(exc)), sink, started)
        state = None
        try:
            p = self._watcher.watch(proc, engine, name, spec, sink, cancel)
            if p.ambiguous:
                try:
                    state = engine.state(name)
                except ExecutorError as exc:
                    sink.note(f"could not read the state of container {name}: {exc}")
        finally:
            end_client(proc)
            try:
                problem = engine.remove(name)
            except ExecutorError as exc:
                problem = str(exc)
            if problem:
                sink.note(f"could not remove container {name}: {problem}")
            files.remove()
            used = containercgroup.finish(parent, sink)
        reason = cancel.reason or "canceled"
        v = verdict(
            p, state, spec.step, spec.grace, image=image, engine=engine.name, cancel_reason=reason
        )
        result = self._result(v, sink, started)
        peak = used.peak_bytes
        return replace(
            result,
            cpu_seconds=used.cpu_seconds,
            max_rss_kib=math.ceil(peak / 1024) if peak else None,
        )

    # -- accounting ----------------------------------------------------------

    def _parent(self, engine: Engine, token: str) -> containercgroup.ParentCgroup | None:
        """The step's parent cgroup, or None where there is none to make."""
        with self._lock:
            if self._accounting is False:
                self._accounting = containercgroup.where(
                    engine, self._engine_args, self._cgroup_mounts
                )
            mounts = self._accounting
        if not mounts:
            return None
        try:
            return containercgroup.make(mounts, os.getpid(), token)
        except ExecutorError:
            return None  # not measured; the step runs as it would without

    def _start(
        self, engine, spec: StepSpec, name: str, image: str, files, parent
    ) -> subprocess.Popen:
        request = containerspec.run_request(
            engine,
            spec,
            name=name,
            image=image,
            files=files,
            network=self._network,
            engine_args=self._engine_args,
            scope=self._scope,
            owner=self._owner,
            resources=spec.step.resources,
            cgroup_parent=None if parent is None else parent.argument,
        )
        return subprocess.Popen(
            request.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=request.client_env,
            start_new_session=True,  # a Ctrl-C in ciwatch's terminal is ciwatch's to handle
        )

    # -- after it ------------------------------------------------------------

    def _result(self, v: Verdict, sink: LogSink, started: float) -> StepResult:
        if v.infra:
            sink.note(v.reason)
        return StepResult(
            state=v.state,
            exit_code=v.exit_code,
            failure=v.failure,
            reason=v.reason,
            started_at=started,
            finished_at=self._clock(),
        )


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)
