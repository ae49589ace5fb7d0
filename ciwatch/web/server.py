"""The daemon's HTTP server: a FastAPI app served by uvicorn in a background thread."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.routing import Match, Route

from ciwatch import __version__
from ciwatch.errors import CiwatchError


class WebServerError(CiwatchError):
    """The HTTP server could not start (address in use, no permission, ...)."""


def create_app(
    *routers: APIRouter,
    health: Callable[[], Mapping[str, object]] | None = None,
    unlisted: Sequence[APIRouter] = (),
) -> FastAPI:
    """The app with `/healthz` and the given routers; its OpenAPI description
    at /api/openapi.json (no bundled docs page: that would load scripts from a
    CDN into a self-hosted server's origin). `unlisted` routers (the
    webhooks: forges, not people, call them) stay out of the description.

    `/healthz` answers 200 while the daemon is live and ready, 503 when
    `health()` says {"ready": False} (starting, stopping); `/healthz/live`
    answers 200 as long as requests are served at all."""
    app = FastAPI(
        title="ciwatch",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )

    @app.get("/healthz", tags=["operations"], responses={503: {"description": "not ready"}})
    def healthz() -> JSONResponse:
        """Liveness and readiness."""
        body = {"status": "ok", **(health() if health else {})}
        ready = body.get("ready", True) is not False
        if not ready:
            body["status"] = "unavailable"
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/healthz/live", tags=["operations"])
    def live() -> dict:
        """Liveness only: the process serves requests."""
        return {"status": "ok"}

    @app.exception_handler(405)
    async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's Allow names only the first route that matched the path;
        # a path with one route per method (GET, POST, DELETE) needs them all.
        allowed = set()
        for route in (*app.router.routes, *(r for rt in (*routers, *unlisted) for r in rt.routes)):
            if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE:
                allowed |= route.methods or set()
        headers = {"Allow": ", ".join(sorted(allowed))}
        return JSONResponse({"detail": "Method Not Allowed"}, 405, headers=headers)

    for router in routers:
        for route in router.routes:
            # Whatever a path names (a run, a step, a repository) may not exist: every
            # such route may answer 404 {"detail": ...}, and its description says so.
            if isinstance(route, APIRoute) and "{" in route.path and 404 not in route.responses:
                route.responses[404] = {"description": "not found", "model": Problem}
        app.include_router(router)
    for router in unlisted:
        app.include_router(router, include_in_schema=False)
    return app


class Problem(BaseModel):
    detail: str


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
        # Accepted connections inherit it: without it a keep-alive response
        # written in two parts (headers, body) waits ~40 ms for a delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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


def split_listen(listen: str) -> tuple[str, int]:
    """ "127.0.0.1:8750" or "[::1]:8750" -> (host, port); port 0 picks a free one."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise CiwatchError(f"listen: {listen!r} is not HOST:PORT")
    return host.strip("[]"), int(port)
