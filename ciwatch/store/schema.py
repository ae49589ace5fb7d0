"""The database schema as an ordered list of migrations.

Migration N (1-based) brings the database from `user_version` N-1 to N. Each runs
in one transaction together with its `PRAGMA user_version`, so a crash or an
error leaves the previous schema and version exactly as they were. Never edit a
released migration: append a new one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One schema step: plain statements, then an optional data-moving function.

    Statements are run one by one (never through `executescript`, which would
    commit the surrounding transaction first).
    """

    name: str
    statements: tuple[str, ...] = ()
    apply: Callable[[sqlite3.Connection], None] | None = None

    def run(self, conn: sqlite3.Connection) -> None:
        for statement in self.statements:
            conn.execute(statement)
        if self.apply is not None:
            self.apply(conn)


INITIAL = Migration(
    name="initial schema",
    statements=(
        # last_number is the per-repo run counter: deleting old runs never reuses a number.
        """CREATE TABLE repos (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            url TEXT NOT NULL,
            default_branch TEXT NOT NULL DEFAULT 'main',
            last_number INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            repo_id INTEGER NOT NULL REFERENCES repos(id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            ref BLOB NOT NULL,
            sha TEXT NOT NULL,
            before TEXT,
            source TEXT NOT NULL,
            trusted INTEGER NOT NULL,
            pr_number INTEGER,
            meta TEXT NOT NULL DEFAULT '[]',
            received_at REAL NOT NULL
        )""",
        # NULL never equals NULL in a UNIQUE index, hence the expression for non-PR events.
        """CREATE UNIQUE INDEX events_dedupe
            ON events(repo_id, kind, ref, sha, COALESCE(pr_number, 0))""",
        """CREATE TABLE event_sightings (
            id INTEGER PRIMARY KEY,
            event_id INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
            source TEXT NOT NULL,
            seen_at REAL NOT NULL
        )""",
        "CREATE INDEX event_sightings_event ON event_sightings(event_id)",
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            repo_id INTEGER NOT NULL REFERENCES repos(id) ON DELETE CASCADE,
            number INTEGER NOT NULL,
            event_id INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            ref BLOB NOT NULL,
            sha TEXT NOT NULL,
            before TEXT,
            source TEXT NOT NULL,
            trusted INTEGER NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            UNIQUE (repo_id, number)
        )""",
        "CREATE INDEX runs_queue ON runs(state, created_at, id)",
        "CREATE INDEX runs_repo_state ON runs(repo_id, state)",
        "CREATE INDEX runs_event ON runs(event_id)",
        """CREATE TABLE attempts (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            number INTEGER NOT NULL,
            state TEXT NOT NULL,
            worker TEXT NOT NULL,
            started_at REAL NOT NULL,
            lease_until REAL NOT NULL,
            finished_at REAL,
            reason TEXT NOT NULL DEFAULT '',
            UNIQUE (run_id, number)
        )""",
        "CREATE INDEX attempts_lease ON attempts(state, lease_until)",
        """CREATE TABLE steps (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            attempt INTEGER NOT NULL,
            cell TEXT NOT NULL,
            idx INTEGER NOT NULL,
            name TEXT NOT NULL,
            state TEXT NOT NULL,
            exit_code INTEGER,
            failure TEXT,
            reason TEXT NOT NULL DEFAULT '',
            started_at REAL,
            finished_at REAL,
            allowed_failure INTEGER NOT NULL DEFAULT 0,
            tries INTEGER NOT NULL DEFAULT 1,
            log_path TEXT NOT NULL DEFAULT '',
            log_bytes INTEGER NOT NULL DEFAULT 0,
            log_truncated INTEGER NOT NULL DEFAULT 0,
            UNIQUE (run_id, attempt, cell, idx)
        )""",
        """CREATE TABLE artifacts (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            step_id INTEGER REFERENCES steps(id) ON DELETE SET NULL,
            path TEXT NOT NULL,
            size INTEGER NOT NULL,
            stored_path TEXT NOT NULL
        )""",
        "CREATE INDEX artifacts_run ON artifacts(run_id)",
    ),
)

DAEMON = Migration(
    name="daemon: refs seen by the sources, scheduling columns on runs",
    statements=(
        # The last sha each ref was seen at, per repository: the watcher and the
        # poller diff against it, and at start refs that moved while down become events.
        """CREATE TABLE refs_seen (
            repo_id INTEGER NOT NULL REFERENCES repos(id) ON DELETE CASCADE,
            ref BLOB NOT NULL,
            sha TEXT NOT NULL,
            source TEXT NOT NULL,
            seen_at REAL NOT NULL,
            PRIMARY KEY (repo_id, ref)
        )""",
        # Filled when the scheduler reads the run's pipeline ("resolves" it).
        "ALTER TABLE runs ADD COLUMN concurrency_group TEXT",
        "ALTER TABLE runs ADD COLUMN on_new_commit TEXT",
        "ALTER TABLE runs ADD COLUMN resolved_at REAL",
        "ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        # Set by the daemon (supersede, `ciwatch cancel`); the worker running the
        # attempt sees it and stops the steps.
        "ALTER TABLE runs ADD COLUMN cancel_requested TEXT",
        "ALTER TABLE runs ADD COLUMN cancel_mode TEXT",
        # What a queued run waits on, for `ciwatch why` and `ciwatch status`.
        "ALTER TABLE runs ADD COLUMN wait_reason TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX runs_group ON runs(concurrency_group, state)",
    ),
)

FORGES = Migration(
    name="forges: the status outbox, reported states, webhook deliveries",
    statements=(
        # Statuses waiting to reach a forge. Only the newest row per (forge,
        # forge_repo, sha, context) is sent; older undelivered ones are superseded.
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            forge TEXT NOT NULL,
            forge_repo TEXT NOT NULL,
            run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
            sha TEXT NOT NULL,
            context TEXT NOT NULL,
            state TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            target_url TEXT NOT NULL DEFAULT '',
            extra TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            tries INTEGER NOT NULL DEFAULT 0,
            next_at REAL NOT NULL,
            last_error TEXT NOT NULL DEFAULT '',
            done_at REAL,
            outcome TEXT
        )""",
        "CREATE INDEX outbox_due ON outbox(done_at, next_at)",
        "CREATE INDEX outbox_key ON outbox(forge, forge_repo, sha, context, id)",
        # The last run state turned into statuses: the reporting sweep compares.
        "ALTER TABLE runs ADD COLUMN reported_state TEXT",
        "CREATE INDEX runs_report ON runs(state, reported_state)",
        # Webhook deliveries already stored: a replay is answered 2xx, not queued again.
        """CREATE TABLE webhook_deliveries (
            forge TEXT NOT NULL,
            delivery TEXT NOT NULL,
            received_at REAL NOT NULL,
            event_id INTEGER REFERENCES events(id) ON DELETE SET NULL,
            PRIMARY KEY (forge, delivery)
        )""",
    ),
)

STEP_RESOURCES = Migration(
    name="step resources: CPU time and peak memory",
    statements=(
        # NULL when not measured (steps from before, or the figure was unknown).
        "ALTER TABLE steps ADD COLUMN cpu_seconds REAL",
        "ALTER TABLE steps ADD COLUMN max_rss_kib INTEGER",
    ),
)

WEB = Migration(
    name="web: commit subject and author, indexes for the run list and metrics",
    statements=(
        # Read from the commit when the run is resolved; NULL until then (or unreadable).
        "ALTER TABLE runs ADD COLUMN subject TEXT",
        "ALTER TABLE runs ADD COLUMN author TEXT",
        # Keyset paging newest first (id DESC), one index per filter that leads:
        # an index holds the rowid (= runs.id) after its columns, in order.
        "CREATE INDEX runs_repo_id ON runs(repo_id, id)",
        "CREATE INDEX runs_state_id ON runs(state, id)",
        "CREATE INDEX runs_source_id ON runs(source, id)",
        "CREATE INDEX runs_ref_id ON runs(ref, id)",
        # Latest run per branch of a repository (skip-scan over distinct refs).
        "CREATE INDEX runs_repo_ref_id ON runs(repo_id, ref, id)",
        # Metrics read only what finished or started since the last scrape.
        "CREATE INDEX runs_finished ON runs(finished_at)",
        "CREATE INDEX runs_started ON runs(started_at)",
    ),
)

RETENTION = Migration(
    name="retention: logs removed from old runs, indexes for pruning",
    statements=(
        # Why a run's logs and artifacts are gone ("log removed by retention
        # (older than 30 days)"), and when; NULL while they are kept.
        "ALTER TABLE runs ADD COLUMN logs_removed TEXT",
        "ALTER TABLE runs ADD COLUMN logs_removed_at REAL",
        # Old runs whose logs are still there, without walking those already pruned.
        "CREATE INDEX runs_logs_kept ON runs(finished_at) WHERE logs_removed_at IS NULL",
        # Deleting a run sets outbox.run_id, and deleting its steps artifacts.step_id,
        # to NULL: without these, a scan of the table per row deleted.
        "CREATE INDEX outbox_run ON outbox(run_id)",
        "CREATE INDEX artifacts_step ON artifacts(step_id)",
    ),
)

MIGRATIONS: tuple[Migration, ...] = (INITIAL, DAEMON, FORGES, STEP_RESOURCES, WEB, RETENTION)
