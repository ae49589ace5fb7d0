"""The daemon's web app, assembled: every router of ciwatch.web gets its
collaborators here (the store, the state directory, the actions), so the web
modules never import the daemon or the orchestration layer."""

from __future__ import annotations

from fastapi import FastAPI

from ciwatch.web.hooks import StoreDeliveries, hooks_router
from ciwatch.web.server import create_app


def build_app(daemon) -> FastAPI:
    """The FastAPI app the daemon serves on `listen`."""
    routers = [
        hooks_router(
            daemon.hook_forges, daemon.intake.submit, StoreDeliveries(daemon.store), log=daemon.log
        ),
    ]
    return create_app(*routers)
