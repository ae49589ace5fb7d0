"""The scheduler against a real store, with a fake dispatcher and resolver
(orchestration tests); the resolver itself against a real git repository."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
from gitutil import commit, make_repo

from ciwatch.model import Event, EventKind, RunState
from ciwatch.pipeline.plan import Limits, OnNewCommit
from ciwatch.resolve import Resolution, Resolver
from ciwatch.scheduler import Scheduler
from ciwatch.store import Store
from ciwatch.workspace import Mirrors, local_repo_info


class FakeDispatcher:
    """Records dispatches; plays the workers: claim, finish, obey stop requests."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dispatched: list[int] = []
        self.alive: set[int] = set()
        self.most_at_once = 0
        self.fail: Exception | None = None

    def dispatch(self, run_id: int) -> None:
        if self.fail:
            raise self.fail
        self.dispatched.append(run_id)
        self.alive.add(run_id)
        self.most_at_once = max(self.most_at_once, len(self.alive | self._running()))

    def in_flight(self) -> set[int]:
        return set(self.alive)

    def _running(self) -> set[int]:
        return {r.id for r in self.store.running_runs()}

    def claim_all(self) -> None:
        for rid in sorted(self.alive):
            if self.store.get_run(rid).state is RunState.QUEUED:
                self.store.start_attempt(rid, f"fake:{rid}", 60)

    def finish(self, run_id: int, state: RunState = RunState.SUCCESS) -> None:
        request = self.store.cancel_request(run_id)
        if request is not None:
            state, reason = RunState.CANCELED, request[0]
        else:
            reason = ""
        self.store.finish_run(run_id, state, reason)
        self.alive.discard(run_id)

    def die(self, run_id: int) -> None:
        self.alive.discard(run_id)


class FakeResolver:
    def __init__(self, policy: OnNewCommit | None = None, group: str = "{repo}/{branch}") -> None:
        self.policy = policy
        self.group = group
        self.seen: list[int] = []

    def resolve(self, run) -> Resolution:
        self.seen.append(run.id)
        if self.policy is None:
            return Resolution(None, None, "no group")
        branch = run.ref.rpartition("/")[2]
        return Resolution(self.group.format(repo=run.repo, branch=branch), self.policy, "")


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "ciwatch.db")
    s.ensure_repo("app", "/nonexistent/app")
    s.ensure_repo("lib", "/nonexistent/lib")
    yield s
    s.close()


_SEQ = iter(range(1, 10**6))


def push(store: Store, repo: str = "app", branch: str = "main"):
    sha = hashlib.sha1(str(next(_SEQ)).encode()).hexdigest()
    run, _ = store.submit(
        Event(repo=repo, kind=EventKind.PUSH, ref=f"refs/heads/{branch}", sha=sha)
    )
    return run


def make(store, resolver=None, *, max_running=2, repo_limits=None, clock=time.time):
    fake = FakeDispatcher(store)
    sched = Scheduler(
        store,
        fake,
        resolver or FakeResolver(),
        max_running=max_running,
        repo_limits=repo_limits or {},
        clock=clock,
    )
    return sched, fake


def drive(store, sched, fake, *, rounds=200) -> None:
    """Passes and fake workers until the queue is empty: each round the workers
    claim what was dispatched, then the oldest running run ends."""
    for _ in range(rounds):
        sched.run_once()
        fake.claim_all()
        running = store.running_runs()
        if running:
            fake.finish(running[0].id)
        elif not store.count_queued():
            return
    raise AssertionError("the queue never emptied")


def states(store, runs) -> list[str]:
    return [store.get_run(r.id).state.value for r in runs]


# -- limits and order -----------------------------------------------------------


def test_global_limit_and_fifo(store):
    runs = [push(store, branch=f"b{i}") for i in range(5)]
    sched, fake = make(store, max_running=2)
    sched.run_once()
    assert fake.dispatched == [runs[0].id, runs[1].id]
    waiting = store.get_run(runs[2].id)
    assert waiting.wait_reason == "waiting for a free slot (2 of 2 running)"
    fake.claim_all()
    sched.run_once()  # claimed runs still hold their slots
    assert fake.dispatched == [runs[0].id, runs[1].id]
    fake.finish(runs[1].id)
    sched.run_once()
    assert fake.dispatched[-1] == runs[2].id
    assert store.get_run(runs[2].id).wait_reason == ""


def test_dispatched_but_unclaimed_runs_count_against_the_limit(store):
    runs = [push(store, branch=f"b{i}") for i in range(3)]
    sched, fake = make(store, max_running=1)
    sched.run_once()
    sched.run_once()  # the worker has not claimed runs[0] yet
    assert fake.dispatched == [runs[0].id]


def test_per_repo_limit(store):
    a1, a2, b1 = push(store, "app", "x"), push(store, "app", "y"), push(store, "lib", "x")
    sched, fake = make(store, max_running=3, repo_limits={"app": 1})
    sched.run_once()
    assert fake.dispatched == [a1.id, b1.id]
    assert store.get_run(a2.id).wait_reason == "waiting for a free slot for app (1 of 1 running)"


def test_priority_first_then_fifo(store):
    runs = [push(store, branch=f"b{i}") for i in range(4)]
    store.set_priority(runs[2].id, 5)
    sched, fake = make(store, max_running=1)
    drive(store, sched, fake)
    assert fake.dispatched == [runs[2].id, runs[0].id, runs[1].id, runs[3].id]


def test_beyond_the_head_of_a_long_queue_a_run_starts_within_a_tick(store):
    for i in range(70):
        push(store, "app", f"b{i}")
    sched, fake = make(store, max_running=4, repo_limits={"app": 1})
    sched.tick = 0.2
    sched.run_once(full=None)  # the first pass of the loop looks at everything
    lib = push(store, "lib")
    sched.run_once(full=None)  # a wake-up pass looks at the head of the queue only
    assert lib.id not in fake.dispatched
    time.sleep(0.25)
    sched.run_once(full=None)
    assert lib.id in fake.dispatched and len(fake.dispatched) == 2


def test_set_limits_takes_effect_on_the_next_pass(store):
    runs = [push(store, branch=f"b{i}") for i in range(4)]
    sched, fake = make(store, max_running=1)
    sched.run_once()
    sched.set_limits(3, {})
    sched.run_once()
    assert fake.dispatched == [r.id for r in runs[:3]]


# -- concurrency groups: 20 pushes to one branch ----------------------------------


def twenty_while_first_runs(store, policy):
    sched, fake = make(store, FakeResolver(policy), max_running=4)
    first = push(store)
    sched.run_once()
    fake.claim_all()
    runs = [first] + [push(store) for _ in range(19)]
    drive(store, sched, fake)
    return runs, fake


def test_cancel_running_only_the_newest_runs(store):
    runs, fake = twenty_while_first_runs(store, OnNewCommit.CANCEL_RUNNING)
    newest = runs[-1]
    assert states(store, runs) == ["canceled"] * 19 + ["success"]
    by_newest = f"superseded by app#20 ({newest.sha[:7]})"
    assert [store.get_run(r.id).reason for r in runs[:19]] == [by_newest] * 19
    # the running one was asked to stop softly, and stopped before the newest started
    assert store.get_run(runs[0].id).cancel_mode.value == "supersede"
    assert fake.dispatched == [runs[0].id, newest.id]
    assert fake.most_at_once == 1


def test_cancel_running_pushes_arriving_one_by_one(store):
    sched, fake = make(store, FakeResolver(OnNewCommit.CANCEL_RUNNING), max_running=4)
    runs = []
    for _ in range(5):
        runs.append(push(store))
        sched.run_once()
        fake.claim_all()
    drive(store, sched, fake)
    assert states(store, runs) == ["canceled"] * 4 + ["success"]
    for older, newer in zip(runs, runs[1:], strict=False):
        assert store.get_run(older.id).reason == f"superseded by {newer.label} ({newer.sha[:7]})"
    assert fake.dispatched == [runs[0].id, runs[-1].id]


def test_cancel_running_all_queued_at_once(store):
    runs = [push(store) for _ in range(20)]
    sched, fake = make(store, FakeResolver(OnNewCommit.CANCEL_RUNNING), max_running=4)
    drive(store, sched, fake)
    assert fake.dispatched == [runs[-1].id]
    assert states(store, runs) == ["canceled"] * 19 + ["success"]


def test_cancel_pending_lets_the_running_one_finish(store):
    runs, fake = twenty_while_first_runs(store, OnNewCommit.CANCEL_PENDING)
    assert states(store, runs) == ["success"] + ["canceled"] * 18 + ["success"]
    assert store.get_run(runs[0].id).cancel_requested is None
    assert store.get_run(runs[5].id).reason == f"superseded by app#20 ({runs[-1].sha[:7]})"
    assert fake.dispatched == [runs[0].id, runs[-1].id]


def test_queue_runs_all_in_order_one_at_a_time(store):
    runs, fake = twenty_while_first_runs(store, OnNewCommit.QUEUE)
    assert states(store, runs) == ["success"] * 20
    assert fake.dispatched == [r.id for r in runs]
    assert fake.most_at_once == 1


def test_never_runs_in_parallel_up_to_the_limit(store):
    runs = [push(store) for _ in range(20)]
    sched, fake = make(store, FakeResolver(OnNewCommit.NEVER), max_running=4)
    sched.run_once()
    assert fake.dispatched == [r.id for r in runs[:4]]
    drive(store, sched, fake)
    assert states(store, runs) == ["success"] * 20
    assert fake.most_at_once == 4


def test_groups_of_other_branches_do_not_wait(store):
    main1, main2, dev = (
        push(store, branch="main"),
        push(store, branch="main"),
        push(store, branch="dev"),
    )
    sched, fake = make(store, FakeResolver(OnNewCommit.QUEUE), max_running=4)
    sched.run_once()
    assert fake.dispatched == [main1.id, dev.id]
    assert store.get_run(main2.id).wait_reason == "waiting for app#1 in group app/main"


def test_an_older_run_resolved_late_never_supersedes_a_newer_one(store):
    older, newer = push(store), push(store)
    # The newer run was resolved first (e.g. the older one's pipeline read was slow).
    store.set_resolution(newer.id, "app/main", OnNewCommit.CANCEL_RUNNING)
    sched, fake = make(store, FakeResolver(OnNewCommit.CANCEL_RUNNING), max_running=4)
    sched.run_once()
    assert store.get_run(older.id).state is RunState.CANCELED
    assert store.get_run(older.id).reason == f"superseded by app#2 ({newer.sha[:7]})"
    assert store.get_run(newer.id).state is RunState.QUEUED
    assert fake.dispatched == [newer.id]


# -- waiting, pausing, draining, failures ------------------------------------------


def test_pause_and_resume(store):
    runs = [push(store, branch=f"b{i}") for i in range(2)]
    sched, fake = make(store)
    sched.pause()
    sched.run_once()
    assert fake.dispatched == []
    assert store.get_run(runs[0].id).wait_reason == "paused"
    assert sched.status()["paused"] is True
    sched.resume()
    sched.run_once()
    assert fake.dispatched == [r.id for r in runs]


def test_drain_starts_nothing_and_leaves_running_runs_alone(store):
    first = push(store, branch="a")
    sched, fake = make(store, FakeResolver(OnNewCommit.CANCEL_RUNNING))
    sched.run_once()
    fake.claim_all()
    second = push(store, branch="b")
    sched.drain()
    sched.run_once()
    assert fake.dispatched == [first.id]
    assert store.get_run(first.id).cancel_requested is None
    assert store.get_run(second.id).wait_reason.startswith("draining")
    status = sched.status()
    assert status["draining"] and status["running"] == 1 and status["queued"] == 1
    assert status["waiting"] == [
        {"id": second.id, "label": "app#2", "reason": "draining: no new run starts"}
    ]


def test_a_worker_that_dies_before_claiming_leaves_the_run_queued_and_retried(store):
    now = [1000.0]
    run = push(store)
    sched, fake = make(store, clock=lambda: now[0])
    sched.run_once()
    fake.die(run.id)
    sched.run_once()
    assert fake.dispatched == [run.id]  # not straight again: a worker that cannot start
    assert "exited before starting it" in store.get_run(run.id).wait_reason
    now[0] += 1.5
    sched.run_once()
    assert fake.dispatched == [run.id, run.id]
    assert store.get_run(run.id).state is RunState.QUEUED


def test_no_worker_available_is_a_wait_reason_not_a_crash(store):
    run = push(store)
    sched, fake = make(store)
    fake.fail = OSError("no such file: python")
    sched.run_once()
    assert "no worker could be started" in store.get_run(run.id).wait_reason
    fake.fail = None
    sched.run_once()
    assert fake.dispatched == [run.id]


def test_a_resolver_that_raises_does_not_block_the_run(store):
    class Broken:
        def resolve(self, run):
            raise RuntimeError("bug")

    run = push(store)
    sched, fake = make(store, Broken())
    sched.run_once()
    assert fake.dispatched == [run.id]
    assert store.get_run(run.id).resolved_at is not None


def test_wait_reasons_are_written_only_when_they_change(store):
    runs = [push(store, branch=f"b{i}") for i in range(3)]
    sched, fake = make(store, max_running=1)
    sched.run_once()
    calls = []
    real = store.set_wait_reasons
    store.set_wait_reasons = lambda reasons: calls.append(dict(reasons)) or real(reasons)
    sched.run_once()
    sched.run_once()
    assert calls == [{}, {}]
    assert store.get_run(runs[2].id).wait_reason == "waiting for a free slot (1 of 1 running)"


def test_the_threads_dispatch_each_time_they_are_woken(store):
    sched, fake = make(store)
    sched.tick = 30  # only a wake-up can make them act within the test
    real = fake.dispatch
    fake.dispatch = lambda rid: (real(rid), sched.wake())  # woken during a pass, too
    sched.start()
    try:
        runs = []
        for i in range(3):
            time.sleep(0.05)
            runs.append(push(store, branch=f"b{i}"))
            sched.wake()
            deadline = time.monotonic() + 5
            while len(fake.dispatched) <= i and time.monotonic() < deadline:
                time.sleep(0.01)
            assert fake.dispatched == [r.id for r in runs]
            fake.claim_all()
            fake.finish(runs[-1].id)
    finally:
        sched.stop()


def test_a_slow_resolution_does_not_hold_up_runs_that_are_ready(store):
    release = threading.Event()

    class Slow(FakeResolver):
        def resolve(self, run):
            release.wait(10)  # a fetch from a remote that hangs
            return super().resolve(run)

    ready = push(store, "lib")
    store.set_resolution(ready.id, None, None)
    push(store, "app")  # its resolution hangs
    sched, fake = make(store, Slow())
    sched.start()
    try:
        deadline = time.monotonic() + 5
        while not fake.dispatched and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.dispatched == [ready.id]
    finally:
        release.set()
        sched.stop()


def test_the_thread_survives_a_failing_pass(store):
    sched, fake = make(store)
    sched.tick = 0.05
    boom = threading.Event()
    real = store.dispatch_queue

    def flaky(*args):
        if not boom.is_set():
            boom.set()
            raise RuntimeError("database hiccup")
        return real(*args)

    store.dispatch_queue = flaky
    run = push(store)
    sched.start()
    try:
        deadline = time.monotonic() + 5
        while not fake.dispatched and time.monotonic() < deadline:
            time.sleep(0.01)
        assert boom.is_set() and fake.dispatched == [run.id]
    finally:
        sched.stop()


# -- the resolver, against a real repository -------------------------------------


def resolver_setup(tmp_path: Path, pipeline: str | None, **kw):
    src = tmp_path / "src"
    files = {"README": "x"} if pipeline is None else {".ciwatch.yml": pipeline}
    sha = make_repo(src, files)
    store = Store.open(tmp_path / "state" / "ciwatch.db")
    url, _, _ = local_repo_info(src)
    store.ensure_repo("app", url)
    run, _ = store.submit(Event(repo="app", kind=EventKind.PUSH, ref="refs/heads/main", sha=sha))
    resolver = Resolver(store, Mirrors(tmp_path / "state"), limits=Limits(), **kw)
    return store, resolver, run, src


def test_resolver_reads_the_group_from_the_commit(tmp_path):
    pipeline = (
        'concurrency: {group: "{repo}/{branch}", on_new_commit: cancel-pending}\n'
        "steps:\n  - run: 'true'\n"
    )
    store, resolver, run, _ = resolver_setup(tmp_path, pipeline)
    res = resolver.resolve(run)
    assert (res.group, res.policy) == ("app/main", OnNewCommit.CANCEL_PENDING)
    store.close()


def test_resolver_uses_the_repos_pipeline_path(tmp_path):
    pipeline = "concurrency: {on_new_commit: never}\nsteps:\n  - run: 'true'\n"
    src = tmp_path / "src"
    make_repo(src, {"ci/pipeline.yml": pipeline})
    store, resolver, run, _ = resolver_setup(
        tmp_path / "other", None, pipeline_paths={"app": "ci/pipeline.yml"}
    )
    store.ensure_repo("app", local_repo_info(src)[0])
    sha = local_repo_info(src)[2]
    run, _ = store.submit(Event(repo="app", kind=EventKind.PUSH, ref="refs/heads/main", sha=sha))
    res = resolver.resolve(run)
    assert (res.group, res.policy) == ("app/refs/heads/main", OnNewCommit.NEVER)
    store.close()


@pytest.mark.parametrize(
    "pipeline,note",
    [
        (None, "pipeline not read"),
        ("steps: [\n", "invalid pipeline"),
        ("concurrency: {on_new_commit: sometimes}\nsteps:\n  - run: x\n", "invalid pipeline"),
        ("steps:\n  - run: 'true'\n", "no concurrency group"),
    ],
)
def test_resolver_gives_no_group_and_never_raises_for_bad_input(tmp_path, pipeline, note):
    store, resolver, run, _ = resolver_setup(tmp_path, pipeline)
    res = resolver.resolve(run)
    assert (res.group, res.policy) == (None, None) and res.note.startswith(note)
    store.close()


def test_resolver_for_a_commit_that_cannot_be_fetched(tmp_path):
    store, resolver, _, _ = resolver_setup(tmp_path, "steps:\n  - run: x\n")
    run, _ = store.submit(
        Event(repo="app", kind=EventKind.PUSH, ref="refs/heads/gone", sha="ab" * 20)
    )
    res = resolver.resolve(run)
    assert res.group is None and "not found" in res.note
    store.close()


def test_scheduler_with_the_real_resolver_supersedes_by_the_commits_pipeline(tmp_path):
    pipeline = (
        'concurrency: {group: "{branch}", on_new_commit: cancel-pending}\nsteps:\n  - run: x\n'
    )
    store, resolver, first, src = resolver_setup(tmp_path, pipeline)
    sha2 = commit(src, {"a": "1"})
    second, _ = store.submit(
        Event(repo="app", kind=EventKind.PUSH, ref="refs/heads/main", sha=sha2)
    )
    fake = FakeDispatcher(store)
    sched = Scheduler(store, fake, resolver, max_running=2, repo_limits={})
    sched.run_once()
    assert store.get_run(first.id).reason == f"superseded by app#2 ({sha2[:7]})"
    assert fake.dispatched == [second.id]
    store.close()
