"""Scheduling queries: resolving runs, concurrency groups, cancel requests."""

from __future__ import annotations

from collections.abc import Callable

from ciwatch.model import CancelMode, RunState
from ciwatch.store.database import Database

_QUEUED = RunState.QUEUED.value
_RUNNING = RunState.RUNNING.value


class SchedMixin:
    """The scheduler's half of Store."""

    _db: Database
    _clock: Callable[[], float]

    def request_cancel(self, run_id: int, reason: str, mode: CancelMode) -> bool:
        """Ask a run to stop. A queued run ends at once (canceled, or stays queued
        for INTERRUPT); a running one gets the request, which its worker obeys.
        False if the run had already finished."""
        with self._db.write() as c:
            row = c.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None or row["state"] not in (_QUEUED, _RUNNING):
                return False
            if row["state"] == _QUEUED:
                if mode is not CancelMode.INTERRUPT:
                    c.execute(
                        "UPDATE runs SET state = ?, reason = ?, finished_at = ? WHERE id = ?",
                        (RunState.CANCELED.value, reason, self._clock(), run_id),
                    )
                return True
            c.execute(
                "UPDATE runs SET cancel_requested = ?, cancel_mode = ? WHERE id = ?",
                (reason, mode.value, run_id),
            )
            return True

    def cancel_request(self, run_id: int) -> tuple[str, CancelMode] | None:
        """(reason, mode) if a stop was asked for this run, else None."""
        with self._db.read() as c:
            row = c.execute(
                "SELECT cancel_requested, cancel_mode FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
        if row is None or row["cancel_requested"] is None:
            return None
        return row["cancel_requested"], CancelMode(row["cancel_mode"] or CancelMode.CANCEL.value)
