"""What retention asks of the store: old finished runs, in small batches.

Every delete and every "logs removed" mark re-checks, inside its own write
transaction, that the run is finished: a queued or running run is never
touched, whatever a caller read a moment before. Batches stay small (a few
hundred runs per transaction) so that pruning 100,000 runs never holds the
write lock for long. The run with the highest id is never deleted: SQLite
would give its id to the next run, whose logs would land in a directory
retention may be about to remove.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from ciwatch.model import RunState
from ciwatch.store.database import Database

_QUEUED = RunState.QUEUED.value
_RUNNING = RunState.RUNNING.value
BATCH = 500  # runs per write transaction
_FINISHED = "state NOT IN (?, ?)"


@dataclass(frozen=True)
class RunRef:
    """The little retention needs to know about a run."""

    id: int
    repo_id: int
    number: int
    state: RunState
    finished_at: float | None

    @property
    def finished(self) -> bool:
        return self.state.finished


@dataclass(frozen=True)
class RepoBounds:
    name: str
    last_number: int  # the highest run number ever given (numbers are never reused)


@dataclass(frozen=True)
class Bounds:
    """The highest ids in use: a directory named by a higher one may belong to
    a run about to be created, so it is never taken for an orphan."""

    max_run_id: int
    repos: dict[int, RepoBounds]


def _ref(row: sqlite3.Row) -> RunRef:
    return RunRef(
        id=row["id"],
        repo_id=row["repo_id"],
        number=row["number"],
        state=RunState(row["state"]),
        finished_at=row["finished_at"],
    )


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class PruneMixin:
    """The retention half of Store."""

    _db: Database
    _clock: Callable[[], float]

    # -- reading ---------------------------------------------------------------

    def prune_bounds(self) -> Bounds:
        with self._db.read() as c:
            top = c.execute("SELECT COALESCE(MAX(id), 0) FROM runs").fetchone()[0]
            repos = {
                r["id"]: RepoBounds(r["name"], r["last_number"])
                for r in c.execute("SELECT id, name, last_number FROM repos")
            }
        return Bounds(top, repos)

    def keep_cutoffs(self, keep: int) -> dict[int, int]:
        """repo id -> the id of its `keep`-th newest finished run, for repos
        with more finished runs than that: their finished runs below it go."""
        out: dict[int, int] = {}
        with self._db.read() as c:
            for (repo_id,) in c.execute("SELECT id FROM repos").fetchall():
                row = c.execute(
                    f"""SELECT id FROM runs WHERE repo_id = ? AND {_FINISHED}
                        ORDER BY id DESC LIMIT 1 OFFSET ?""",
                    (repo_id, _QUEUED, _RUNNING, keep - 1),
                ).fetchone()
                if row is not None:
                    older = c.execute(
                        f"SELECT 1 FROM runs WHERE repo_id = ? AND id < ? AND {_FINISHED}",
                        (repo_id, row["id"], _QUEUED, _RUNNING),
                    ).fetchone()
                    if older:
                        out[repo_id] = row["id"]
        return out

    def runs_below(self, repo_id: int, below_id: int, after_id: int = 0) -> list[RunRef]:
        """A batch of the repo's finished runs with ids in (after_id, below_id),
        oldest first (what delete_runs_below would delete; for a dry run)."""
        with self._db.read() as c:
            rows = c.execute(
                f"""SELECT id, repo_id, number, state, finished_at FROM runs
                    WHERE repo_id = ? AND id > ? AND id < ? AND {_FINISHED}
                      AND id < (SELECT MAX(id) FROM runs)
                    ORDER BY id LIMIT ?""",
                (repo_id, after_id, below_id, _QUEUED, _RUNNING, BATCH),
            ).fetchall()
        return [_ref(r) for r in rows]

    def runs_with_logs(self, before: float, after: tuple[float, int] = (0.0, 0)) -> list[RunRef]:
        """A batch of finished runs that ended before `before` and still have
        their logs, oldest first, after the (finished_at, id) key `after`."""
        with self._db.read() as c:
            rows = c.execute(
                f"""SELECT id, repo_id, number, state, finished_at FROM runs
                    WHERE logs_removed_at IS NULL AND finished_at < ?
                      AND (finished_at, id) > (?, ?) AND {_FINISHED}
                    ORDER BY finished_at, id LIMIT ?""",
                (before, after[0], after[1], _QUEUED, _RUNNING, BATCH),
            ).fetchall()
        return [_ref(r) for r in rows]

    def run_refs(self, ids: Collection[int]) -> dict[int, RunRef]:
        """The runs among `ids` that exist, read now."""
        out: dict[int, RunRef] = {}
        with self._db.read() as c:
            for part in _chunks(sorted(set(ids)), BATCH):
                for r in c.execute(
                    f"""SELECT id, repo_id, number, state, finished_at FROM runs
                        WHERE id IN ({_marks(len(part))})""",
                    part,
                ):
                    out[r["id"]] = _ref(r)
        return out

    def run_refs_by_number(self, repo_id: int, numbers: Collection[int]) -> dict[int, RunRef]:
        """number -> run, for the repo's runs among `numbers` that exist, read now."""
        out: dict[int, RunRef] = {}
        with self._db.read() as c:
            for part in _chunks(sorted(set(numbers)), BATCH):
                for r in c.execute(
                    f"""SELECT id, repo_id, number, state, finished_at FROM runs
                        WHERE repo_id = ? AND number IN ({_marks(len(part))})""",
                    (repo_id, *part),
                ):
                    out[r["number"]] = _ref(r)
        return out

    def last_run_times(self) -> dict[int, float]:
        """repo id -> when its newest run was created (repos with runs only)."""
        with self._db.read() as c:
            rows = c.execute(
                "SELECT repo_id, MAX(created_at) AS at FROM runs GROUP BY repo_id"
            ).fetchall()
        return {r["repo_id"]: r["at"] for r in rows}

    def logs_removed(self, run_id: int) -> str | None:
        """Why the run's logs are gone ("log removed by retention (older than
        30 days)"), None while they are kept (or for an unknown run)."""
        with self._db.read() as c:
            row = c.execute("SELECT logs_removed FROM runs WHERE id = ?", (run_id,)).fetchone()
        return row["logs_removed"] if row is not None else None

    # -- writing ---------------------------------------------------------------

    def delete_runs_below(self, repo_id: int, below_id: int) -> list[RunRef]:
        """Delete one batch of the repo's finished runs older than `below_id`
        (with their attempts, steps and artifact rows), oldest first; returns
        what was deleted (empty when nothing is left to delete)."""
        with self._db.write() as c:
            rows = c.execute(
                f"""DELETE FROM runs WHERE id IN (
                        SELECT id FROM runs
                        WHERE repo_id = ? AND id < ? AND {_FINISHED}
                          AND id < (SELECT MAX(id) FROM runs)
                        ORDER BY id LIMIT ?)
                    RETURNING id, repo_id, number, state, finished_at""",
                (repo_id, below_id, _QUEUED, _RUNNING, BATCH),
            ).fetchall()
        return sorted((_ref(r) for r in rows), key=lambda r: r.id)

    def mark_logs_removed(self, run_ids: Collection[int], note: str) -> int:
        """Record that these runs' logs and artifacts are gone (and forget the
        artifact rows); only finished runs are marked. Returns how many were."""
        marked = 0
        for part in _chunks(sorted(set(run_ids)), BATCH):
            with self._db.write() as c:
                rows = c.execute(
                    f"""UPDATE runs SET logs_removed = ?, logs_removed_at = ?
                        WHERE id IN ({_marks(len(part))}) AND {_FINISHED}
                          AND logs_removed_at IS NULL
                        RETURNING id""",
                    (note, self._clock(), *part, _QUEUED, _RUNNING),
                ).fetchall()
                done = [r["id"] for r in rows]
                if done:
                    c.execute(f"DELETE FROM artifacts WHERE run_id IN ({_marks(len(done))})", done)
                marked += len(done)
        return marked
