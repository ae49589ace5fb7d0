"""Scheduler overhead per run: 1,000 queued runs through the scheduler at concurrency 2.

The dispatcher completes each run instantly (claim + finish in the store, timed
apart), so what is measured is the scheduler's own work: reading the queue,
resolving, limits and groups, wait reasons. Like the daemon, the scheduler
makes one pass per finished worker. Resolvers measured:

- fake: no git; a group per branch (`queue`), so groups and limits are exercised
- real, one commit: the real Resolver on a real repository, every run at the
  same commit (different branches): the parsed pipeline is cached
- real, distinct commits: one commit per run (git reads for every run)

    python3 bench/scheduler_overhead.py [--runs 1000] [--distinct 200] [--dir /tmp/x]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ciwatch.model import Event, EventKind, RunState  # noqa: E402
from ciwatch.pipeline.plan import Limits, OnNewCommit  # noqa: E402
from ciwatch.resolve import Resolution, Resolver  # noqa: E402
from ciwatch.scheduler import Scheduler  # noqa: E402
from ciwatch.store import Store  # noqa: E402
from ciwatch.workspace import Mirrors  # noqa: E402

PIPELINE = (
    'concurrency: {group: "{repo}/{branch}", on_new_commit: queue}\nsteps:\n  - run: "true"\n'
)
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "b",
    "GIT_AUTHOR_EMAIL": "b@b",
    "GIT_COMMITTER_NAME": "b",
    "GIT_COMMITTER_EMAIL": "b@b",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


class InstantDispatcher:
    """Claims and finishes every run it is given, outside the timed section."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pending: list[int] = []

    def dispatch(self, run_id: int) -> None:
        self.pending.append(run_id)

    def in_flight(self) -> set[int]:
        return set(self.pending)

    def complete_one(self) -> bool:
        if not self.pending:
            return False
        run_id = self.pending.pop(0)
        attempt = self.store.start_attempt(run_id, "bench", 60)
        if attempt is not None:
            self.store.finish_run(run_id, RunState.SUCCESS, attempt_id=attempt.id)
        return True


class FakeResolver:
    def resolve(self, run) -> Resolution:
        return Resolution(f"{run.repo}/{run.ref}", OnNewCommit.QUEUE, "")


def make_repo(path: Path, commits: int) -> list[str]:
    """A repository with `commits` commits, each carrying the pipeline (fast-import)."""
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True, env=GIT_ENV)
    blob = PIPELINE.encode()
    lines = [f"blob\nmark :1\ndata {len(blob)}\n".encode() + blob + b"\n"]
    for i in range(commits):
        msg = f"c{i}".encode()
        parent = f"from :{i + 1}\n".encode() if i else b""
        lines.append(
            f"commit refs/heads/main\nmark :{i + 2}\n".encode()
            + f"committer b <b@b> {1700000000 + i} +0000\ndata {len(msg)}\n".encode()
            + msg
            + b"\n"
            + parent
            + b"M 100644 :1 .ciwatch.yml\n\n"
        )
    subprocess.run(
        ["git", "fast-import", "--quiet"], cwd=path, input=b"".join(lines), check=True, env=GIT_ENV
    )
    out = subprocess.run(
        ["git", "rev-list", "--reverse", "main"], cwd=path, check=True, capture_output=True
    )
    return out.stdout.decode().split()


def measure(work: Path, runs: int, resolver_kind: str, shas: list[str], repo: Path) -> dict:
    state = work / f"state-{resolver_kind}"
    store = Store.open(state / "ciwatch.db")
    store.ensure_repo("app", str(repo))
    for i in range(runs):
        sha = shas[i % len(shas)]
        ev = Event(repo="app", kind=EventKind.PUSH, ref=f"refs/heads/b{i % 50}", sha=sha)
        run, new = store.submit(ev)
        if not new:  # the same push again: a re-run, as `ciwatch trigger` makes
            store.create_run(run.event_id)
    if resolver_kind == "fake":
        resolver = FakeResolver()
    else:
        resolver = Resolver(store, Mirrors(state), limits=Limits())
        repo_row = store.get_repo("app")
        Mirrors(state).mirror(repo_row.id, repo_row.url).fetch()  # a daemon's mirror is warm
    in_resolver = [0.0]
    real_resolve = resolver.resolve

    def timed_resolve(run):
        t = time.perf_counter()
        try:
            return real_resolve(run)
        finally:
            in_resolver[0] += time.perf_counter() - t

    resolver.resolve = timed_resolve
    pool = InstantDispatcher(store)
    sched = Scheduler(store, pool, resolver, max_running=2, repo_limits={})
    passes, spent, first = 0, 0.0, 0.0
    while True:
        t = time.perf_counter()
        sched.run_once(full=None)  # as the daemon's loop: the head, all of it once a tick
        took = time.perf_counter() - t
        spent += took
        first = first or took
        passes += 1
        if not pool.complete_one() and not store.count_queued():
            break
    done = sum(1 for r in store.list_runs(limit=runs) if r.state is RunState.SUCCESS)
    store.close()
    assert done == runs, done
    return {
        "passes": passes,
        "total": spent,
        "first": first,
        "per_run": spent / runs,
        "resolver": in_resolver[0] / runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--distinct", type=int, default=200, help="runs for the distinct-commit case")
    ap.add_argument("--dir", type=Path)
    args = ap.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="ciwatch-sched-"))
    work.mkdir(parents=True, exist_ok=True)
    repo = work / "repo"
    shas = make_repo(repo, args.distinct)
    cases = [
        ("fake resolver", "fake", args.runs, shas[:1]),
        ("real resolver, one commit", "real1", args.runs, shas[-1:]),
        ("real resolver, distinct commits", "realN", args.distinct, shas),
    ]
    print(f"concurrency 2, one pass per finished run; store on {work}")
    for title, kind, n, use in cases:
        m = measure(work, n, kind, use, repo)
        print(
            f"{title:34s} {n:5d} runs: {m['per_run'] * 1000:6.2f} ms per run"
            f" (first pass {m['first'] * 1000:7.1f} ms, {m['passes']} passes,"
            f" {m['total']:.2f} s in all)"
        )
        own = m["per_run"] - m["resolver"]
        print(
            f"{'':34s} of which reading the pipeline (git, parse, compile):"
            f" {m['resolver'] * 1000:.2f} ms; the scheduler's own: {own * 1000:.2f} ms"
            " (target <= 5 ms)"
        )
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
