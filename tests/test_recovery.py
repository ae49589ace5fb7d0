"""Lost workers: expired leases are requeued a bounded number of times, then
the run ends `error`; nothing is left running. Real store, fake clock."""

from __future__ import annotations

import pytest

from ciwatch.model import Event, EventKind, RunState
from ciwatch.recovery import recover
from ciwatch.store import Store


@pytest.fixture
def clock():
    return [1000.0]


@pytest.fixture
def store(tmp_path, clock):
    s = Store.open(tmp_path / "ciwatch.db", clock=lambda: clock[0])
    s.ensure_repo("app", "/nonexistent")
    yield s
    s.close()


def queued(store, n=1):
    runs = []
    for i in range(n):
        run, _ = store.submit(
            Event(repo="app", kind=EventKind.PUSH, ref="refs/heads/main", sha=f"{i + 1:040x}")
        )
        runs.append(run)
    return runs


def test_an_expired_attempt_is_requeued_then_errors_after_max_attempts(store, clock):
    (run,) = queued(store)
    store.start_attempt(run.id, "host:1", 10)
    clock[0] += 11
    did = recover(store, max_attempts=2)
    assert len(did) == 1 and "app#1" in did[0] and "attempt 1" in did[0]
    again = store.get_run(run.id)
    assert again.state is RunState.QUEUED
    assert again.reason == "worker lost (attempt 1): lease expired"
    assert store.attempts(run.id)[0].state is RunState.ERROR

    second = store.start_attempt(run.id, "host:2", 10)
    assert second.number == 2
    clock[0] += 11
    did = recover(store, max_attempts=2)
    final = store.get_run(run.id)
    assert final.state is RunState.ERROR and final.reason == "worker lost after 2 attempts"
    assert [a.state for a in store.attempts(run.id)] == [RunState.ERROR, RunState.ERROR]
    assert did == ["app#1: error: worker lost after 2 attempts"]
    assert store.running_runs() == []


def test_a_live_lease_is_left_alone(store, clock):
    live, lost = queued(store, 2)
    store.start_attempt(live.id, "host:1", 100)
    store.start_attempt(lost.id, "host:2", 10)
    clock[0] += 50
    recover(store, max_attempts=3)
    assert store.get_run(live.id).state is RunState.RUNNING
    assert store.get_run(lost.id).state is RunState.QUEUED
    assert recover(store, max_attempts=3) == []


def test_a_worker_that_renewed_meanwhile_keeps_its_run(store, clock):
    (run,) = queued(store)
    attempt = store.start_attempt(run.id, "host:1", 10)
    clock[0] += 11
    expired = store.expired_attempts()
    assert [a.id for a in expired] == [attempt.id]
    assert store.renew_lease(attempt.id, 10)  # the worker was only slow
    # what recovery would do with its stale list, both ways:
    assert not store.requeue(run.id, "lost", attempt_id=attempt.id)
    assert not store.end_lost_run(run.id, attempt.id, "lost")
    assert store.get_run(run.id).state is RunState.RUNNING


def test_max_attempts_one_means_no_retry(store, clock):
    (run,) = queued(store)
    store.start_attempt(run.id, "host:1", 10)
    clock[0] += 11
    recover(store, max_attempts=1)
    assert store.get_run(run.id).state is RunState.ERROR


def test_many_lost_runs_at_start_none_stays_running(store, clock):
    runs = queued(store, 30)
    for r in runs:
        store.start_attempt(r.id, "host:dead", 5)
    for r in runs[:10]:  # these were already on their last attempt
        clock[0] += 6
        store.requeue(r.id, "x")
        store.start_attempt(r.id, "host:dead", 5)
    clock[0] += 6
    did = recover(store, max_attempts=2)
    assert len(did) == 30 and store.running_runs() == []
    assert [store.get_run(r.id).state for r in runs] == [RunState.ERROR] * 10 + [
        RunState.QUEUED
    ] * 20
