"""Refs seen by the sources (watcher, poller, hook): the last sha per ref."""

from __future__ import annotations

from collections.abc import Callable

from ciwatch.store.database import Database


class RefsMixin:
    """The refs_seen half of Store."""

    _db: Database
    _clock: Callable[[], float]
