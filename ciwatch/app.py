"""The composition root for commands: config -> store, mirrors, executor, runner.

Only this module and the CLI read configuration; everything below gets
plain values and collaborators.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ciwatch.config import Config, read_config, read_secrets
from ciwatch.executors.base import Executor
from ciwatch.executors.container import ContainerExecutor
from ciwatch.executors.process import ProcessExecutor
from ciwatch.executors.sandbox import SandboxExecutor
from ciwatch.faults import fault_from
from ciwatch.observer import RunObserver
from ciwatch.runner import Runner, RunnerSettings
from ciwatch.store import Store
from ciwatch.workspace import Mirrors


@dataclass
class App:
    config: Config
    base: Path  # relative paths in the config are relative to this
    state_dir: Path
    environ: Mapping[str, str]
    config_path: Path | None = None
    _store: Store | None = field(default=None, repr=False)

    @classmethod
    def load(cls, config_path: str | None, environ: Mapping[str, str] | None = None) -> App:
        environ = dict(os.environ if environ is None else environ)
        path = Path(config_path) if config_path else None
        config, base = read_config(path)
        state_dir = config.state_path(environ, base if path else Path.cwd())
        return cls(config, base, state_dir, environ, path.resolve() if path else None)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.state_dir / "ciwatch.db", clock=time.time)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def settings(self, pipeline_path: str = ".ciwatch.yml") -> RunnerSettings:
        c = self.config
        return RunnerSettings(
            limits=c.limits.pipeline_limits(),
            log_cap=c.limits.log_cap,
            pipeline_path=pipeline_path,
            pipeline_max_bytes=c.limits.pipeline_max_bytes,
            grace=c.executor.grace,
            keep_failed=c.workspace.keep_failed,
            keep_all=c.workspace.keep_all,
            keep_min_free=(c.daemon.min_free_space.size, c.daemon.min_free_space.percent),
            workspace_strategy=c.workspace.strategy,
            pass_env=c.executor.pass_env,
        )

    def hidden_paths(self) -> list[Path]:
        """What a sandboxed step must not see: ciwatch's state (database, mirrors,
        other workspaces), its config, and every secret and token file."""
        c = self.config
        files = [ref.file for ref in c.secrets.values()]
        for f in c.forges.values():
            files += [x for x in (f.token_file, f.webhook_secret_file) if x]
        if c.web.token_file:  # the operator's token: it cancels and triggers runs
            files.append(c.web.token_file)
        paths = (
            [self.state_dir]
            + [self.base / f for f in files]
            + [self.base / h for h in c.executor.hide]
        )
        if self.config_path is not None:
            paths.append(self.config_path)
        if self.environ.get("CREDENTIALS_DIRECTORY"):
            paths.append(Path(self.environ["CREDENTIALS_DIRECTORY"]))
        return [p.resolve() for p in paths]

    def executor(self) -> Executor:
        e = self.config.executor
        if e.kind == "sandbox":
            return SandboxExecutor(bwrap=e.bwrap, network=e.network, hide=self.hidden_paths())
        if e.kind == "container":
            executor = ContainerExecutor(
                engine=e.engine,
                image=e.image,
                engine_args=e.engine_args,
                network=e.network,
                pull=e.pull,
                pull_timeout=e.pull_timeout,
                scope=self.state_dir,
                engine_env=self.environ,
            )
            executor.sweep()  # containers of dead ciwatch processes (the daemon's, at its start)
            return executor
        return ProcessExecutor()

    def runner(
        self, observer: RunObserver | None = None, pipeline_path: str = ".ciwatch.yml"
    ) -> Runner:
        return Runner(
            store=self.store,
            mirrors=Mirrors(self.state_dir),
            executor=self.executor(),
            state_dir=self.state_dir,
            settings=self.settings(pipeline_path),
            secrets=read_secrets(self.config, self.base),
            host_env=self.environ,
            clock=time.time,
            observer=observer,
            fault=fault_from(self.environ),
        )
