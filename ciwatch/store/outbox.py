"""The status outbox: commit statuses waiting to reach a forge, and which run
states were already turned into statuses.

Only the newest undelivered row per (forge, forge_repo, sha, context) is ever
sent; older ones are marked superseded, so a forge that was down gets the
final state once, never a replay of every intermediate one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from enum import StrEnum
from typing import NamedTuple

from ciwatch.forges.types import StatusState, StatusUpdate
from ciwatch.model import Run, RunState
from ciwatch.store.database import Database
from ciwatch.store.rows import RUN_SELECT, to_run

_KEY = "forge = ? AND forge_repo = ? AND sha = ? AND context = ?"
_LAST_ERRORS = 3
_RUNNING = RunState.RUNNING.value
_ATTEMPTS = "(SELECT COUNT(*) FROM attempts a WHERE a.run_id = r.id)"


class Outcome(StrEnum):
    """How a row ended (RETRY: it did not, it is tried again at next_at)."""

    DELIVERED = "delivered"
    APPLIED = "applied"  # the forge had it already
    SUPERSEDED = "superseded"  # a newer state for the same (sha, context) replaced it
    GAVE_UP = "gave_up"  # retried past the forge's status horizon
    DROPPED = "dropped"  # the forge does not know the sha or repository
    RETRY = "retry"


class DueStatus(NamedTuple):
    id: int
    update: StatusUpdate
    tries: int
    created_at: float


def _to_update(row) -> StatusUpdate:
    return StatusUpdate(
        forge=row["forge"],
        forge_repo=row["forge_repo"],
        sha=row["sha"],
        context=row["context"],
        state=StatusState(row["state"]),
        description=row["description"],
        target_url=row["target_url"],
        run_id=row["run_id"],
        extra=tuple((str(k), str(v)) for k, v in json.loads(row["extra"] or "{}").items()),
    )


def _key(update: StatusUpdate) -> tuple[str, str, str, str]:
    return (update.forge, update.forge_repo, update.sha, update.context)


class OutboxMixin:
    """The outbox half of Store."""

    _db: Database
    _clock: Callable[[], float]

    def enqueue_status(self, update: StatusUpdate, now: float) -> int:
        """Queue a status; older undelivered ones for its (sha, context) are
        superseded. The same status as the newest queued or delivered one is
        not queued again (a repeated sweep posts nothing twice): its id is returned."""
        with self._db.write() as c:
            last = c.execute(
                f"""SELECT * FROM outbox WHERE {_KEY}
                    AND (done_at IS NULL OR outcome IN (?, ?)) ORDER BY id DESC LIMIT 1""",
                (*_key(update), Outcome.DELIVERED.value, Outcome.APPLIED.value),
            ).fetchone()
            if last is not None and _to_update(last) == update:
                return last["id"]
            new_id = c.execute(
                """INSERT INTO outbox (forge, forge_repo, run_id, sha, context, state,
                                       description, target_url, extra, created_at, next_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id""",
                (
                    update.forge,
                    update.forge_repo,
                    update.run_id,
                    update.sha,
                    update.context,
                    StatusState(update.state).value,
                    update.description,
                    update.target_url,
                    json.dumps(dict(update.extra)),
                    now,
                    now,
                ),
            ).fetchone()[0]
            c.execute(
                f"""UPDATE outbox SET done_at = ?, outcome = ?
                    WHERE {_KEY} AND done_at IS NULL AND id < ?""",
                (now, Outcome.SUPERSEDED.value, *_key(update), new_id),
            )
            return new_id

    def due_statuses(
        self, now: float, limit: int = 50, *, skip_forges: Collection[str] = ()
    ) -> list[DueStatus]:
        """The newest undelivered row per (forge, forge_repo, sha, context) whose
        next_at has come, soonest first; older undelivered rows for the same key
        are marked superseded. Rows of `skip_forges` (held back) are left alone."""
        skip = sorted(set(skip_forges))
        marks = ", ".join("?" for _ in skip)
        with self._db.write() as c:
            c.execute(
                """UPDATE outbox SET done_at = ?, outcome = ?
                   WHERE done_at IS NULL AND EXISTS (
                       SELECT 1 FROM outbox n WHERE n.forge = outbox.forge
                       AND n.forge_repo = outbox.forge_repo AND n.sha = outbox.sha
                       AND n.context = outbox.context AND n.id > outbox.id
                       AND n.done_at IS NULL)""",
                (now, Outcome.SUPERSEDED.value),
            )
            rows = c.execute(
                f"""SELECT * FROM outbox WHERE done_at IS NULL AND next_at <= ?
                    AND forge NOT IN ({marks}) ORDER BY next_at, id LIMIT ?""",
                (now, *skip, limit),
            ).fetchall()
        return [DueStatus(r["id"], _to_update(r), r["tries"], r["created_at"]) for r in rows]

    def mark_status(
        self,
        status_id: int,
        outcome: Outcome | str,
        *,
        next_at: float | None = None,
        error: str = "",
    ) -> bool:
        """Record a try: RETRY (with next_at) keeps the row queued, any other
        outcome ends it. False if the row had ended meanwhile."""
        outcome = Outcome(outcome)
        tried = 0 if outcome is Outcome.SUPERSEDED else 1
        with self._db.write() as c:
            if outcome is Outcome.RETRY:
                if next_at is None:
                    raise ValueError("a retry needs next_at")
                cur = c.execute(
                    """UPDATE outbox SET tries = tries + 1, next_at = ?, last_error = ?
                       WHERE id = ? AND done_at IS NULL""",
                    (next_at, error, status_id),
                )
            else:
                # A row superseded while it was being posted may still have arrived.
                cur = c.execute(
                    """UPDATE outbox SET tries = tries + ?, done_at = ?, outcome = ?,
                           last_error = CASE WHEN ? != '' THEN ? ELSE last_error END
                       WHERE id = ? AND (done_at IS NULL OR outcome = ?)""",
                    (
                        tried,
                        self._clock(),
                        outcome.value,
                        error,
                        error,
                        status_id,
                        Outcome.SUPERSEDED.value,
                    ),
                )
            return cur.rowcount == 1

    def status_row(self, status_id: int) -> dict | None:
        """One outbox row as a dict (for tests and diagnostics)."""
        with self._db.read() as c:
            row = c.execute("SELECT * FROM outbox WHERE id = ?", (status_id,)).fetchone()
        return dict(row) if row is not None else None

    def outbox_next_at(self) -> dict[str, float]:
        """Per forge, when its soonest undelivered row is due."""
        with self._db.read() as c:
            rows = c.execute(
                "SELECT forge, MIN(next_at) FROM outbox WHERE done_at IS NULL GROUP BY forge"
            ).fetchall()
        return {r[0]: r[1] for r in rows}

    def outbox_stats(self) -> dict[str, dict]:
        """Per forge: backlog (undelivered rows), failing (undelivered rows that
        failed at least once), oldest (created_at of the oldest undelivered),
        next_at, counts of ended rows by outcome, and the last errors."""
        with self._db.read() as c:
            stats: dict[str, dict] = {}
            for r in c.execute(
                """SELECT forge, COUNT(*), SUM(tries > 0), MIN(created_at), MIN(next_at)
                   FROM outbox WHERE done_at IS NULL GROUP BY forge"""
            ):
                stats[r[0]] = {"backlog": r[1], "failing": r[2], "oldest": r[3], "next_at": r[4]}
            for r in c.execute(
                "SELECT forge, outcome, COUNT(*) FROM outbox WHERE done_at IS NOT NULL "
                "GROUP BY forge, outcome"
            ):
                stats.setdefault(r[0], _empty())[r[1]] = r[2]
            for forge, entry in stats.items():
                for key, value in _empty().items():
                    entry.setdefault(key, value)
                entry["last_errors"] = [
                    {
                        "sha": e["sha"],
                        "context": e["context"],
                        "error": e["last_error"],
                        "outcome": e["outcome"] or Outcome.RETRY.value,
                        "tries": e["tries"],
                    }
                    for e in c.execute(
                        """SELECT sha, context, last_error, outcome, tries FROM outbox
                           WHERE forge = ? AND last_error != '' ORDER BY id DESC LIMIT ?""",
                        (forge, _LAST_ERRORS),
                    )
                ]
        return stats

    def prune_outbox(self, before: float) -> int:
        """Forget rows that ended before `before`; queued ones are kept."""
        with self._db.write() as c:
            cur = c.execute(
                "DELETE FROM outbox WHERE done_at IS NOT NULL AND done_at < ?", (before,)
            )
            return cur.rowcount

    # -- which run states were reported ------------------------------------------

    def runs_to_report(self, repos: Collection[str], limit: int = 100) -> list[Run]:
        """Runs of these repositories whose state has not been turned into
        statuses yet (reported_state differs or is unset), oldest first. A
        second attempt is a change too: reported_state is then "running#2"."""
        names = sorted(set(repos))
        if not names:
            return []
        marks = ", ".join("?" for _ in names)
        with self._db.read() as c:
            rows = c.execute(
                RUN_SELECT
                + f""" WHERE p.name IN ({marks}) AND r.reported_state IS NOT (
                       CASE WHEN r.state = ? AND {_ATTEMPTS} > 1
                       THEN r.state || '#' || {_ATTEMPTS} ELSE r.state END)
                   ORDER BY r.id LIMIT ?""",
                (*names, _RUNNING, limit),
            ).fetchall()
        return [to_run(r) for r in rows]

    def set_reported(self, run_id: int, state: RunState, attempts: int = 1) -> bool:
        """Record that `state` (the one read, not whatever the run has now) was
        turned into statuses: a run that moved on meanwhile is reported again."""
        with self._db.write() as c:
            cur = c.execute(
                "UPDATE runs SET reported_state = ? WHERE id = ?",
                (reported_token(state, attempts), run_id),
            )
            return cur.rowcount == 1


def reported_token(state: RunState, attempts: int = 1) -> str:
    """What runs.reported_state holds: the state, and a running run's attempt
    number from the second on (so "running (attempt 2)" is reported too)."""
    value = RunState(state).value
    return f"{value}#{attempts}" if value == _RUNNING and attempts > 1 else value


def _empty() -> dict:
    return {"backlog": 0, "failing": 0, "oldest": None, "next_at": None}
