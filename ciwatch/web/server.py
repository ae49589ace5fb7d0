"""The daemon's HTTP server: a FastAPI app served by uvicorn in a background thread."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping

import uvicorn
from fastapi import APIRouter, FastAPI

from ciwatch.errors import CiwatchError


class WebServerError(CiwatchError):
    """The HTTP server could not start (address in use, no permission, ...)."""


def create_app(
    *routers: APIRouter, health: Callable[[], Mapping[str, object]] | None = None
) -> FastAPI:
    """The app with `/healthz` and the given routers. No interactive API docs:
    the server faces forges, not browsers of its schema."""
    app = FastAPI(title="ciwatch", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", **(health() if health else {})}

    for router in routers:
        app.include_router(router)
    return app


class WebServer:
    """Serves `app` on host:port (port 0 picks a free one) until stop()."""

    def __init__(
        self,
        app,
        host: str,
        port: int,
        log: logging.Logger | None = None,
        *,
        ready_timeout: float = 5.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.app = app
        self.host = host
        self._port = port
        self.log = log or logging.getLogger("ciwatch.web")
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Bind, start serving, and return once requests are answered."""
        if self.running:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            # Bound here, not by uvicorn, so a busy port is an error at start.
            sock = socket.create_server((self.host, self._port), family=family, backlog=128)
        except OSError as exc:
            raise WebServerError(
                f"cannot listen on {self.host}:{self._port}: {exc.strerror or exc}"
            ) from None
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            http="h11",  # one HTTP implementation everywhere: the one the tests exercise
            ws="none",
            lifespan="off",
            server_header=False,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=max(1, int(self.stop_timeout)),
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="ciwatch-web", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + self.ready_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise WebServerError(f"the HTTP server on {self.url} did not start")
            time.sleep(0.01)
        self.log.info("listening on %s", self.url)

    def stop(self) -> None:
        """Stop accepting, let requests in flight finish (bounded), and return."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(self.stop_timeout + 1)
        if thread.is_alive():
            server.force_exit = True
            thread.join(2)
        self._server = self._thread = None
