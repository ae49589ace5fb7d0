"""The worker pool with real `ciwatch worker` processes, a real repository,
real sh and the real store: a run dispatched, a worker killed mid-step and
the run recovered, a stop that interrupts a long step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemonutil import Done, wait_for
from gitutil import commit, make_repo

from ciwatch.config import read_config
from ciwatch.dispatch import LocalDispatcher
from ciwatch.model import Event, EventKind, RunState
from ciwatch.pipeline.plan import Limits
from ciwatch.recovery import recover
from ciwatch.resolve import Resolver
from ciwatch.scheduler import Scheduler
from ciwatch.store import Store
from ciwatch.worker import worker_env
from ciwatch.workspace import Mirrors, local_repo_info

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def world(tmp_path):
    """A repository whose one step runs `script`, a config and the store."""
    procs: list[int] = []

    def build(script: str, *, lease: str = "30"):
        src = tmp_path / "src"
        pipeline = "steps:\n  - name: work\n    run: |\n" + "".join(
            f"      {line}\n" for line in script.strip().splitlines()
        )
        sha = make_repo(src, {".ciwatch.yml": pipeline})
        cfg = tmp_path / "ciwatch.yaml"
        cfg.write_text(
            f"state_dir: state\nrepos:\n  - name: app\n    path: {src}\nexecutor: {{grace: 1s}}\n"
        )
        store = Store.open(tmp_path / "state" / "ciwatch.db")
        store.ensure_repo("app", local_repo_info(src)[0])
        run, _ = store.submit(
            Event(repo="app", kind=EventKind.PUSH, ref="refs/heads/main", sha=sha)
        )
        done = Done()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("CIWATCH_CONFIG", None)
        env["CIWATCH_LEASE_SECONDS"] = lease  # as the daemon passes its `daemon.lease`
        pool = LocalDispatcher(
            [sys.executable, "-m", "ciwatch", "worker", "-c", str(cfg)],
            spares=1,
            env=env,
            on_done=done,
            linger=0.5,
        )
        opened.append((store, pool))
        return store, pool, run, done

    opened: list = []
    yield build, procs, tmp_path
    for store, pool in opened:
        pool.shutdown(0, store, interrupt_wait=5)
        store.close()
    for pid in procs:  # step processes orphaned by a killed worker, by recorded pid
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_dispatched_run_is_executed_by_a_warm_worker(world):
    build, _, _ = world
    store, pool, run, done = build("echo hello from the worker")
    assert pool.idle_count() == 1  # started ahead of any run
    pool.dispatch(run.id)
    assert pool.in_flight() == {run.id}
    assert done.wait(1) == [(run.id, 0)]
    final = store.get_run(run.id)
    assert final.state is RunState.SUCCESS, final.reason
    assert [s.state.value for s in store.steps(run.id)] == ["success"]
    assert pool.in_flight() == set()
    [attempt] = store.attempts(run.id)
    worker_pid = int(attempt.worker.rpartition(":")[2])
    # The worker waits for the next run beside the spare started at the
    # dispatch; after `linger` one of them retires: `spares` stay idle.
    assert worker_pid in pool.worker_pids()
    wait_for(lambda: pool.idle_count() == 1 and len(pool.worker_pids()) == 1, what="trim")


def test_a_worker_killed_mid_step_is_recovered_and_the_run_retried(world):
    build, procs, tmp = world
    marker, pidfile = tmp / "tried", tmp / "step.pid"
    store, pool, run, done = build(
        f"if [ -e {marker} ]; then echo second try; exit 0; fi\n"
        f"touch {marker}\necho $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}\nsleep 30",
        lease="1",
    )
    pool.dispatch(run.id)
    wait_for(pidfile.exists, what="the step to start")
    procs.append(int(pidfile.read_text()))
    [first] = store.attempts(run.id)
    worker_pid = int(first.worker.rpartition(":")[2])
    os.kill(worker_pid, signal.SIGKILL)
    assert done.wait(1) == [(run.id, -signal.SIGKILL)]
    assert store.get_run(run.id).state is RunState.RUNNING  # until its lease runs out

    did: list[str] = []
    wait_for(lambda: did.extend(recover(store, max_attempts=3)) or did, 10, what="lease expiry")
    requeued = store.get_run(run.id)
    assert requeued.state is RunState.QUEUED
    assert requeued.reason == "worker lost (attempt 1): lease expired"

    pool.dispatch(run.id)
    done.wait(2)
    final = store.get_run(run.id)
    assert final.state is RunState.SUCCESS, final.reason
    assert [a.number for a in store.attempts(run.id)] == [1, 2]
    setup = (tmp / "state" / "runs" / str(run.id) / "a2" / "setup.log").read_bytes()
    assert b"attempt 2 (earlier attempts were lost)" in setup


def test_shutdown_interrupts_a_long_step_and_requeues_its_run(world):
    build, procs, tmp = world
    pidfile = tmp / "step.pid"
    store, pool, run, done = build(
        f"echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}\nsleep 30"
    )
    pool.dispatch(run.id)
    wait_for(pidfile.exists, what="the step to start")
    step_pid = int(pidfile.read_text())
    procs.append(step_pid)
    started = time.monotonic()
    left = pool.shutdown(0.3, store, interrupt_wait=15)
    assert left == []
    assert time.monotonic() - started < 10
    final = store.get_run(run.id)
    assert final.state is RunState.QUEUED
    assert final.reason == "interrupted: the daemon is stopping"
    assert final.cancel_requested is None  # cleared: the next start runs it afresh
    assert [a.state for a in store.attempts(run.id)] == [RunState.ERROR]
    assert done.wait(1) == [(run.id, 0)]
    with pytest.raises(ProcessLookupError):
        os.kill(step_pid, 0)  # the step was stopped, not left behind


def test_a_worker_that_cannot_start_leaves_the_run_queued(world, tmp_path):
    build, _, _ = world
    store, pool, run, done = build("true")
    pool.shutdown(0, store)
    broken = LocalDispatcher(
        [sys.executable, "-c", "import sys; sys.exit(3)"], spares=0, on_done=done
    )
    broken.dispatch(run.id)
    assert done.wait(1) == [(run.id, 3)]
    assert store.get_run(run.id).state is RunState.QUEUED
    assert broken.shutdown(0, store) == []


def test_idle_spares_exit_quietly_at_shutdown(world):
    build, _, _ = world
    store, pool, run, done = build("true")
    pool.spares = 2
    pool.refresh_spares()
    assert pool.idle_count() == 2
    assert pool.shutdown(5, store) == []
    assert done.seen == []  # no run was given to them
    assert store.get_run(run.id).state is RunState.QUEUED


@pytest.mark.parametrize("given,rc", [("", 0), ("not-a-run\n", 1), ("999\n", 1)])
def test_the_worker_command_reads_one_run_id(world, given, rc):
    build, _, tmp = world
    build("true")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "ciwatch", "worker", "-c", str(tmp / "ciwatch.yaml")],
        input=given,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert out.returncode == rc, out.stderr
    assert (out.stderr == "") is (rc == 0)
    if given.startswith("999"):
        assert "no run 999" in out.stderr


def test_a_worker_stopped_with_sigterm_puts_its_run_back_in_the_queue(world):
    build, procs, tmp = world
    pidfile = tmp / "step.pid"
    store, pool, run, done = build(
        f"echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}\nsleep 30"
    )
    pool.dispatch(run.id)
    wait_for(pidfile.exists, what="the step to start")
    procs.append(int(pidfile.read_text()))
    [attempt] = store.attempts(run.id)
    os.kill(int(attempt.worker.rpartition(":")[2]), signal.SIGTERM)
    assert done.wait(1) == [(run.id, 0)]
    final = store.get_run(run.id)
    assert final.state is RunState.QUEUED
    assert final.reason == "interrupted: the worker was stopped (SIGTERM)"


def test_scheduler_and_pool_run_a_branch_in_order(world):
    build, _, tmp = world
    order = tmp / "order"
    store, pool, first, done = build(f"echo $CIWATCH_SHA >> {order}\nsleep 0.3")
    src = tmp / "src"
    pipeline = (src / ".ciwatch.yml").read_text()
    (src / ".ciwatch.yml").write_text("concurrency: {on_new_commit: queue}\n" + pipeline)
    shas = [commit(src, {"n": str(i)}) for i in range(2)]
    runs = [first] + [
        store.submit(Event(repo="app", kind=EventKind.PUSH, ref="refs/heads/main", sha=s))[0]
        for s in shas
    ]
    resolver = Resolver(store, Mirrors(tmp / "state"), limits=Limits())
    sched = Scheduler(store, pool, resolver, max_running=3, repo_limits={})
    pool.on_done = lambda run_id, rc: (done(run_id, rc), sched.wake())
    sched.start()
    try:
        done.wait(3)
    finally:
        sched.stop()
    assert [store.get_run(r.id).state for r in runs] == [RunState.SUCCESS] * 3
    # the first commit has no group (runs whenever); the two with `queue` ran in
    # order, one after the other
    assert [s for s in order.read_text().split() if s in shas] == shas
    second, third = (store.get_run(r.id) for r in runs[1:])
    assert third.started_at >= second.finished_at


def test_workers_run_with_the_config_the_daemon_accepted_not_the_file(world):
    build, _, tmp = world
    store, pool, run, done = build("echo ok")
    cfg = tmp / "ciwatch.yaml"
    config, base = read_config(cfg)
    cfg.write_text("concurrency: [oops\n")  # edited, not (or not successfully) reloaded
    pool.update_env(worker_env(config, base))
    pool.dispatch(run.id)
    assert done.wait(1) == [(run.id, 0)]
    assert store.get_run(run.id).state is RunState.SUCCESS
