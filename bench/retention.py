"""Retention speed: one pass pruning 100,000 old runs (records with their
attempts, steps, artifact and outbox rows; each run's log directory), and how
long it held SQLite's write lock.

    python3 bench/retention.py [--runs 100000] [--keep 1000] [--no-files] [--dir DIR]

The database is filled with plain SQL in one transaction (the store's own
writes would take minutes at synchronous=FULL). Two figures for the lock:
the longest write transaction of the pass (timed inside the store), and the
longest a second connection waited for a one-row write while the pass ran,
probing every 5 ms: what a worker finishing a step would see.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ciwatch.retention import Retention, RetentionPolicy  # noqa: E402
from ciwatch.store import Store  # noqa: E402

DAY = 86400.0


def fill(db: Path, runs: int, now: float) -> None:
    store = Store.open(db)  # creates and migrates the schema
    store.ensure_repo("app", "/srv/git/app.git")
    store.ensure_repo("lib", "/srv/git/lib.git")
    store.close()
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("BEGIN")
    c.execute(
        """INSERT INTO events (repo_id, kind, ref, sha, source, trusted, received_at)
           VALUES (1, 'push', X'', ?, 'hook', 1, ?)""",
        ("0" * 40, now),
    )
    for i in range(1, runs + 1):
        repo, number = (1, i) if i % 10 else (2, i)
        at = now - 60 * DAY + i  # all finished long ago, oldest first
        c.execute(
            """INSERT INTO runs (id, repo_id, number, event_id, kind, ref, sha, source,
                                 trusted, state, created_at, started_at, finished_at)
               VALUES (?, ?, ?, 1, 'push', X'', ?, 'hook', 1, 'success', ?, ?, ?)""",
            (i, repo, number, f"{i:040x}", at, at, at + 1),
        )
        c.execute(
            """INSERT INTO attempts (run_id, number, state, worker, started_at, lease_until,
                                     finished_at) VALUES (?, 1, 'success', 'w', ?, ?, ?)""",
            (i, at, at, at + 1),
        )
        for idx in range(3):
            c.execute(
                """INSERT INTO steps (run_id, attempt, cell, idx, name, state, log_path)
                   VALUES (?, 1, '', ?, 'step', 'success', '')""",
                (i, idx),
            )
        c.execute(
            """INSERT INTO outbox (forge, forge_repo, run_id, sha, context, state,
                                   created_at, next_at, done_at)
               VALUES ('gh', 'o/app', ?, ?, 'ciwatch', 'success', ?, ?, ?)""",
            (i, f"{i:040x}", at, at, at),
        )
        if i % 20 == 0:
            c.execute(
                """INSERT INTO artifacts (run_id, path, size, stored_path)
                   VALUES (?, 'out.bin', 1, '')""",
                (i,),
            )
    c.execute("UPDATE repos SET last_number = ?", (runs,))
    c.execute("COMMIT")
    c.close()


def make_logs(state: Path, runs: int) -> None:
    base = state / "runs"
    for i in range(1, runs + 1):
        d = base / str(i) / "a1"
        d.mkdir(parents=True)
        (d / "0-0.log").write_bytes(b"x" * 200)


class Probe(threading.Thread):
    """A second connection writing one row every 5 ms; the longest wait."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.stop = threading.Event()
        self.longest = 0.0
        self.writes = 0

    def run(self) -> None:
        c = sqlite3.connect(self.db, isolation_level=None, timeout=30)
        c.execute("CREATE TABLE IF NOT EXISTS probe (t REAL)")
        while not self.stop.wait(0.005):
            t0 = time.perf_counter()
            c.execute("BEGIN IMMEDIATE")
            c.execute("INSERT INTO probe VALUES (?)", (t0,))
            c.execute("COMMIT")
            self.longest = max(self.longest, time.perf_counter() - t0)
            self.writes += 1
        c.close()


def timed_writes(store: Store) -> list[float]:
    """Wrap the store's write transactions to time each one."""
    holds: list[float] = []
    db = store._db
    write = db.write

    @contextmanager
    def timed():
        with write() as c:
            t0 = time.perf_counter()
            yield c
        holds.append(time.perf_counter() - t0)

    db.write = timed
    return holds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--keep", type=int, default=1000, help="retention.runs (per repository)")
    ap.add_argument("--no-files", action="store_true", help="no log directories")
    ap.add_argument("--dir", default=None, help="where the state directory goes")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ciwatch-bench-") as tmp:
        state = Path(tmp) / "state"
        db = state / "ciwatch.db"
        now = time.time()
        t0 = time.perf_counter()
        fill(db, args.runs, now)
        if not args.no_files:
            make_logs(state, args.runs)
        print(f"filled {args.runs:,} runs in {time.perf_counter() - t0:.1f} s ({state})")

        store = Store.open(db)
        holds = timed_writes(store)
        probe = Probe(db)
        probe.start()
        policy = RetentionPolicy(runs=args.keep, log_days=30)
        log = logging.getLogger("bench")
        t0 = time.perf_counter()
        report = Retention(store, state, policy, now=time.time, log=log).run()
        took = time.perf_counter() - t0
        probe.stop.set()
        probe.join()
        left = store.prune_bounds()
        store.close()
        holds.sort()

        print(f"pass: {took:.2f} s: {report.summary()}")
        print(f"  {report.runs / took:,.0f} runs deleted per second")
        print(
            f"  write transactions: {len(holds)}, longest {holds[-1] * 1000:.1f} ms, "
            f"median {holds[len(holds) // 2] * 1000:.1f} ms"
        )
        print(
            f"  another connection's one-row write: longest wait {probe.longest * 1000:.1f} ms "
            f"over {probe.writes} writes during the pass"
        )
        print(f"  highest run id left: {left.max_run_id}; problems: {len(report.problems)}")
        print(f"  database file: {os.path.getsize(db) / 1e6:.0f} MB (not vacuumed)")


if __name__ == "__main__":
    main()
