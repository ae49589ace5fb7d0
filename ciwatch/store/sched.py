"""Scheduling queries: resolving runs, concurrency groups, wait reasons, cancel requests."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ciwatch.model import CancelMode, Run, RunState
from ciwatch.store.database import Database
from ciwatch.store.rows import RUN_SELECT, to_run

_QUEUED = RunState.QUEUED.value
_RUNNING = RunState.RUNNING.value


@dataclass(frozen=True)
class QueuedRun:
    """What the scheduler needs of a queued, resolved run (a light row: the
    queue is read on every pass and may hold thousands)."""

    id: int
    repo: str
    number: int
    sha: str
    concurrency_group: str | None
    on_new_commit: str | None
    priority: int
    wait_reason: str
    attempts: int  # so far: a worker that claimed it made one more

    @property
    def label(self) -> str:
        return f"{self.repo}#{self.number}"


class SchedMixin:
    """The scheduler's half of Store."""

    _db: Database
    _clock: Callable[[], float]

    # -- resolving -------------------------------------------------------------

    def unresolved_runs(self, limit: int = 100) -> list[Run]:
        """Queued runs whose pipeline the scheduler has not read yet, oldest first."""
        with self._db.read() as c:
            rows = c.execute(
                RUN_SELECT
                + """ WHERE r.state = ? AND r.resolved_at IS NULL
                ORDER BY r.created_at, r.id LIMIT ?""",
                (_QUEUED, limit),
            ).fetchall()
        return [to_run(r) for r in rows]

    def set_resolution(self, run_id: int, group: str | None, policy: str | None) -> bool:
        """Record the run's concurrency group and policy (None, None: no group)."""
        with self._db.write() as c:
            cur = c.execute(
                """UPDATE runs SET concurrency_group = ?, on_new_commit = ?, resolved_at = ?
                   WHERE id = ?""",
                (group, str(policy) if policy is not None else None, self._clock(), run_id),
            )
            return cur.rowcount == 1

    def set_resolutions(self, rows: Iterable[tuple[int, str | None, str | None]]) -> None:
        """set_resolution for (run id, group, policy) rows, in one transaction."""
        now = self._clock()
        params = [
            (group, str(policy) if policy is not None else None, now, run_id)
            for run_id, group, policy in rows
        ]
        if not params:
            return
        with self._db.write() as c:
            c.executemany(
                """UPDATE runs SET concurrency_group = ?, on_new_commit = ?, resolved_at = ?
                   WHERE id = ?""",
                params,
            )

    def set_priority(self, run_id: int, priority: int) -> bool:
        """Higher runs first; FIFO within a priority."""
        with self._db.write() as c:
            cur = c.execute("UPDATE runs SET priority = ? WHERE id = ?", (int(priority), run_id))
            return cur.rowcount == 1

    # -- the queue -------------------------------------------------------------

    def dispatch_queue(self, limit: int | None = None) -> list[QueuedRun]:
        """Queued, resolved runs in the order they may start: priority, then age
        (the first `limit` of them, or all)."""
        with self._db.read() as c:
            rows = c.execute(
                """SELECT r.id, p.name AS repo, r.number, r.sha, r.concurrency_group,
                          r.on_new_commit, r.priority, r.wait_reason,
                          (SELECT COUNT(*) FROM attempts a WHERE a.run_id = r.id)
                   FROM runs r JOIN repos p ON p.id = r.repo_id
                   WHERE r.state = ? AND r.resolved_at IS NOT NULL
                   ORDER BY r.priority DESC, r.created_at, r.id LIMIT ?""",
                (_QUEUED, -1 if limit is None else limit),
            ).fetchall()
        return [QueuedRun(*tuple(r)) for r in rows]

    def count_queued(self) -> int:
        with self._db.read() as c:
            return c.execute("SELECT COUNT(*) FROM runs WHERE state = ?", (_QUEUED,)).fetchone()[0]

    def running_runs(self) -> list[Run]:
        with self._db.read() as c:
            rows = c.execute(RUN_SELECT + " WHERE r.state = ? ORDER BY r.id", (_RUNNING,))
            return [to_run(r) for r in rows.fetchall()]

    def group_runs(self, group: str, states: Iterable[RunState]) -> list[Run]:
        """The runs of a concurrency group in the given states, oldest first."""
        values = [RunState(s).value for s in states]
        if not values:
            return []
        marks = ", ".join("?" for _ in values)
        with self._db.read() as c:
            rows = c.execute(
                RUN_SELECT + f" WHERE r.concurrency_group = ? AND r.state IN ({marks})"
                " ORDER BY r.id",
                (group, *values),
            ).fetchall()
        return [to_run(r) for r in rows]

    def set_wait_reason(self, run_id: int, reason: str) -> bool:
        """What a queued run waits on; written only when it changes."""
        return self.set_wait_reasons({run_id: reason}) == 1

    def set_wait_reasons(self, reasons: Mapping[int, str]) -> int:
        """Several at once, in one transaction; returns how many changed."""
        if not reasons:
            return 0
        with self._db.write() as c:
            changed = 0
            for run_id, reason in reasons.items():
                cur = c.execute(
                    """UPDATE runs SET wait_reason = ?
                       WHERE id = ? AND state = ? AND wait_reason != ?""",
                    (reason, run_id, _QUEUED, reason),
                )
                changed += cur.rowcount
            return changed

    def wait_reasons(self, limit: int = 50) -> list[tuple[int, str, str]]:
        """(run id, label, reason) of queued runs in dispatch order."""
        with self._db.read() as c:
            rows = c.execute(
                """SELECT r.id, p.name || '#' || r.number AS label, r.wait_reason
                   FROM runs r JOIN repos p ON p.id = r.repo_id WHERE r.state = ?
                   ORDER BY r.priority DESC, r.created_at, r.id LIMIT ?""",
                (_QUEUED, limit),
            ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    # -- lost workers ----------------------------------------------------------

    def end_lost_run(self, run_id: int, attempt_id: int, reason: str) -> bool:
        """End a run `error` because its worker is lost: only while that attempt is
        still the current one with its lease expired (a worker that renewed
        meanwhile keeps its run)."""
        with self._db.write() as c:
            now = self._clock()
            lost = c.execute(
                """SELECT 1 FROM attempts WHERE id = ? AND run_id = ? AND state = ?
                   AND lease_until < ?""",
                (attempt_id, run_id, _RUNNING, now),
            ).fetchone()
            if lost is None:
                return False
            error = RunState.ERROR.value
            cur = c.execute(
                """UPDATE runs SET state = ?, reason = ?, finished_at = ?
                   WHERE id = ? AND state = ?""",
                (error, reason, now, run_id, _RUNNING),
            )
            if cur.rowcount == 0:
                return False
            c.execute(
                """UPDATE attempts SET state = ?, reason = ?, finished_at = ?
                   WHERE run_id = ? AND state = ?""",
                (error, reason, now, run_id, _RUNNING),
            )
            return True

    # -- stop requests -----------------------------------------------------------

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
