"""Real remotes on loopback for tests: `git daemon`, a port that refuses, a server that hangs.

    from gitdaemon import GitDaemon, HangingServer, closed_port, git_daemon

`git_daemon` is a pytest fixture (import it into the test module): a running
daemon serving `tmp_path / "served"`; `daemon.url("app.git")` is its git:// URL.
Clients should use `-c protocol.version=1` (v2 over git:// stalls ~40 ms a call).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    return free_port()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class GitDaemon:
    """`git daemon --export-all` on 127.0.0.1 serving `base`; a context manager."""

    def __init__(self, base: Path, port: int = 0) -> None:
        self.base = Path(base)
        self.port = port  # 0: a free one; else this one (to restart where clients point)
        self._fixed = bool(port)
        self._proc: subprocess.Popen | None = None

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def start(self, attempts: int = 5) -> GitDaemon:
        self.base.mkdir(parents=True, exist_ok=True)
        for _ in range(attempts):  # another process may take the free port first
            if not self._fixed:
                self.port = free_port()
            argv = [
                "git",
                "daemon",
                f"--base-path={self.base}",
                "--export-all",
                "--reuseaddr",
                "--listen=127.0.0.1",
                f"--port={self.port}",
                str(self.base),
            ]
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # its per-connection children die with it in stop()
            )
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self._proc.poll() is None:
                if _accepts(self.port):
                    return self
                time.sleep(0.01)
            self.stop()
            time.sleep(0.05)
        raise RuntimeError("git daemon did not start")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # our own session: the daemon and its children
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> GitDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class HangingServer:
    """Accepts TCP connections on 127.0.0.1 and never says a word."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, name: str = "repo.git") -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)  # held open, never read nor answered

    def __enter__(self) -> HangingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self._held:
            conn.close()
        self._sock.close()


@pytest.fixture
def git_daemon(tmp_path: Path) -> Iterator[GitDaemon]:
    with GitDaemon(tmp_path / "served") as daemon:
        yield daemon
