"""A real `ciwatch serve` process for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from ciwatch.model import RunState
from ciwatch.store import Store

ROOT = Path(__file__).resolve().parent.parent


def wait_for(
    check: Callable[[], object], timeout: float = 30.0, every: float = 0.05, what: str = ""
):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(every)


class Done:
    """A dispatcher's on_done: (run id, exit status) of each worker, waitable."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self._cond = threading.Condition()

    def __call__(self, run_id: int, rc: int) -> None:
        with self._cond:
            self.seen.append((run_id, rc))
            self._cond.notify_all()

    def wait(self, n: int, timeout: float = 30) -> list[tuple[int, int]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.seen) >= n, timeout), self.seen
            return list(self.seen)


def cli(*args: str, env: dict | None = None, timeout: float = 60, cwd: Path | None = None):
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full.pop("CIWATCH_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "ciwatch", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


class DaemonProc:
    def __init__(self, workdir: Path, config: dict, env: dict | None = None) -> None:
        self.workdir = workdir
        self.state = workdir / "state"
        self.config_path = workdir / "ciwatch.yaml"
        config = {"state_dir": str(self.state), "listen": "127.0.0.1:0", **config}
        config.setdefault("daemon", {}).setdefault("shutdown_grace", "5s")
        self.config_path.write_text(yaml.safe_dump(config))
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "daemon.log"

    def start(self, wait: bool = True, env: dict | None = None) -> DaemonProc:
        full = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        full.update({"PYTHONPATH": str(ROOT), **self.env, **(env or {})})
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ciwatch",
                "serve",
                "-c",
                str(self.config_path),
                "--log-level",
                "debug",
            ],
            env=full,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        if wait:
            wait_for(
                lambda: (self.state / "daemon.url").exists() or self.proc.poll() is not None,
                30,
                what="the daemon to be ready",
            )
            assert self.proc.poll() is None, self.log.read_text()
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def store(self) -> Store:
        return Store.open(self.state / "ciwatch.db")

    def runs(self, repo: str | None = None):
        s = self.store()
        try:
            return s.list_runs(repo=repo, limit=1000)
        finally:
            s.close()

    def wait_runs_finished(self, n: int, timeout: float = 60, repo: str | None = None):
        def done():
            runs = self.runs(repo)
            return runs if len(runs) >= n and all(r.state.finished for r in runs) else None

        return wait_for(
            done, timeout, 0.1, what=f"{n} finished runs\n{self.log.read_text()[-3000:]}"
        )

    def cli(self, *args: str, **kw):
        return cli(*args, "-c", str(self.config_path), **kw)


def finished_states(runs) -> list[RunState]:
    return [r.state for r in sorted(runs, key=lambda r: r.id)]
