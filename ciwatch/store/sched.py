"""Scheduling queries: resolving runs, concurrency groups, cancel requests."""

from __future__ import annotations

from collections.abc import Callable

from ciwatch.store.database import Database


class SchedMixin:
    """The scheduler's half of Store."""

    _db: Database
    _clock: Callable[[], float]
