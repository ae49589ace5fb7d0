"""The daemon's web app, assembled: every router of ciwatch.web gets its
collaborators here (the store, the state directory, the actions), so the web
modules never import the daemon or the orchestration layer."""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI

from ciwatch import __version__
from ciwatch.commands.viaapi import web_token
from ciwatch.errors import ConfigError
from ciwatch.model import Run
from ciwatch.web.api import actions_router, runs_router
from ciwatch.web.auth import WebAuth
from ciwatch.web.badges import badges_router, branch_state
from ciwatch.web.hooks import StoreDeliveries, hooks_router
from ciwatch.web.live import ChangeSignal, live_router
from ciwatch.web.logapi import log_router
from ciwatch.web.logindex import LogIndexes
from ciwatch.web.metrics import Collector, metrics_router
from ciwatch.web.pages import pages_router, session_of
from ciwatch.web.readmodel import ReadModel
from ciwatch.web.server import create_app
from ciwatch.why import run_lines as why_lines


class DaemonActions:
    """The API's actions (ciwatch.web.api.Actions), done by the daemon's Operations."""

    def __init__(self, ops) -> None:
        self.ops = ops

    def trigger(self, repo: str, branch: str | None) -> Run:
        return self.ops.trigger_run(repo, branch)

    def cancel(self, run_id: int) -> Run:
        return self.ops.cancel_run(run_id)

    def retry(self, run_id: int) -> Run:
        return self.ops.retry_run(run_id)


class TokenSource:
    """The web token of the daemon's current configuration, read again after a
    reload. An unreadable token file at start stops the daemon (ConfigError);
    after a reload it makes the web read-only, with an error in the log."""

    def __init__(self, daemon, log: logging.Logger) -> None:
        self.d = daemon
        self.log = log
        self._wiring = daemon.wiring
        self._token = web_token(daemon.wiring.config, daemon.wiring.base, daemon.environ)

    def __call__(self) -> str | None:
        wiring = self.d.wiring
        if wiring is not self._wiring:
            self._wiring = wiring
            try:
                self._token = web_token(wiring.config, wiring.base, self.d.environ)
            except ConfigError as exc:
                self._token = None
                self.log.error("web actions disabled: %s", exc)
        return self._token


def build_app(daemon) -> FastAPI:
    """The FastAPI app the daemon serves on `listen`."""
    store, log = daemon.store, daemon.log
    read = ReadModel(
        store, clock=time.time, why=lambda run: why_lines(store, daemon.state_dir, run)
    )
    auth = WebAuth(
        TokenSource(daemon, log), clock=time.time, public_url=daemon.wiring.config.public_url
    )
    collector = Collector(
        store,
        sources=daemon.ops.sources,
        outbox=lambda: daemon.outbox.status() if daemon.outbox else {},
        version=__version__,
    )
    routers = [
        runs_router(read, status=daemon.ops.status, sources=daemon.ops.sources),
        actions_router(read, auth, DaemonActions(daemon.ops)),
        metrics_router(collector),
        *_ui_routers(store, read, auth),
    ]
    hooks = hooks_router(
        daemon.hook_forges, daemon.intake.submit, StoreDeliveries(daemon.store), log=log
    )
    return create_app(*routers, unlisted=[hooks], health=lambda: _health(daemon))


def _ui_routers(store, read: ReadModel, auth: WebAuth) -> list:
    """The pages, step logs and their live streams, badges."""
    changes = ChangeSignal(store.path)
    indexes = LogIndexes()
    return [
        log_router(store.get_step, changes.version, indexes=indexes, removed=store.logs_removed),
        live_router(changes),
        badges_router(lambda repo, branch: branch_state(store, repo, branch)),
        pages_router(read, step=store.get_step, session=session_of(auth), indexes=indexes),
    ]


def _health(daemon) -> dict:
    """Ready once recovery is done and the web server is up (it starts after
    recovery), until the daemon begins to stop."""
    counts = daemon.store.count_states()
    return {"ready": not daemon.stopping.is_set(), **counts}
