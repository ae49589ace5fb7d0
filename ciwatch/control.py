"""The daemon's local control socket, ``STATE/control.sock`` (its client:
``ciwatch.controlclient``).

One JSON object per line each way over an AF_UNIX stream socket: a request
``{"cmd": NAME, ...}`` gets one answer ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``; a connection may carry several requests.
The socket is mode 0600: whoever may talk to it may drive the daemon, so only
its user (and root) can. The answers of each command are described in
``ciwatch.commands.control``.

The server never dies of its input: bad JSON, an unknown command, a line over
``MAX_LINE`` bytes or a handler that raises all become error answers, and a
slow or vanished client costs one thread, bounded by ``MAX_CLIENTS``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import socket
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from ciwatch.errors import CiwatchError

SOCKET_NAME = "control.sock"
MAX_LINE = 1 << 20  # bytes in one request line, newline included
MAX_CLIENTS = 64  # connections served at once; more are told to try again
CLIENT_IDLE = 30.0  # seconds a connection may sit without a full request
_ACCEPT_BACKOFF = 0.25  # after a failed accept (EMFILE): wait, then try again
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes, NUL included

Handler = Callable[[dict], dict]


class ControlError(CiwatchError):
    """Talking to the daemon over its control socket failed."""


class DaemonNotRunning(ControlError):
    """No daemon listens on the state directory's control socket."""


class DaemonRefused(ControlError):
    """The daemon answered the request with an error."""

    def __init__(self, message: str, answer: dict) -> None:
        super().__init__(message)
        self.answer = answer


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


def check_length(path: Path) -> None:
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ControlError(
            f"control socket path {path} is longer than {_SUN_PATH_MAX} bytes;"
            " use a shorter state_dir"
        )


def encode(answer: dict) -> bytes:
    return json.dumps(answer, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


class ControlServer:
    """Serves the handlers the daemon registers on a socket, from its own thread.

    `handlers` maps a command name to a function taking the request and
    returning the answer; "ok": true is added when the handler leaves it out.
    """

    def __init__(
        self, path: Path, handlers: Mapping[str, Handler], log: logging.Logger | None = None
    ) -> None:
        self.path = Path(path)
        self.handlers = dict(handlers)
        self.log = log or logging.getLogger("ciwatch.control")
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._clients: set[socket.socket] = set()
        self._clients_lock = threading.Lock()
        self._inode: tuple[int, int] | None = None
        self._wake: tuple[int, int] | None = None  # a pipe: stop() wakes the accept loop

    # -- life ----------------------------------------------------------------

    def start(self) -> None:
        check_length(self.path)
        self._refuse_if_live()
        # Bind under a temporary name, restrict it, then rename over the final
        # name: the socket is never reachable with a wider mode, and a stale one
        # is replaced atomically.
        tmp = self.path.with_name(f".c{os.getpid()}")  # not longer than the final name
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            sock.listen(socket.SOMAXCONN)
            os.replace(tmp, self.path)
        except OSError as exc:
            sock.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise ControlError(f"cannot listen on {self.path}: {exc.strerror or exc}") from None
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        sock.setblocking(False)
        self._sock = sock
        self._wake = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept_loop, name="control", daemon=True)
        self._thread.start()
        self.log.info("control socket at %s", self.path)

    def _refuse_if_live(self) -> None:
        """A socket file left by a dead daemon is replaced; a live one is not."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{self.path} exists and is not a socket; remove it")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(self.path))
            except (ConnectionRefusedError, FileNotFoundError):
                self.log.info("replacing the stale control socket %s", self.path)
                return
            except BlockingIOError:
                pass  # a full backlog: someone is listening
            except OSError as exc:
                raise ControlError(f"cannot check {self.path}: {exc}") from None
        raise ControlError(f"another daemon is listening on {self.path}")

    def stop(self) -> None:
        self._stopping.set()
        if self._wake is not None:
            os.write(self._wake[1], b"x")
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None
        with self._clients_lock:
            for conn in self._clients:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        # Remove the file only if it is still ours (not a successor's socket).
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass

    # -- serving -------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._sock is not None and self._wake is not None
        poller = select.poll()  # not select(): the daemon may hold more than 1024 fds
        poller.register(self._sock, select.POLLIN)
        poller.register(self._wake[0], select.POLLIN)
        while not self._stopping.is_set():
            poller.poll()
            if self._stopping.is_set():
                return
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                continue
            except OSError as exc:
                # EMFILE and friends: say so, back off, keep serving.
                self.log.error("control socket: accept failed: %s", exc)
                self._stopping.wait(_ACCEPT_BACKOFF)
                continue
            conn.setblocking(True)
            with self._clients_lock:
                busy = len(self._clients) >= MAX_CLIENTS
                if not busy:
                    self._clients.add(conn)
            if busy:
                self._refuse(conn, "too many control connections; try again")
                continue
            threading.Thread(
                target=self._serve_client, args=(conn,), name="control-client", daemon=True
            ).start()

    def _refuse(self, conn: socket.socket, message: str) -> None:
        with conn:
            conn.settimeout(1.0)
            with contextlib.suppress(OSError):
                conn.sendall(encode({"ok": False, "error": message}))

    def _serve_client(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(CLIENT_IDLE)
            with conn.makefile("rb") as reader:
                while not self._stopping.is_set():
                    line = reader.readline(MAX_LINE + 1)
                    if not line.endswith(b"\n"):
                        if len(line) <= MAX_LINE:
                            return  # end of input, or the client went away mid-line
                        conn.sendall(
                            encode({"ok": False, "error": f"request over {MAX_LINE} bytes"})
                        )
                        if not self._skip_line(reader):
                            return
                        continue
                    conn.sendall(encode(self.answer(line)))
        except TimeoutError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN):
                self.log.warning("control connection failed: %s", exc)
        except Exception:  # a thread boundary: one client must not take the server down
            self.log.exception("control connection failed")
        finally:
            with self._clients_lock:
                self._clients.discard(conn)
            conn.close()

    @staticmethod
    def _skip_line(reader) -> bool:
        """Discard the rest of an oversized line so the next request is read
        whole; False when the client stops first or sends far too much."""
        for _ in range(64):
            chunk = reader.readline(MAX_LINE)
            if chunk.endswith(b"\n"):
                return True
            if not chunk:
                return False
        return False

    def answer(self, line: bytes) -> dict:
        """The answer to one request line (never raises)."""
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            return {"ok": False, "error": f"bad request: not JSON ({exc})"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'bad request: expected {"cmd": "...", ...}'}
        cmd = request["cmd"]
        handler = self.handlers.get(cmd)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return {"ok": False, "error": f"unknown command {cmd[:40]!r}; known: {known}"}
        try:
            result = handler(request)
        except CiwatchError as exc:
            return {"ok": False, "error": str(exc) or type(exc).__name__}
        except Exception as exc:  # the handler boundary: the daemon answers, logs, lives
            self.log.exception("control command %r failed", cmd)
            return {"ok": False, "error": f"internal error in {cmd}: {type(exc).__name__}: {exc}"}
        if not isinstance(result, dict):
            self.log.error("control command %r answered %r, not an object", cmd, type(result))
            return {"ok": False, "error": f"internal error in {cmd}: no answer"}
        result = {"ok": True, **result}
        try:
            encode(result)
        except (TypeError, ValueError) as exc:
            self.log.error("control command %r answered something not JSON: %s", cmd, exc)
            return {"ok": False, "error": f"internal error in {cmd}: answer is not JSON"}
        return result
