"""The client of the daemon's control socket (the protocol: ciwatch.control):
one request, one answer, and every way that can fail told in words."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from ciwatch.control import (
    MAX_LINE,
    ControlError,
    DaemonNotRunning,
    DaemonRefused,
    check_length,
    encode,
)

__all__ = ["ControlClient"]


class ControlClient:
    """Sends one request to the daemon and returns its answer."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def call(self, cmd: str, **args) -> dict:
        """The daemon's answer to `cmd`; raises DaemonNotRunning when nothing
        listens, DaemonRefused when the daemon answers with an error, and
        ControlError for anything else in between."""
        check_length(self.path)
        request = encode({**args, "cmd": cmd})
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(self.timeout)
            try:
                self._connect(sock)
            except FileNotFoundError:
                raise DaemonNotRunning(
                    f"the daemon is not running (no {self.path}); start it with"
                    " `systemctl start ciwatch` or `ciwatch serve`"
                ) from None
            except ConnectionRefusedError:
                raise DaemonNotRunning(
                    f"the daemon is not running ({self.path} is left from one that stopped)"
                ) from None
            except PermissionError:
                raise ControlError(
                    f"no permission to use {self.path}: run this as the daemon's user"
                    " (e.g. `sudo -u ciwatch ciwatch ...`) or as root"
                ) from None
            except TimeoutError:
                raise ControlError(
                    f"the daemon did not accept a connection within {self.timeout:g}s"
                ) from None
            except OSError as exc:
                raise ControlError(f"cannot reach the daemon at {self.path}: {exc}") from None
            try:
                sock.sendall(request)
                line = self._read_line(sock)
            except TimeoutError:
                raise ControlError(
                    f"the daemon did not answer {cmd!r} within {self.timeout:g}s"
                ) from None
            except OSError as exc:
                raise ControlError(f"the daemon closed the connection: {exc}") from None
        if not line:
            raise ControlError(f"the daemon closed the connection without answering {cmd!r}")
        try:
            answer = json.loads(line)
        except ValueError:
            raise ControlError(f"the daemon's answer to {cmd!r} is not JSON") from None
        if not isinstance(answer, dict):
            raise ControlError(f"the daemon's answer to {cmd!r} is not an object")
        if answer.get("ok") is not True:
            raise DaemonRefused(str(answer.get("error") or f"{cmd} failed"), answer)
        return answer

    def _connect(self, sock: socket.socket) -> None:
        # A unix socket whose backlog is full fails with EAGAIN instead of
        # waiting (a busy daemon, many clients at once): retry until the timeout.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                sock.connect(str(self.path))
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError from None
                time.sleep(0.02)

    @staticmethod
    def _read_line(sock: socket.socket) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)
            size += len(data)
            if b"\n" in data:
                return b"".join(chunks).split(b"\n", 1)[0]
            if size > 64 * MAX_LINE:
                raise ControlError("the daemon's answer is too large")
