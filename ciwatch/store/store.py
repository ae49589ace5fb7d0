"""The Store: repos, events, runs (the queue and the history), attempts and leases.

Everything two callers might race on (run numbering, claiming a run, renewing
or finishing an attempt) is decided inside one `BEGIN IMMEDIATE` transaction,
so it holds across threads and across processes sharing the database file.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ciwatch.errors import NotFoundError, StoreError
from ciwatch.model import Attempt, Event, Repo, Run, RunState, ref_bytes
from ciwatch.store.attempts import AttemptsMixin
from ciwatch.store.database import Database
from ciwatch.store.deliveries import DeliveriesMixin
from ciwatch.store.outbox import OutboxMixin
from ciwatch.store.prune import PruneMixin
from ciwatch.store.queries import QueriesMixin
from ciwatch.store.refs import RefsMixin
from ciwatch.store.rows import (
    EVENT_SELECT,
    RUN_SELECT,
    Sighting,
    fetch_run,
    meta_json,
    to_event,
    to_repo,
    to_run,
)
from ciwatch.store.sched import SchedMixin
from ciwatch.store.schema import MIGRATIONS, Migration
from ciwatch.store.steps import StepsMixin

_RUNNING = RunState.RUNNING.value
_QUEUED = RunState.QUEUED.value


class Store(
    AttemptsMixin,
    StepsMixin,
    RefsMixin,
    SchedMixin,
    DeliveriesMixin,
    OutboxMixin,
    QueriesMixin,
    PruneMixin,
):
    """ciwatch's database. Safe to share between threads; close() when done."""

    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> Store:
        """Open (creating it and its directory if needed) and migrate the database.

        Raises CorruptStoreError for a damaged file (which is left as it is) and
        StoreError for a database newer than this code or a failed migration.
        """
        return cls(Database.open(Path(path), migrations), clock)

    @property
    def path(self) -> Path:
        return self._db.path

    def close(self) -> None:
        self._db.close()

    def settings(self) -> dict[str, object]:
        """The connection's durability settings, for diagnostics."""
        names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout", "user_version")
        return {name: self._db.pragma(name) for name in names}

    # -- repos ---------------------------------------------------------------

    def ensure_repo(self, name: str, url: str, default_branch: str = "main") -> Repo:
        with self._db.write() as c:
            row = c.execute(
                """INSERT INTO repos (name, url, default_branch) VALUES (?, ?, ?)
                   ON CONFLICT (name) DO UPDATE
                   SET url = excluded.url, default_branch = excluded.default_branch
                   RETURNING id, name, url, default_branch""",
                (name, url, default_branch),
            ).fetchone()
        return to_repo(row)

    def get_repo(self, name: str) -> Repo:
        with self._db.read() as c:
            row = c.execute("SELECT * FROM repos WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"no repository named {name!r}")
        return to_repo(row)

    def list_repos(self) -> list[Repo]:
        with self._db.read() as c:
            return [to_repo(r) for r in c.execute("SELECT * FROM repos ORDER BY name")]

    # -- events and runs -----------------------------------------------------

    def record_event(self, event: Event) -> tuple[int, bool]:
        """(event id, is_new). A duplicate only adds a sighting by its source."""
        with self._db.write() as c:
            return self._record_event(c, event)

    def create_run(self, event_id: int) -> Run:
        """A new queued run for a stored event, numbered next in its repo."""
        with self._db.write() as c:
            run_id = self._create_run(c, event_id)
            return fetch_run(c, run_id)

    def submit(self, event: Event) -> tuple[Run | None, bool]:
        """Intake: store the event and queue its run in one transaction.

        A duplicate event returns its newest run (None if it never got one) and False.
        """
        with self._db.write() as c:
            event_id, is_new = self._record_event(c, event)
            if is_new:
                return fetch_run(c, self._create_run(c, event_id)), True
            row = c.execute(
                "SELECT id FROM runs WHERE event_id = ? ORDER BY id DESC LIMIT 1", (event_id,)
            ).fetchone()
            return (fetch_run(c, row["id"]) if row else None), False

    def submit_claimed(
        self, event: Event, worker: str, lease_seconds: float
    ) -> tuple[Run, Attempt]:
        """A new run of `event` (stored, or found again) already claimed by
        `worker`, in one transaction: a daemon on the same store never sees it
        queued, so `ciwatch run` and the daemon's scheduler cannot both take it."""
        if lease_seconds <= 0:
            raise StoreError("lease_seconds must be positive")
        with self._db.write() as c:
            event_id, _ = self._record_event(c, event)
            run_id = self._create_run(c, event_id)
            attempt = self._claim(c, run_id, worker, lease_seconds)
            if attempt is None:  # a run made in this transaction is queued: cannot be
                raise StoreError(f"run {run_id} could not be claimed right after it was made")
            return fetch_run(c, run_id), attempt

    def get_event(self, event_id: int) -> Event:
        with self._db.read() as c:
            row = c.execute(EVENT_SELECT + " WHERE e.id = ?", (event_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no event {event_id}")
        return to_event(row)

    def sightings(self, event_id: int) -> list[Sighting]:
        """Every source that reported the event, oldest first."""
        with self._db.read() as c:
            rows = c.execute(
                "SELECT source, seen_at FROM event_sightings WHERE event_id = ? ORDER BY id",
                (event_id,),
            ).fetchall()
        return [Sighting(r["source"], r["seen_at"]) for r in rows]

    def find_events(
        self, repo: str, *, ref: str | None = None, sha_prefix: str | None = None, limit: int = 20
    ) -> list[tuple[int, Event, float]]:
        """(event id, event, received_at) of a repo's events for a ref or a commit
        (a sha or its prefix), newest first: for `ciwatch why`."""
        where, args = ["p.name = ?"], [repo]
        if ref is not None:
            where.append("e.ref = ?")
            args.append(ref_bytes(ref))
        if sha_prefix is not None:
            where.append("substr(e.sha, 1, ?) = ?")
            args += [len(sha_prefix), sha_prefix.lower()]
        sql = EVENT_SELECT.replace("SELECT ", "SELECT e.id, e.received_at, ", 1)
        with self._db.read() as c:
            rows = c.execute(
                f"{sql} WHERE {' AND '.join(where)} ORDER BY e.id DESC LIMIT ?", (*args, limit)
            ).fetchall()
        return [(r["id"], to_event(r), r["received_at"]) for r in rows]

    def runs_for_event(self, event_id: int) -> list[Run]:
        with self._db.read() as c:
            rows = c.execute(RUN_SELECT + " WHERE r.event_id = ? ORDER BY r.id", (event_id,))
            return [to_run(r) for r in rows.fetchall()]

    def get_run(self, run_id: int) -> Run:
        with self._db.read() as c:
            return fetch_run(c, run_id)

    def find_run(self, repo: str, number: int) -> Run:
        with self._db.read() as c:
            row = c.execute(
                RUN_SELECT + " WHERE p.name = ? AND r.number = ?", (repo, number)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no run {repo}#{number}")
        return to_run(row)

    def list_runs(
        self, *, repo: str | None = None, state: RunState | None = None, limit: int = 50
    ) -> list[Run]:
        """Newest first, optionally only one repo's and/or one state's."""
        sql = (
            RUN_SELECT
            + """
            WHERE (:repo IS NULL OR p.name = :repo) AND (:state IS NULL OR r.state = :state)
            ORDER BY r.id DESC LIMIT :limit"""
        )
        params = {
            "repo": repo,
            "state": RunState(state).value if state is not None else None,
            "limit": limit,
        }
        with self._db.read() as c:
            return [to_run(r) for r in c.execute(sql, params)]

    def queued_runs(self, limit: int = 100) -> list[Run]:
        """The queue, first come first served (a requeued run keeps its place)."""
        with self._db.read() as c:
            rows = c.execute(
                RUN_SELECT + " WHERE r.state = ? ORDER BY r.created_at, r.id LIMIT ?",
                (_QUEUED, limit),
            ).fetchall()
        return [to_run(r) for r in rows]

    def delete_run(self, run_id: int) -> bool:
        """Forget a finished run with its attempts, steps and artifact rows.

        Queued and running runs are never deleted (False). The event stays, so a
        source that sees the same commit again does not queue it again.
        """
        with self._db.write() as c:
            cur = c.execute(
                "DELETE FROM runs WHERE id = ? AND state NOT IN (?, ?)",
                (run_id, _QUEUED, _RUNNING),
            )
            return cur.rowcount == 1

    # -- inside a transaction ------------------------------------------------

    def _record_event(self, c: sqlite3.Connection, event: Event) -> tuple[int, bool]:
        now = self._clock()
        repo = c.execute("SELECT id FROM repos WHERE name = ?", (event.repo,)).fetchone()
        if repo is None:
            raise NotFoundError(f"no repository named {event.repo!r}")
        ref = ref_bytes(event.ref)
        row = c.execute(
            """SELECT id FROM events WHERE repo_id = ? AND kind = ? AND ref = ? AND sha = ?
               AND COALESCE(pr_number, 0) = COALESCE(?, 0)""",
            (repo["id"], event.kind.value, ref, event.sha, event.pr_number),
        ).fetchone()
        is_new = row is None
        if is_new:
            row = c.execute(
                """INSERT INTO events (repo_id, kind, ref, sha, before, source, trusted,
                                       pr_number, meta, received_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id""",
                (
                    repo["id"],
                    event.kind.value,
                    ref,
                    event.sha,
                    event.before,
                    event.source,
                    int(event.trusted),
                    event.pr_number,
                    meta_json(event),
                    now,
                ),
            ).fetchone()
        c.execute(
            "INSERT INTO event_sightings (event_id, source, seen_at) VALUES (?, ?, ?)",
            (row["id"], event.source, now),
        )
        return row["id"], is_new

    def _create_run(self, c: sqlite3.Connection, event_id: int) -> int:
        event = c.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone()
        if event is None:
            raise NotFoundError(f"no event {event_id}")
        number = c.execute(
            "UPDATE repos SET last_number = last_number + 1 WHERE id = ? RETURNING last_number",
            (event["repo_id"],),
        ).fetchone()[0]
        row = c.execute(
            """INSERT INTO runs (repo_id, number, event_id, kind, ref, sha, before, source,
                                 trusted, state, created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id""",
            (
                event["repo_id"],
                number,
                event_id,
                event["kind"],
                event["ref"],
                event["sha"],
                event["before"],
                event["source"],
                event["trusted"],
                _QUEUED,
                self._clock(),
            ),
        ).fetchone()
        return row["id"]
