"""A cheap "something changed" signal for the pages' live updates.

Workers write runs and steps from their own processes, the daemon from its
own connection: `PRAGMA data_version` on a connection of our own changes
whenever any of them commits, and costs no table read. The pages poll
`GET /api/live` (a few bytes, 304 while nothing changed) and fetch the JSON
they show only when its version moved; log streams use the same signal to
notice that a step has finished.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ciwatch.errors import StoreError


class ChangeSignal:
    """The database's data_version, read at most every `min_interval` seconds
    whatever the number of clients asking."""

    def __init__(
        self,
        db_path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        min_interval: float = 0.2,
    ) -> None:
        try:
            self._conn = sqlite3.connect(
                Path(db_path), isolation_level=None, check_same_thread=False, timeout=5
            )
            self._conn.execute("PRAGMA query_only = 1")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {db_path} for change checks: {exc}") from exc
        self._clock = clock
        self._min_interval = min_interval
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._version = 0
        # A daemon restart starts the counter again: the boot time keeps tokens apart.
        self._boot = f"{int(wall() * 1000):x}"

    def version(self) -> int:
        with self._lock:
            now = self._clock()
            if now - self._read_at >= self._min_interval:
                try:
                    self._version = self._conn.execute("PRAGMA data_version").fetchone()[0]
                except sqlite3.Error:
                    self._version += 1  # unsure: say "changed" rather than miss a change
                self._read_at = now
            return self._version

    def token(self) -> str:
        return f"{self._boot}-{self.version()}"

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def live_router(changes: ChangeSignal) -> APIRouter:
    router = APIRouter()

    @router.get("/api/live", include_in_schema=False)
    def live(request: Request) -> Response:
        token = changes.token()
        etag = f'"{token}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return JSONResponse({"version": token}, headers=headers)

    return router
