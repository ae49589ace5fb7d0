"""Attempts and their leases: claiming a run, fencing out lost workers.

An attempt is "current" while its state is running; at most one per run is, and
it is always the run's newest: every path that starts, requeues or finishes a
run ends the running one first. Fencing therefore needs no more than
`state = 'running'` in the conditions below.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from ciwatch.errors import NotFoundError, StoreError
from ciwatch.model import Attempt, RunState
from ciwatch.store.database import Database
from ciwatch.store.rows import fetch_run, to_attempt

_RUNNING = RunState.RUNNING.value
_QUEUED = RunState.QUEUED.value


def _finished(state: RunState) -> str:
    if not RunState(state).finished:
        raise StoreError(f"{RunState(state).value!r} is not a finished state")
    return RunState(state).value


class AttemptsMixin:
    """The attempt half of Store (kept apart to keep each module to one job)."""

    _db: Database
    _clock: Callable[[], float]

    def start_attempt(self, run_id: int, worker: str, lease_seconds: float) -> Attempt | None:
        """Claim a run for `worker`: the next attempt, or None if it is not claimable.

        Claimable: queued, or running with the current attempt's lease expired
        (that attempt is then recorded as lost).
        """
        if lease_seconds <= 0:
            raise StoreError("lease_seconds must be positive")
        with self._db.write() as c:
            return self._claim(c, run_id, worker, lease_seconds)

    def _claim(
        self, c: sqlite3.Connection, run_id: int, worker: str, lease_seconds: float
    ) -> Attempt | None:
        """start_attempt inside the caller's write transaction."""
        now = self._clock()
        run = c.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
        if run is None:
            raise NotFoundError(f"no run {run_id}")
        if run["state"] == _RUNNING:
            lost = c.execute(
                """UPDATE attempts SET state = ?, finished_at = ?, reason = ?
                   WHERE run_id = ? AND state = ? AND lease_until < ?""",
                (
                    RunState.ERROR.value,
                    now,
                    "worker lost: lease expired",
                    run_id,
                    _RUNNING,
                    now,
                ),
            )
            if lost.rowcount == 0:
                return None
        elif run["state"] != _QUEUED:
            return None
        c.execute(
            """UPDATE runs SET state = ?, started_at = COALESCE(started_at, ?)
               WHERE id = ?""",
            (_RUNNING, now, run_id),
        )
        row = c.execute(
            """INSERT INTO attempts (run_id, number, state, worker, started_at, lease_until)
               VALUES (?, (SELECT COALESCE(MAX(number), 0) + 1 FROM attempts
                           WHERE run_id = ?), ?, ?, ?, ?)
               RETURNING *""",
            (run_id, run_id, _RUNNING, worker, now, now + lease_seconds),
        ).fetchone()
        return to_attempt(row)

    def renew_lease(self, attempt_id: int, lease_seconds: float) -> bool:
        """Extend the lease. False once the attempt is no longer the run's current
        one (finished, requeued or taken over): the worker must stop."""
        with self._db.write() as c:
            cur = c.execute(
                "UPDATE attempts SET lease_until = ? WHERE id = ? AND state = ?",
                (self._clock() + lease_seconds, attempt_id, _RUNNING),
            )
            return cur.rowcount == 1

    def finish_attempt(self, attempt_id: int, state: RunState, reason: str = "") -> bool:
        """Record how an attempt ended. False if it had already ended (fenced)."""
        value = _finished(state)
        with self._db.write() as c:
            cur = c.execute(
                """UPDATE attempts SET state = ?, reason = ?, finished_at = ?
                   WHERE id = ? AND state = ?""",
                (value, reason, self._clock(), attempt_id, _RUNNING),
            )
            return cur.rowcount == 1

    def finish_run(
        self, run_id: int, state: RunState, reason: str = "", *, attempt_id: int | None = None
    ) -> bool:
        """Give a run its final state; a still-running attempt ends with it.

        False if the run had already finished (a finished state is final) or, when
        `attempt_id` is given, if that attempt is no longer the current one.
        """
        value = _finished(state)
        with self._db.write() as c:
            now = self._clock()
            if (
                attempt_id is not None
                and not c.execute(
                    "SELECT 1 FROM attempts WHERE id = ? AND run_id = ? AND state = ?",
                    (attempt_id, run_id, _RUNNING),
                ).fetchone()
            ):
                return False
            cur = c.execute(
                """UPDATE runs SET state = ?, reason = ?, finished_at = ?
                   WHERE id = ? AND state IN (?, ?)""",
                (value, reason, now, run_id, _QUEUED, _RUNNING),
            )
            if cur.rowcount == 0:
                fetch_run(c, run_id)  # NotFoundError for an unknown run
                return False
            self._end_attempts(c, run_id, value, reason, now)
            return True

    def requeue(self, run_id: int, reason: str, *, attempt_id: int | None = None) -> bool:
        """Put a running run back in the queue; its running attempt ends as lost.

        With `attempt_id` (from expired_attempts) only while that attempt is still
        running with its lease expired, so a worker that renewed meanwhile keeps it.
        """
        with self._db.write() as c:
            now = self._clock()
            if (
                attempt_id is not None
                and not c.execute(
                    """SELECT 1 FROM attempts
                   WHERE id = ? AND run_id = ? AND state = ? AND lease_until < ?""",
                    (attempt_id, run_id, _RUNNING, now),
                ).fetchone()
            ):
                return False
            cur = c.execute(
                """UPDATE runs SET state = ?, reason = ?, cancel_requested = NULL,
                   cancel_mode = NULL WHERE id = ? AND state = ?""",
                (_QUEUED, reason, run_id, _RUNNING),
            )
            if cur.rowcount == 0:
                return False
            self._end_attempts(c, run_id, RunState.ERROR.value, reason, now)
            return True

    def attempts(self, run_id: int) -> list[Attempt]:
        with self._db.read() as c:
            rows = c.execute(
                "SELECT * FROM attempts WHERE run_id = ? ORDER BY number", (run_id,)
            ).fetchall()
        return [to_attempt(r) for r in rows]

    def expired_attempts(self) -> list[Attempt]:
        """Running attempts whose lease ran out: their worker is presumed lost."""
        with self._db.read() as c:
            rows = c.execute(
                """SELECT * FROM attempts WHERE state = ? AND lease_until < ?
                   ORDER BY lease_until, id""",
                (_RUNNING, self._clock()),
            ).fetchall()
        return [to_attempt(r) for r in rows]

    @staticmethod
    def _end_attempts(
        c: sqlite3.Connection, run_id: int, state: str, reason: str, now: float
    ) -> None:
        c.execute(
            """UPDATE attempts SET state = ?, reason = ?, finished_at = ?
               WHERE run_id = ? AND state = ?""",
            (state, reason, now, run_id, _RUNNING),
        )
