"""Read queries for the web API, the dashboard and /metrics: pages of runs
(keyset paging, newest first), the latest run of each branch, the queue, and
what finished or started since a metrics scrape.

Every query here is an index seek or a bounded range scan, so a page deep in a
history of 100,000 runs costs what the first page costs (bench/web_api.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ciwatch.model import Run, RunState, StepRecord, ref_bytes
from ciwatch.store.database import Database
from ciwatch.store.rows import RUN_SELECT, to_run, to_step

_LISTING_SELECT = RUN_SELECT.replace(
    "FROM runs r JOIN repos p ON p.id = r.repo_id",
    """, r.subject, r.author, e.pr_number
    FROM runs r JOIN repos p ON p.id = r.repo_id JOIN events e ON e.id = r.event_id""",
)
# Byte bounds of the branch namespace: '0' sorts right after '/'.
_HEADS_LO, _HEADS_HI = b"refs/heads/", b"refs/heads0"
_SUBJECT_MAX, _AUTHOR_MAX = 1000, 200
_MAX_ROWID = (1 << 63) - 1


@dataclass(frozen=True)
class RunFilter:
    """Filters of a run list; None means any. They combine (AND)."""

    repo: str | None = None
    ref: str | None = None  # fully qualified
    state: RunState | None = None
    source: str | None = None


@dataclass(frozen=True)
class RunListing:
    """A run with what a list of runs shows besides the Run itself."""

    run: Run
    subject: str | None
    author: str | None
    pr_number: int | None


@dataclass(frozen=True)
class Finished:
    id: int
    repo: str
    state: str
    duration: float
    finished_at: float


@dataclass(frozen=True)
class Started:
    id: int
    source: str
    wait: float  # started_at - created_at
    started_at: float


def _listing(row: sqlite3.Row) -> RunListing:
    return RunListing(to_run(row), row["subject"], row["author"], row["pr_number"])


class QueriesMixin:
    """The read-model half of Store."""

    _db: Database
    _clock: Callable[[], float]

    def page_runs(
        self, filters: RunFilter | None = None, *, before: int | None = None, limit: int = 50
    ) -> list[RunListing]:
        """Up to `limit` runs matching `filters` with an id below `before`,
        newest first. The next page is `before=<last id of this one>`."""
        filters = filters or RunFilter()
        where, args = ["r.id < ?"], [before if before is not None else 1 << 62]
        if filters.repo is not None:
            # The repo's id first, so the planner seeks runs(repo_id, ...) indexes.
            where.append("r.repo_id = (SELECT id FROM repos WHERE name = ?)")
            args.append(filters.repo)
        if filters.ref is not None:
            where.append("r.ref = ?")
            args.append(ref_bytes(filters.ref))
        if filters.state is not None:
            where.append("r.state = ?")
            args.append(RunState(filters.state).value)
        if filters.source is not None:
            where.append("r.source = ?")
            args.append(filters.source)
        sql = f"{_LISTING_SELECT} WHERE {' AND '.join(where)} ORDER BY r.id DESC LIMIT ?"
        with self._db.read() as c:
            rows = c.execute(sql, (*args, max(0, int(limit)))).fetchall()
        return [_listing(r) for r in rows]

    def run_listing(self, run_id: int) -> RunListing | None:
        if not 0 < run_id <= _MAX_ROWID:
            return None
        with self._db.read() as c:
            row = c.execute(_LISTING_SELECT + " WHERE r.id = ?", (run_id,)).fetchone()
        return _listing(row) if row is not None else None

    def run_listing_by_number(self, repo: str, number: int) -> RunListing | None:
        with self._db.read() as c:
            row = c.execute(
                _LISTING_SELECT
                + " WHERE r.repo_id = (SELECT id FROM repos WHERE name = ?) AND r.number = ?",
                (repo, number),
            ).fetchone()
        return _listing(row) if row is not None else None

    def queue_listing(self, limit: int = 200) -> list[RunListing]:
        """Queued runs in the order they may start: priority, then age."""
        with self._db.read() as c:
            rows = c.execute(
                _LISTING_SELECT
                + " WHERE r.state = ? ORDER BY r.priority DESC, r.created_at, r.id LIMIT ?",
                (RunState.QUEUED.value, limit),
            ).fetchall()
        return [_listing(r) for r in rows]

    def latest_per_branch(self, repo_id: int, limit: int = 100) -> list[tuple[str, RunListing]]:
        """(branch, its newest run) of a repository, most recently built first, at
        most `limit`. One index seek per branch, not a scan of the history."""
        with self._db.read() as c:
            heads = c.execute(
                """WITH RECURSIVE b(ref) AS (
                       SELECT (SELECT MIN(ref) FROM runs
                               WHERE repo_id = :repo AND ref >= :lo AND ref < :hi)
                       UNION ALL
                       SELECT (SELECT MIN(ref) FROM runs
                               WHERE repo_id = :repo AND ref > b.ref AND ref < :hi)
                       FROM b WHERE b.ref IS NOT NULL
                   )
                   SELECT (SELECT MAX(id) FROM runs WHERE repo_id = :repo AND ref = b.ref) AS id
                   FROM b WHERE b.ref IS NOT NULL ORDER BY id DESC LIMIT :limit""",
                {"repo": repo_id, "lo": _HEADS_LO, "hi": _HEADS_HI, "limit": limit},
            ).fetchall()
            ids = [h["id"] for h in heads]
            if not ids:
                return []
            marks = ", ".join("?" for _ in ids)
            rows = c.execute(
                f"{_LISTING_SELECT} WHERE r.id IN ({marks}) ORDER BY r.id DESC", ids
            ).fetchall()
        out = []
        for row in rows:
            listing = _listing(row)
            out.append((listing.run.ref[len("refs/heads/") :], listing))
        return out

    def all_steps(self, run_id: int) -> list[StepRecord]:
        """Every step of every attempt: by attempt, matrix cells in the order
        they were first recorded, steps in file order within a cell."""
        with self._db.read() as c:
            rows = c.execute(
                """SELECT * FROM steps WHERE run_id = ?
                   ORDER BY attempt, MIN(id) OVER (PARTITION BY attempt, cell), idx""",
                (run_id,),
            ).fetchall()
        return [to_step(r) for r in rows]

    def get_step(self, step_id: int) -> StepRecord | None:
        """The step, or None (also for an id no SQLite row can have)."""
        if not 0 < step_id <= _MAX_ROWID:
            return None
        with self._db.read() as c:
            row = c.execute("SELECT * FROM steps WHERE id = ?", (step_id,)).fetchone()
        return to_step(row) if row is not None else None

    def set_commit_info(self, rows: Iterable[tuple[int, str | None, str | None]]) -> None:
        """Record (run id, subject, author) of runs' commits, in one transaction.
        Text from a commit is kept as text (bounded), never interpreted."""
        params = [
            (_bounded(subject, _SUBJECT_MAX), _bounded(author, _AUTHOR_MAX), run_id)
            for run_id, subject, author in rows
        ]
        if not params:
            return
        with self._db.write() as c:
            c.executemany("UPDATE runs SET subject = ?, author = ? WHERE id = ?", params)

    # -- metrics ---------------------------------------------------------------

    def count_states(self) -> dict[str, int]:
        """Queued and running runs (the active end of the history)."""
        with self._db.read() as c:
            rows = c.execute(
                "SELECT state, COUNT(*) FROM runs WHERE state IN (?, ?) GROUP BY state",
                (RunState.QUEUED.value, RunState.RUNNING.value),
            ).fetchall()
        counts = {RunState.QUEUED.value: 0, RunState.RUNNING.value: 0}
        counts.update({r[0]: r[1] for r in rows})
        return counts

    def newest_times(self) -> tuple[float | None, float | None]:
        """The latest finished_at and started_at of any run (None: none yet)."""
        with self._db.read() as c:
            row = c.execute("SELECT MAX(finished_at), MAX(started_at) FROM runs").fetchone()
        return row[0], row[1]

    def duration_buckets(
        self, before: float, bounds: Sequence[float]
    ) -> list[tuple[str, str, int, int, float]]:
        """(repo, state, bucket, count, sum of durations) of the runs that ran and
        finished before `before`. A bucket is the index of the first bound >= the
        duration (len(bounds): past the last). One pass in SQL: a metrics scrape
        at start counts the history without loading it row by row."""
        took = "MAX(finished_at - started_at, 0)"
        with self._db.read() as c:
            names = dict(c.execute("SELECT id, name FROM repos").fetchall())
            # A plain scan: most rows qualify, and index lookups would cost more.
            rows = c.execute(
                f"""SELECT repo_id, state, {_bucket(took, bounds)} AS b, COUNT(*), SUM({took})
                    FROM runs NOT INDEXED
                    WHERE finished_at < ? AND started_at IS NOT NULL
                    GROUP BY repo_id, state, b""",
                (before,),
            ).fetchall()
        return [(names.get(r[0], str(r[0])), *tuple(r)[1:]) for r in rows]

    def wait_buckets(
        self, before: float, bounds: Sequence[float]
    ) -> list[tuple[str, int, int, float]]:
        """(source, bucket, count, sum of waits) of runs first started before `before`."""
        wait = "MAX(started_at - created_at, 0)"
        with self._db.read() as c:
            rows = c.execute(
                f"""SELECT source, {_bucket(wait, bounds)} AS b, COUNT(*), SUM({wait})
                    FROM runs NOT INDEXED WHERE started_at < ? GROUP BY source, b""",
                (before,),
            ).fetchall()
        return [tuple(r) for r in rows]

    def finished_since(self, after: float) -> list[Finished]:
        """Runs that ran and finished at or after `after` (by finished_at)."""
        with self._db.read() as c:
            rows = c.execute(
                """SELECT r.id, p.name, r.state, r.finished_at - r.started_at, r.finished_at
                   FROM runs r JOIN repos p ON p.id = r.repo_id
                   WHERE r.finished_at >= ? AND r.started_at IS NOT NULL""",
                (after,),
            ).fetchall()
        return [Finished(*tuple(r)) for r in rows]

    def started_since(self, after: float) -> list[Started]:
        """Runs first started at or after `after`: their trigger-to-start wait."""
        with self._db.read() as c:
            rows = c.execute(
                """SELECT id, source, started_at - created_at, started_at FROM runs
                   WHERE started_at >= ?""",
                (after,),
            ).fetchall()
        return [Started(*tuple(r)) for r in rows]


def _bucket(expr: str, bounds: Sequence[float]) -> str:
    """SQL for the index of the first bound >= expr (bounds are numbers, not input)."""
    whens = " ".join(f"WHEN {expr} <= {float(b)!r} THEN {i}" for i, b in enumerate(bounds))
    return f"CASE {whens} ELSE {len(bounds)} END"


def _bounded(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"
