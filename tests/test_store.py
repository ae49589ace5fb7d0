"""The store against real SQLite files in tmp_path."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from ciwatch.errors import CorruptStoreError, NotFoundError, StoreError
from ciwatch.model import (
    Event,
    EventKind,
    FailureKind,
    RunState,
    StepResult,
    StepState,
    ref_bytes,
)
from ciwatch.store import MIGRATIONS, Migration, Sighting, Store

SHA1 = "1" * 40
SHA2 = "2" * 40


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ciwatch.db"


@pytest.fixture
def store(db_path: Path, clock: Clock):
    s = Store.open(db_path, clock=clock)
    s.ensure_repo("app", "/srv/git/app.git")
    s.ensure_repo("lib", "https://example.org/lib.git")
    yield s
    s.close()


def push(sha: str = SHA1, ref: str = "refs/heads/main", repo: str = "app", **kw) -> Event:
    return Event(repo=repo, kind=EventKind.PUSH, ref=ref, sha=sha, **kw)


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path)


# -- durability and identity ---------------------------------------------------


def test_a_run_survives_close_and_reopen(db_path: Path, clock: Clock) -> None:
    s = Store.open(db_path, clock=clock)
    s.ensure_repo("app", "/srv/git/app.git")
    run, is_new = s.submit(push(before="0" * 40, source="hook", meta=(("pusher", "ann"),)))
    s.close()

    s = Store.open(db_path, clock=clock)
    assert is_new
    assert s.get_run(run.id) == run
    assert s.find_run("app", 1) == run
    assert [r.id for r in s.queued_runs(10)] == [run.id]
    event = s.get_event(run.event_id)
    assert event == push(before="0" * 40, source="hook", meta=(("pusher", "ann"),))
    s.close()


def test_runs_are_numbered_per_repo_and_numbers_are_never_reused(store: Store) -> None:
    a1, _ = store.submit(push(SHA1))
    l1, _ = store.submit(push(SHA1, repo="lib"))
    a2, _ = store.submit(push(SHA2))
    assert (a1.label, l1.label, a2.label) == ("app#1", "lib#1", "app#2")

    assert store.finish_run(a2.id, RunState.SUCCESS)
    assert store.delete_run(a2.id)
    again = store.create_run(a2.event_id)  # a manual re-run of the same event
    assert again.number == 3


def test_the_same_push_seen_twice_makes_one_run_with_two_sightings(
    store: Store, clock: Clock
) -> None:
    first, new1 = store.submit(push(source="hook"))
    clock.now += 2
    second, new2 = store.submit(push(source="webhook"))
    assert (new1, new2) == (True, False)
    assert second == first
    assert len(store.list_runs()) == 1
    seen = store.sightings(first.event_id)
    assert [(s.source, s.seen_at) for s in seen] == [("hook", 1000.0), ("webhook", 1002.0)]


def test_pull_requests_dedupe_on_their_number(store: Store) -> None:
    def pr(number: int) -> Event:
        return Event("app", EventKind.PULL_REQUEST, "refs/pull/head", SHA1, pr_number=number)

    assert store.submit(pr(7))[1] is True
    assert store.submit(pr(8))[1] is True  # same head sha, another PR: its own run
    assert store.submit(pr(7))[1] is False
    assert store.submit(push(ref="refs/pull/head"))[1] is True  # a push is not a PR


def test_record_event_then_create_run(store: Store) -> None:
    event_id, is_new = store.record_event(push(source="poll"))
    assert is_new and store.list_runs() == []
    assert store.record_event(push(source="watch")) == (event_id, False)
    run = store.create_run(event_id)
    assert (run.state, run.source, run.event_id) == (RunState.QUEUED, "poll", event_id)
    assert store.submit(push()) == (run, False)


def test_an_event_for_an_unknown_repo_is_refused_and_nothing_is_stored(store: Store) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        store.submit(push(repo="nope"))
    assert store.list_runs() == []


def test_submit_is_one_transaction(db_path: Path) -> None:
    class BreakingClock:
        """Answers `budget` times, then fails: a crash between event and run."""

        budget = 1_000

        def __call__(self) -> float:
            self.budget -= 1
            if self.budget < 0:
                raise RuntimeError("clock broke mid-submit")
            return 5.0

    clock = BreakingClock()
    s = Store.open(db_path, clock=clock)
    s.ensure_repo("app", "/srv/git/app.git")
    clock.budget = 1  # the event gets its time, the run does not
    with pytest.raises(RuntimeError):
        s.submit(push())
    clock.budget = 1_000
    # Neither the event nor a run was kept, so the retried intake is new again.
    run, is_new = s.submit(push())
    assert is_new and run.number == 1
    assert s.sightings(run.event_id) == [Sighting("manual", 5.0)]
    s.close()


def test_non_utf8_ref_round_trips_byte_exact(store: Store, db_path: Path) -> None:
    odd = b"refs/heads/caf\xe9-\xff\xfe\n$(x)".decode("utf-8", "surrogateescape")
    run, _ = store.submit(push(ref=odd))
    assert ref_bytes(store.get_run(run.id).ref) == b"refs/heads/caf\xe9-\xff\xfe\n$(x)"
    assert store.get_event(run.event_id).ref == odd
    assert store.submit(push(ref=odd))[1] is False  # dedupe compares the bytes
    with raw(db_path) as c:
        kind, value = c.execute("SELECT typeof(ref), ref FROM runs").fetchone()
    assert (kind, value) == ("blob", b"refs/heads/caf\xe9-\xff\xfe\n$(x)")


# -- listing -------------------------------------------------------------------


def test_listing_is_newest_first_and_the_queue_is_fifo(store: Store, clock: Clock) -> None:
    runs = []
    for i, repo in enumerate(["app", "lib", "app"]):
        clock.now += 1
        runs.append(store.submit(push(sha=str(i) * 40, repo=repo))[0])
    assert [r.id for r in store.list_runs()] == [r.id for r in reversed(runs)]
    assert [r.label for r in store.list_runs(repo="app")] == ["app#2", "app#1"]
    assert [r.id for r in store.list_runs(limit=1)] == [runs[2].id]

    store.start_attempt(runs[0].id, "w", 30)
    assert [r.id for r in store.list_runs(state=RunState.RUNNING)] == [runs[0].id]
    assert [r.id for r in store.queued_runs(10)] == [runs[1].id, runs[2].id]
    # A run put back in the queue keeps its place in line.
    store.requeue(runs[0].id, "worker lost")
    assert [r.id for r in store.queued_runs(10)] == [r.id for r in runs]


def test_repos(store: Store) -> None:
    app = store.get_repo("app")
    again = store.ensure_repo("app", "/new/path.git", default_branch="trunk")
    assert (again.id, again.url, again.default_branch) == (app.id, "/new/path.git", "trunk")
    assert [r.name for r in store.list_repos()] == ["app", "lib"]
    with pytest.raises(NotFoundError):
        store.get_repo("nope")
    with pytest.raises(NotFoundError):
        store.get_run(999)
    with pytest.raises(NotFoundError):
        store.find_run("app", 1)


# -- claiming, leases, fencing -------------------------------------------------


def _race(claimers, run_id: int) -> list:
    barrier = threading.Barrier(len(claimers))
    results: list = [None] * len(claimers)

    def claim(i: int) -> None:
        barrier.wait()
        results[i] = claimers[i](run_id)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(claimers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_claiming_is_exclusive_between_threads(store: Store) -> None:
    for i in range(10):
        run, _ = store.submit(push(sha=f"{i:040d}"))
        claimers = [lambda rid, w=w: store.start_attempt(rid, f"w{w}", 30) for w in range(6)]
        won = [a for a in _race(claimers, run.id) if a is not None]
        assert len(won) == 1
        assert store.get_run(run.id).attempts == 1


def test_claiming_is_exclusive_between_connections(
    store: Store, db_path: Path, clock: Clock
) -> None:
    # Two Store objects stand for two processes sharing the database file.
    other = Store.open(db_path, clock=clock)
    try:
        for i in range(10):
            run, _ = store.submit(push(sha=f"{i:040d}"))
            claimers = [
                lambda rid: store.start_attempt(rid, "a", 30),
                lambda rid: other.start_attempt(rid, "b", 30),
            ]
            won = [a for a in _race(claimers, run.id) if a is not None]
            assert len(won) == 1
    finally:
        other.close()


def test_a_live_lease_keeps_the_run(store: Store, clock: Clock) -> None:
    run, _ = store.submit(push())
    attempt = store.start_attempt(run.id, "w1", 30)
    assert attempt.number == 1 and attempt.lease_until == 1030.0
    started = store.get_run(run.id)
    assert (started.state, started.started_at) == (RunState.RUNNING, 1000.0)

    clock.now += 25
    assert store.renew_lease(attempt.id, 30)
    clock.now += 25  # past the first lease, within the renewed one
    assert store.expired_attempts() == []
    assert store.start_attempt(run.id, "w2", 30) is None


def test_an_expired_lease_is_found_and_the_run_taken_over(store: Store, clock: Clock) -> None:
    run, _ = store.submit(push())
    old = store.start_attempt(run.id, "w1", 30)
    clock.now += 31
    assert [a.id for a in store.expired_attempts()] == [old.id]

    new = store.start_attempt(run.id, "w2", 30)
    assert (new.number, new.worker) == (2, "w2")
    lost = store.attempts(run.id)[0]
    assert (lost.state, lost.finished_at) == (RunState.ERROR, 1031.0)
    assert "lease expired" in lost.reason
    assert store.get_run(run.id).started_at == 1000.0  # the first start is kept
    assert store.expired_attempts() == []

    # Fencing: the zombie worker of attempt 1 can no longer touch the run.
    assert store.renew_lease(old.id, 30) is False
    assert store.finish_attempt(old.id, RunState.SUCCESS) is False
    assert store.finish_run(run.id, RunState.SUCCESS, attempt_id=old.id) is False
    assert store.get_run(run.id).state == RunState.RUNNING
    assert store.finish_run(run.id, RunState.FAILURE, "exit 1", attempt_id=new.id)


def test_requeue_ends_the_lost_attempt_and_the_next_claim_is_attempt_2(store: Store) -> None:
    run, _ = store.submit(push())
    first = store.start_attempt(run.id, "w1", 30)
    assert store.requeue(run.id, "worker lost")
    assert store.get_run(run.id).state == RunState.QUEUED
    assert store.renew_lease(first.id, 30) is False
    assert store.attempts(run.id)[0].state == RunState.ERROR
    assert store.requeue(run.id, "again") is False  # only a running run goes back

    second = store.start_attempt(run.id, "w2", 30)
    assert second.number == 2
    assert store.get_run(run.id).attempts == 2


def test_recovery_requeues_only_a_lease_that_is_still_expired(store: Store, clock: Clock) -> None:
    run, _ = store.submit(push())
    attempt = store.start_attempt(run.id, "w1", 30)
    assert store.requeue(run.id, "worker lost", attempt_id=attempt.id) is False  # still live
    clock.now += 31
    (expired,) = store.expired_attempts()
    assert store.renew_lease(attempt.id, 30)  # the worker was only slow
    assert store.requeue(run.id, "worker lost", attempt_id=expired.id) is False
    assert store.get_run(run.id).state == RunState.RUNNING
    clock.now += 31
    assert store.requeue(run.id, "worker lost", attempt_id=attempt.id)
    assert store.get_run(run.id).state == RunState.QUEUED


def test_a_finished_run_is_final(store: Store, clock: Clock) -> None:
    run, _ = store.submit(push())
    attempt = store.start_attempt(run.id, "w", 30)
    clock.now += 5
    assert store.finish_run(run.id, RunState.SUCCESS, "all steps passed")

    assert store.finish_run(run.id, RunState.CANCELED, "too late") is False
    assert store.requeue(run.id, "lost") is False
    assert store.start_attempt(run.id, "w2", 30) is None
    done = store.get_run(run.id)
    assert (done.state, done.reason, done.finished_at) == (
        RunState.SUCCESS,
        "all steps passed",
        1005.0,
    )
    # The attempt ended with the run, so recovery never sees it as lost.
    assert store.attempts(run.id)[0].state == RunState.SUCCESS
    assert store.renew_lease(attempt.id, 30) is False
    clock.now += 100
    assert store.expired_attempts() == []


def test_a_queued_run_can_be_canceled_and_running_runs_are_not_deleted(store: Store) -> None:
    queued, _ = store.submit(push(SHA1))
    running, _ = store.submit(push(SHA2))
    store.start_attempt(running.id, "w", 30)
    assert store.delete_run(queued.id) is False
    assert store.delete_run(running.id) is False
    assert store.finish_run(queued.id, RunState.CANCELED, "superseded")
    assert store.get_run(queued.id).started_at is None
    with pytest.raises(StoreError):
        store.finish_run(running.id, RunState.QUEUED)
    with pytest.raises(NotFoundError):
        store.finish_run(999, RunState.SUCCESS)


# -- steps and artifacts -------------------------------------------------------


def test_steps_of_the_latest_attempt(store: Store, clock: Clock) -> None:
    run, _ = store.submit(push())
    store.start_attempt(run.id, "w1", 30)
    store.start_step(run.id, 1, "", 0, "build", "logs/1/0.log")
    store.requeue(run.id, "worker lost")
    store.start_attempt(run.id, "w2", 30)

    build = store.start_step(run.id, 2, "py=3.12", 0, "build", "logs/2/0.log")
    store.start_step(run.id, 2, "py=3.11", 0, "build", "logs/2/b.log")
    store.skip_step(run.id, 2, "py=3.12", 1, "deploy", "branch does not match")
    store.skip_step(run.id, 2, "py=3.11", 1, "deploy", "run canceled", state=StepState.CANCELED)
    result = StepResult(
        StepState.FAILURE,
        exit_code=2,
        failure=FailureKind.EXIT,
        reason="exit code 2",
        started_at=1000.5,
        finished_at=1003.0,
        allowed_failure=True,
        tries=2,
        log_bytes=4096,
        log_truncated=True,
    )
    store.finish_step(build, result)

    steps = store.steps(run.id)
    assert [(s.attempt, s.cell, s.index, s.name) for s in steps] == [
        (2, "py=3.12", 0, "build"),
        (2, "py=3.12", 1, "deploy"),
        (2, "py=3.11", 0, "build"),
        (2, "py=3.11", 1, "deploy"),
    ]
    assert steps[0].result == result and steps[0].state == StepState.FAILURE
    assert (steps[1].state, steps[1].result.reason) == (StepState.SKIPPED, "branch does not match")
    assert steps[2].state == StepState.RUNNING and steps[2].log_path == "logs/2/b.log"
    assert steps[3].state == StepState.CANCELED
    assert [s.name for s in store.steps(run.id, attempt=1)] == ["build"]
    with pytest.raises(NotFoundError):
        store.finish_step(999, result)


def test_artifacts(store: Store) -> None:
    run, _ = store.submit(push())
    store.start_attempt(run.id, "w", 30)
    step = store.start_step(run.id, 1, "", 0, "build", "0.log")
    made = store.add_artifact(run.id, step, "dist/app.whl", 1234, "artifacts/1/app.whl")
    assert store.artifacts(run.id) == [made]
    assert (made.path, made.size, made.step_id) == ("dist/app.whl", 1234, step)


# -- opening: settings, migrations, damage -------------------------------------


def test_wal_full_sync_foreign_keys_and_busy_timeout_are_set(store: Store, db_path: Path) -> None:
    assert store.settings() == {
        "journal_mode": "wal",
        "synchronous": 2,  # FULL
        "foreign_keys": 1,
        "busy_timeout": 5000,
        "user_version": len(MIGRATIONS),
    }
    with raw(db_path) as c:  # WAL is a property of the file, seen by anyone
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_write_waits_for_another_writer_instead_of_failing(store: Store, db_path: Path) -> None:
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    timer.start()
    try:
        t0 = time.monotonic()
        run, is_new = store.submit(push())
        assert is_new and time.monotonic() - t0 >= 0.25
    finally:
        timer.join()
        other.close()


def test_a_failing_migration_leaves_the_old_schema_and_version(db_path: Path, clock: Clock) -> None:
    s = Store.open(db_path, clock=clock)
    s.ensure_repo("app", "/srv/git/app.git")
    run, _ = s.submit(push())
    s.close()

    bad = Migration("add labels", ("CREATE TABLE labels (name TEXT)", "CREATE TABLE broken ("))
    n = len(MIGRATIONS) + 1
    with pytest.raises(StoreError, match=rf"migration {n} \(add labels\) failed") as err:
        Store.open(db_path, clock=clock, migrations=(*MIGRATIONS, bad))
    assert str(db_path) in str(err.value)
    with raw(db_path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master")}
    assert "labels" not in tables and "runs" in tables

    s = Store.open(db_path, clock=clock)
    assert s.get_run(run.id) == run
    s.close()


def test_a_failing_first_migration_leaves_an_empty_database(db_path: Path) -> None:
    def boom(conn: sqlite3.Connection) -> None:
        raise ValueError("disk said no")

    broken = (Migration(MIGRATIONS[0].name, MIGRATIONS[0].statements, apply=boom),)
    with pytest.raises(StoreError, match="migration 1 .*disk said no"):
        Store.open(db_path, migrations=broken)
    with raw(db_path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


def test_a_newer_database_is_refused_and_left_alone(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with raw(db_path) as c:
        c.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    before = db_path.read_bytes()
    with pytest.raises(StoreError, match="newer") as err:
        Store.open(db_path)
    assert not isinstance(err.value, CorruptStoreError)
    assert db_path.read_bytes() == before


def test_a_file_of_garbage_is_corrupt_and_untouched(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    garbage = bytes(range(256)) * 64
    db_path.write_bytes(garbage)
    with pytest.raises(CorruptStoreError) as err:
        Store.open(db_path)
    assert str(db_path) in str(err.value)
    assert "not a database" in str(err.value)
    assert db_path.read_bytes() == garbage
    assert sorted(p.name for p in db_path.parent.iterdir()) == [db_path.name]


def test_a_truncated_database_is_corrupt_and_untouched(store: Store, db_path: Path) -> None:
    for i in range(300):
        store.submit(push(sha=f"{i:040d}", meta=(("padding", "x" * 200),)))
    store.close()
    data = db_path.read_bytes()
    db_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptStoreError, match="malformed") as err:
        Store.open(db_path)
    assert str(db_path) in str(err.value)
    assert db_path.read_bytes() == data[: len(data) // 2]


def test_a_failed_integrity_check_says_what_it_found(store: Store, db_path: Path) -> None:
    store.submit(push())
    store.close()
    with open(db_path, "r+b") as f:  # the header's freelist page count, now a lie
        f.seek(36)
        f.write((7).to_bytes(4, "big"))
    damaged = db_path.read_bytes()
    with pytest.raises(CorruptStoreError, match="freelist") as err:
        Store.open(db_path)
    assert str(db_path) in str(err.value)
    assert db_path.read_bytes() == damaged


def test_a_version_1_database_is_upgraded_in_place(db_path: Path, clock: Clock) -> None:
    Store.open(db_path, clock=clock, migrations=MIGRATIONS[:1]).close()
    with raw(db_path) as c:
        c.execute("INSERT INTO repos (id, name, url) VALUES (1, 'app', '/srv/app.git')")
        c.execute(
            "INSERT INTO events (id, repo_id, kind, ref, sha, source, trusted, received_at)"
            " VALUES (1, 1, 'push', X'726566732f68656164732f6d61696e', ?, 'hook', 1, 1.0)",
            (SHA1,),
        )
        c.execute(
            "INSERT INTO runs (id, repo_id, number, event_id, kind, ref, sha, source, trusted,"
            " state, created_at) VALUES (1, 1, 1, 1, 'push', X'00', ?, 'hook', 1, 'queued', 1.0)",
            (SHA1,),
        )
        c.commit()
    s = Store.open(db_path, clock=clock)
    run = s.get_run(1)
    assert run.state is RunState.QUEUED and run.wait_reason == "" and run.priority == 0
    assert s.settings()["user_version"] == len(MIGRATIONS)
    s.close()


def test_webhook_deliveries_are_recorded_once(db_path: Path, clock: Clock) -> None:
    s = Store.open(db_path, clock=clock)
    assert not s.delivery_seen("gh", "abc-1")
    assert s.record_delivery("gh", "abc-1") is True
    assert s.delivery_seen("gh", "abc-1") and not s.delivery_seen("gitea", "abc-1")
    assert s.record_delivery("gh", "abc-1") is False  # a replay
    s.close()


def test_a_run_submitted_claimed_is_never_seen_queued(store: Store):
    """`ciwatch run` beside a daemon: the run it makes is the CLI's from the start, so
    the daemon's scheduler cannot resolve or dispatch it as well."""
    first, _ = store.submit(push())  # the daemon built this commit once already
    run, attempt = store.submit_claimed(push(source="cli"), "cli:1", 60.0)
    assert run.id != first.id and run.event_id == first.event_id  # the same event, a new run
    assert run.state is RunState.RUNNING and attempt.worker == "cli:1" and attempt.number == 1
    assert [r.id for r in store.unresolved_runs()] == [first.id]
    assert run.id not in [q.id for q in store.dispatch_queue()]
    assert store.start_attempt(run.id, "daemon-worker", 60.0) is None  # taken already
