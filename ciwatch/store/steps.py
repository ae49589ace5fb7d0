"""Step records and artifacts of a run's attempts."""

from __future__ import annotations

from collections.abc import Callable

from ciwatch.errors import NotFoundError
from ciwatch.model import StepRecord, StepResult, StepState
from ciwatch.store.database import Database
from ciwatch.store.rows import Artifact, to_artifact, to_step


class StepsMixin:
    """The step and artifact half of Store."""

    _db: Database
    _clock: Callable[[], float]

    def start_step(
        self, run_id: int, attempt: int, cell: str, idx: int, name: str, log_path: str
    ) -> int:
        """Record a step as running; returns the step id for finish_step."""
        with self._db.write() as c:
            return c.execute(
                """INSERT INTO steps (run_id, attempt, cell, idx, name, state, started_at,
                                      log_path)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id""",
                (
                    run_id,
                    attempt,
                    cell,
                    idx,
                    name,
                    StepState.RUNNING.value,
                    self._clock(),
                    log_path,
                ),
            ).fetchone()[0]

    def finish_step(self, step_id: int, result: StepResult) -> None:
        with self._db.write() as c:
            cur = c.execute(
                """UPDATE steps SET state = ?, exit_code = ?, failure = ?, reason = ?,
                       started_at = COALESCE(?, started_at), finished_at = ?,
                       allowed_failure = ?, tries = ?, log_bytes = ?, log_truncated = ?,
                       cpu_seconds = ?, max_rss_kib = ?
                   WHERE id = ?""",
                (
                    result.state.value,
                    result.exit_code,
                    result.failure.value if result.failure else None,
                    result.reason,
                    result.started_at,
                    result.finished_at if result.finished_at is not None else self._clock(),
                    int(result.allowed_failure),
                    result.tries,
                    result.log_bytes,
                    int(result.log_truncated),
                    result.cpu_seconds,
                    result.max_rss_kib,
                    step_id,
                ),
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"no step {step_id}")

    def skip_step(
        self,
        run_id: int,
        attempt: int,
        cell: str,
        idx: int,
        name: str,
        reason: str,
        *,
        state: StepState = StepState.SKIPPED,
    ) -> int:
        """Record a step that never ran: skipped (`when`, a failed need) or, with
        `state=CANCELED`, dropped because the run was canceled first."""
        with self._db.write() as c:
            return c.execute(
                """INSERT INTO steps (run_id, attempt, cell, idx, name, state, reason, tries)
                   VALUES (?, ?, ?, ?, ?, ?, ?, 0) RETURNING id""",
                (run_id, attempt, cell, idx, name, StepState(state).value, reason),
            ).fetchone()[0]

    def steps(self, run_id: int, attempt: int | None = None) -> list[StepRecord]:
        """The steps of one attempt (the run's newest by default), matrix cells in
        the order they were first recorded, steps in file order within a cell."""
        with self._db.read() as c:
            if attempt is None:
                attempt = c.execute(
                    """SELECT COALESCE((SELECT MAX(number) FROM attempts WHERE run_id = ?),
                                       (SELECT MAX(attempt) FROM steps WHERE run_id = ?))""",
                    (run_id, run_id),
                ).fetchone()[0]
            rows = c.execute(
                """SELECT * FROM steps WHERE run_id = ? AND attempt = ?
                   ORDER BY MIN(id) OVER (PARTITION BY cell), idx""",
                (run_id, attempt),
            ).fetchall()
        return [to_step(r) for r in rows]

    def add_artifact(
        self, run_id: int, step_id: int | None, path: str, size: int, stored_path: str
    ) -> Artifact:
        with self._db.write() as c:
            row = c.execute(
                """INSERT INTO artifacts (run_id, step_id, path, size, stored_path)
                   VALUES (?, ?, ?, ?, ?) RETURNING *""",
                (run_id, step_id, path, size, stored_path),
            ).fetchone()
        return to_artifact(row)

    def artifacts(self, run_id: int) -> list[Artifact]:
        with self._db.read() as c:
            rows = c.execute(
                "SELECT * FROM artifacts WHERE run_id = ? ORDER BY id", (run_id,)
            ).fetchall()
        return [to_artifact(r) for r in rows]
