"""The status outbox: the store's rows (real SQLite) and their delivery with a
fake clock and a scripted forge client (orchestration tests)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ciwatch.forges.types import Delivery, StatusState, StatusUpdate, Verdict
from ciwatch.outbox import AUTH_WAIT, BACKOFF_CAP, Outbox
from ciwatch.store import Store
from ciwatch.store.outbox import OutboxMixin, Outcome


class OStore(Store, OutboxMixin):
    """Store with the outbox half (a no-op once Store has it among its bases)."""


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class MaxRandom(random.Random):
    """Full jitter drawing its ceiling every time: the backoff sequence is exact."""

    def random(self) -> float:
        return 1.0


Answer = Delivery | Callable[[StatusUpdate], Delivery]


class ScriptedClient:
    """Records every post (time, update) and answers as told."""

    def __init__(self, clock: FakeClock, answer: Answer | None = None):
        self.clock = clock
        self.answer = answer or Delivery(Verdict.DELIVERED, 201)
        self.calls: list[tuple[float, StatusUpdate]] = []

    def post_status(self, update: StatusUpdate) -> Delivery:
        self.calls.append((self.clock(), update))
        return self.answer(update) if callable(self.answer) else self.answer

    @property
    def states(self) -> list[StatusState]:
        return [u.state for _, u in self.calls]


DOWN = Delivery(Verdict.RETRY, 502, message="HTTP 502 Bad Gateway")
OK = Delivery(Verdict.DELIVERED, 201)


def open_store(path: Path, clock: FakeClock) -> OStore:
    return OStore.open(path / "ciwatch.db", clock=clock)


def status(state: StatusState = StatusState.PENDING, *, sha: str = "a" * 40, **kw) -> StatusUpdate:
    fields = {
        "forge": "home",
        "forge_repo": "team/app",
        "sha": sha,
        "context": "ciwatch/.ciwatch.yml",
        "state": state,
        "description": str(state),
        "target_url": "https://ci.example.org/runs/1",
        "run_id": None,
    }
    fields.update(kw)
    return StatusUpdate(**fields)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path, clock):
    s = open_store(tmp_path, clock)
    yield s
    s.close()


def outbox(store, clients, clock, **kw) -> Outbox:
    kw.setdefault("rng", MaxRandom())
    kw.setdefault("horizons", {name: 24 * 3600.0 for name in clients})
    return Outbox(store, clients, clock=clock, **kw)


def run_for(ob: Outbox, clock: FakeClock, seconds: float, step: float = 1.0) -> None:
    """Drive the outbox as its thread would, one pass per `step` of fake time."""
    end = clock.t + seconds
    while clock.t < end:
        ob.deliver_once()
        clock.advance(step)


# -- the store's rows -------------------------------------------------------------------


def test_only_the_newest_row_per_sha_and_context_is_due(store, clock):
    first = store.enqueue_status(status(StatusState.PENDING), clock())
    other_ctx = store.enqueue_status(status(context="ciwatch/.ciwatch.yml/py=3.12"), clock())
    other_sha = store.enqueue_status(status(sha="b" * 40), clock())
    newest = store.enqueue_status(status(StatusState.SUCCESS), clock())

    due = store.due_statuses(clock(), 10)

    assert sorted(d.id for d in due) == sorted([other_ctx, other_sha, newest])
    assert store.status_row(first)["outcome"] == Outcome.SUPERSEDED
    row = next(d for d in due if d.id == newest)
    assert row.update == status(StatusState.SUCCESS) and row.tries == 0


def test_a_repeated_status_is_not_queued_twice(store, clock):
    update = status(StatusState.SUCCESS, extra=(("ref", "main"),))
    first = store.enqueue_status(update, clock())
    assert store.enqueue_status(update, clock() + 5) == first
    store.mark_status(first, Outcome.DELIVERED)
    # Delivered already: the same status again posts nothing.
    assert store.enqueue_status(update, clock() + 9) == first
    assert store.due_statuses(clock() + 10, 10) == []
    # A different one is queued.
    assert store.enqueue_status(status(StatusState.FAILURE), clock()) != first
    assert store.due_statuses(clock(), 10)[0].update.extra == ()


def test_retry_keeps_the_row_until_next_at(store, clock):
    row_id = store.enqueue_status(status(), clock())
    assert store.mark_status(row_id, Outcome.RETRY, next_at=clock() + 30, error="HTTP 502")
    assert store.due_statuses(clock() + 29, 10) == []
    (due,) = store.due_statuses(clock() + 30, 10)
    assert due.tries == 1
    assert store.outbox_stats()["home"]["failing"] == 1


# -- delivery ---------------------------------------------------------------------------


def test_states_queued_while_the_forge_is_down_coalesce_to_the_newest(store, clock):
    client = ScriptedClient(clock, DOWN)
    ob = outbox(store, {"home": client}, clock)
    store.enqueue_status(status(StatusState.PENDING, description="queued"), clock())
    ob.deliver_once()
    assert len(client.calls) == 1  # tried once, then held back
    for state in (StatusState.RUNNING, StatusState.RUNNING, StatusState.FAILURE):
        store.enqueue_status(status(state, description=f"{state} later"), clock())
        clock.advance(0.5)
        ob.deliver_once()
    store.enqueue_status(status(StatusState.SUCCESS, description="passed in 3s"), clock())
    assert len(client.calls) == 1

    client.answer = OK
    run_for(ob, clock, 120)

    assert client.states == [StatusState.PENDING, StatusState.SUCCESS]
    assert client.calls[-1][1].description == "passed in 3s"
    assert ob.status()["backlog"] == 0


def test_a_forge_down_for_ten_minutes_gets_the_final_state_with_backoff(store, clock):
    start = clock()
    client = ScriptedClient(clock, lambda u: OK if clock() >= start + 600 else DOWN)
    ob = outbox(store, {"home": client}, clock)
    row_id = store.enqueue_status(status(StatusState.SUCCESS), clock())

    next_ats = []
    while not client.calls or client.calls[-1][0] < start + 600:
        before = len(client.calls)
        ob.deliver_once()
        if len(client.calls) > before:
            row = store.status_row(row_id)
            if row["done_at"] is None:
                next_ats.append(row["next_at"] - clock())
        clock.advance(1.0)

    assert next_ats == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]
    # No post before its next_at: the calls are exactly at the backoff points.
    times = [t - start for t, _ in client.calls]
    assert times == [0, 2, 6, 14, 30, 62, 126, 254, 510, 1022]
    row = store.status_row(row_id)
    assert row["outcome"] == Outcome.DELIVERED and row["tries"] == 10
    assert client.states[-1] == StatusState.SUCCESS


def test_backoff_has_full_jitter_and_a_cap(store, clock):
    ob = outbox(store, {}, clock, rng=random.Random(7))
    delays = [[ob._backoff(tries, None) for _ in range(200)] for tries in (0, 3, 12)]
    assert all(1.0 <= d <= 2.0 for d in delays[0])
    assert all(1.0 <= d <= 16.0 for d in delays[1]) and len(set(delays[1])) > 100
    assert all(d <= BACKOFF_CAP for d in delays[2]) and max(delays[2]) > BACKOFF_CAP * 0.9
    assert ob._backoff(0, 45.0) == 45.0  # never sooner than the forge asked


def test_retry_after_holds_every_request_to_that_forge_only(store, clock):
    start = clock()
    limited = ScriptedClient(
        clock, lambda u: OK if clock() >= start + 7 else Delivery(Verdict.RETRY, 429, 7.0)
    )
    other = ScriptedClient(clock)
    ob = outbox(store, {"home": limited, "lab": other}, clock)
    store.enqueue_status(status(StatusState.PENDING), clock())
    ob.deliver_once()

    # More rows for the limited forge, and rows for another forge, arrive meanwhile.
    for i in range(6):
        clock.advance(1.0)
        store.enqueue_status(status(sha=f"{i:040d}"), clock())
        store.enqueue_status(status(forge="lab", sha=f"{i:040d}"), clock())
        ob.deliver_once()

    assert [t - start for t, _ in limited.calls] == [0]
    assert len(other.calls) == 6  # the other forge went on
    run_for(ob, clock, 60)
    assert min(t for t, _ in limited.calls[1:]) >= start + 7
    assert store.outbox_stats()["home"]["backlog"] == 0


def test_a_rate_limit_reset_is_honoured(store, clock, caplog):
    reset = clock() + 900
    client = ScriptedClient(
        clock,
        lambda u: (
            OK
            if clock() >= reset
            else Delivery(Verdict.RETRY, 403, retry_after=reset - clock(), message="rate limited")
        ),
    )
    ob = outbox(store, {"home": client}, clock)
    for i in range(5):
        store.enqueue_status(status(sha=f"{i:040d}"), clock())
    with caplog.at_level(logging.INFO, logger="ciwatch.outbox"):
        run_for(ob, clock, 899)
        assert len(client.calls) == 1
        assert ob.status()["forges"]["home"]["held_until"] == reset
        run_for(ob, clock, 30)
    assert len(client.calls) == 6
    assert all(t >= reset for t, _ in client.calls[1:])
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "not taking statuses" in m]) == 1
    assert len([m for m in said if "again" in m]) == 1


def test_a_refused_token_is_not_hot_looped_and_shows_in_status(store, clock, caplog):
    client = ScriptedClient(
        clock, Delivery(Verdict.AUTH, 401, message="the forge refused the token (401)")
    )
    ob = outbox(store, {"home": client}, clock)
    for i in range(20):
        store.enqueue_status(status(sha=f"{i:040d}"), clock())

    with caplog.at_level(logging.INFO, logger="ciwatch.outbox"):
        run_for(ob, clock, 30 * 60, step=1.0)

    # One try every AUTH_WAIT for the whole forge, not one per row or per pass.
    assert len(client.calls) == 30 * 60 // AUTH_WAIT
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and "refused the token" in errors[0].getMessage()
    shown = ob.status()
    assert shown["failing"] == ["home"]
    home = shown["forges"]["home"]
    assert home["state"] == "auth" and home["http_status"] == 401
    assert home["backlog"] == 20 and "refused the token" in home["error"]

    client.answer = OK  # the token was fixed
    run_for(ob, clock, AUTH_WAIT + 5)
    assert ob.status()["failing"] == [] and ob.status()["backlog"] == 0


def test_an_unknown_sha_is_dropped_after_three_tries(store, clock, caplog):
    client = ScriptedClient(clock, Delivery(Verdict.DROP, 422, message="No commit found for SHA"))
    ob = outbox(store, {"home": client}, clock)
    row_id = store.enqueue_status(status(sha="d" * 40), clock())
    with caplog.at_level(logging.WARNING, logger="ciwatch.outbox"):
        run_for(ob, clock, 3600)
    assert len(client.calls) == 3
    row = store.status_row(row_id)
    assert row["outcome"] == Outcome.DROPPED and "No commit found" in row["last_error"]
    (line,) = [r.getMessage() for r in caplog.records]
    assert "team/app" in line and "d" * 40 in line and "ciwatch/.ciwatch.yml" in line


def test_past_the_horizon_a_status_is_given_up_with_one_error(store, clock, caplog):
    client = ScriptedClient(clock, DOWN)
    ob = outbox(store, {"home": client}, clock, horizons={"home": 3600.0})
    row_id = store.enqueue_status(status(), clock())
    with caplog.at_level(logging.ERROR, logger="ciwatch.outbox"):
        run_for(ob, clock, 3 * 3600, step=5.0)
    row = store.status_row(row_id)
    assert row["outcome"] == Outcome.GAVE_UP
    # Retried until the horizon, then one last try after it, then no more.
    assert client.calls[-2][0] < row["created_at"] + 3600 <= client.calls[-1][0]
    assert row["done_at"] == client.calls[-1][0]
    assert len(caplog.records) == 1 and "gave up" in caplog.records[0].getMessage()
    stats = store.outbox_stats()["home"]
    assert stats["gave_up"] == 1 and stats["backlog"] == 0
    assert stats["last_errors"][0]["outcome"] == "gave_up"


def test_queued_statuses_survive_a_restart(tmp_path, clock):
    store = open_store(tmp_path, clock)
    down = ScriptedClient(clock, DOWN)
    outbox(store, {"home": down}, clock).deliver_once()  # nothing yet
    store.enqueue_status(status(StatusState.FAILURE), clock())
    outbox(store, {"home": down}, clock).deliver_once()
    store.close()

    clock.advance(30)
    store = open_store(tmp_path, clock)
    up = ScriptedClient(clock)
    outbox(store, {"home": up}, clock).deliver_once()
    assert up.states == [StatusState.FAILURE]
    store.close()


def test_a_row_for_a_forge_no_longer_configured_is_dropped(store, clock):
    ob = outbox(store, {"home": ScriptedClient(clock)}, clock)
    row_id = store.enqueue_status(status(forge="gone"), clock())
    ob.deliver_once()
    row = store.status_row(row_id)
    assert row["outcome"] == Outcome.DROPPED and "'gone'" in row["last_error"]


def test_a_client_that_raises_is_a_retry_not_a_dead_thread(tmp_path):
    store = OStore.open(tmp_path / "ciwatch.db")
    calls = []

    class Flaky:
        def post_status(self, update):
            calls.append(update)
            if len(calls) == 1:
                raise RuntimeError("bug")
            return OK

    class FirstZero(random.Random):
        def random(self) -> float:
            return 0.0  # the backoff floor: retried after one second

    delivered = threading.Event()
    ob = Outbox(store, {"home": Flaky()}, rng=FirstZero(), tick=0.05)
    ob.start()
    try:
        store.enqueue_status(status(), time.time())
        ob.wake()
        deadline = time.time() + 5
        while time.time() < deadline and not delivered.is_set():
            if store.outbox_stats().get("home", {}).get("delivered"):
                delivered.set()
            time.sleep(0.02)
    finally:
        ob.stop()
        store.close()
    assert delivered.is_set() and len(calls) == 2


def test_the_thread_delivers_promptly_after_wake_and_stops(tmp_path):
    store = OStore.open(tmp_path / "ciwatch.db")
    client = ScriptedClient(time.time)
    swept = []
    ob = Outbox(store, {"home": client}, before_pass=lambda: swept.append(1), tick=5.0)
    ob.start()
    try:
        time.sleep(0.05)
        store.enqueue_status(status(), time.time())
        t0 = time.monotonic()
        ob.wake()
        while not client.calls and time.monotonic() - t0 < 2:
            time.sleep(0.005)
        assert client.calls and time.monotonic() - t0 < 0.5
        assert swept
    finally:
        t0 = time.monotonic()
        ob.stop()
        store.close()
    assert time.monotonic() - t0 < 1.0
