"""Workers that execute several runs, one at a time: real `ciwatch worker`
processes, a real repository, real sh and the real store.

What a user relies on: a run is not affected by the run the same worker
executed before it (cwd, environment, umask, signal handlers, logging, the
cancel), a worker is replaced within its bounds, a config reload reaches the
next run, and a worker that dies loses only the run it held."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from daemonutil import Done, wait_for
from gitutil import commit, make_repo

from ciwatch.dispatch import LocalDispatcher
from ciwatch.model import CancelMode, Event, EventKind, RunState
from ciwatch.recovery import recover
from ciwatch.store import Store
from ciwatch.workspace import local_repo_info

ROOT = Path(__file__).resolve().parent.parent

# A worker whose runner misbehaves: at the start of each run it records the
# process state it finds, then changes it (and with LEAK_HARD=1, leaves a
# thread and an open file behind on its first run).
LEAKY_WORKER = """
import json, logging, os, signal, sys, threading
from ciwatch import runner, worker

real = runner.Runner.execute
kept = []

def execute(self, run_id, **kw):
    with open(os.environ["LEAK_RECORD"], "a") as f:
        f.write(json.dumps({
            "pid": os.getpid(), "run": run_id, "cwd": os.getcwd(),
            "env": os.environ.get("LEAKED"), "umask": os.umask(0o077),
            "usr1": repr(signal.getsignal(signal.SIGUSR1)),
            "handlers": len(logging.getLogger("ciwatch").handlers),
            "root_handlers": len(logging.getLogger().handlers),
        }) + "\\n")
    os.chdir(os.environ["LEAK_CWD"])
    os.environ["LEAKED"] = "yes"
    signal.signal(signal.SIGUSR1, lambda *_: None)
    logging.getLogger("ciwatch").addHandler(logging.NullHandler())
    logging.getLogger().addHandler(logging.NullHandler())
    if os.environ.get("LEAK_HARD") and not kept:
        kept.append(open(os.devnull))
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    return real(self, run_id, **kw)

runner.Runner.execute = execute
sys.exit(worker.main(sys.argv[2]))
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class World:
    """A repository whose step runs `script`, a config, the store and a pool."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.src = tmp / "src"
        self.record = tmp / "record.jsonl"
        self.pools: list[LocalDispatcher] = []
        self.store: Store | None = None
        self.procs: list[int] = []

    def setup(self, script: str, daemon: str = "{}") -> None:
        pipeline = "steps:\n  - name: work\n    run: |\n" + "".join(
            f"      {line}\n" for line in script.strip().splitlines()
        )
        self.sha = make_repo(self.src, {".ciwatch.yml": pipeline})
        self.cfg = self.tmp / "ciwatch.yaml"
        self.cfg.write_text(
            f"state_dir: state\nrepos:\n  - name: app\n    path: {self.src}\n"
            f"executor: {{grace: 1s}}\ndaemon: {daemon}\n"
        )
        self.store = Store.open(self.tmp / "state" / "ciwatch.db")
        self.store.ensure_repo("app", local_repo_info(self.src)[0])

    def run(self, n: int = 0):
        sha = commit(self.src, {"n": str(n)}) if n else self.sha
        ev = Event(repo="app", kind=EventKind.PUSH, ref="refs/heads/main", sha=sha)
        return self.store.submit(ev)[0]

    def pool(self, *, leaky: bool = False, spares: int = 1, **env: str) -> tuple:
        done = Done()
        base = {**os.environ, "PYTHONPATH": str(ROOT), "CIWATCH_LEASE_SECONDS": "30", **env}
        base.pop("CIWATCH_CONFIG", None)
        if leaky:
            script = self.tmp / "leaky_worker.py"
            script.write_text(LEAKY_WORKER)
            (self.tmp / "elsewhere").mkdir(exist_ok=True)
            base.update(LEAK_RECORD=str(self.record), LEAK_CWD=str(self.tmp / "elsewhere"))
            argv = [sys.executable, str(script), "-c", str(self.cfg)]
        else:
            argv = [sys.executable, "-m", "ciwatch.worker", "-c", str(self.cfg)]
        pool = LocalDispatcher(argv, spares=spares, env=base, on_done=done, linger=60)
        self.pools.append(pool)
        return pool, done

    def worker_of(self, run_id: int, attempt: int = 0) -> int:
        return int(self.store.attempts(run_id)[attempt].worker.rpartition(":")[2])

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(0, self.store, interrupt_wait=5)
        if self.store is not None:
            self.store.close()
        for pid in self.procs:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


def test_one_worker_executes_runs_one_after_another(world):
    world.setup("echo run $CIWATCH_SHA")
    pool, done = world.pool()
    runs = [world.run(i) for i in range(3)]
    for i, run in enumerate(runs):
        pool.dispatch(run.id)
        assert done.wait(i + 1)[-1] == (run.id, 0)
    assert [world.store.get_run(r.id).state for r in runs] == [RunState.SUCCESS] * 3
    pids = {world.worker_of(r.id) for r in runs}
    assert len(pids) == 1  # the same process took all three
    assert pids <= pool.worker_pids()
    assert pool.idle_count() >= 1


def test_a_run_does_not_see_what_the_previous_run_changed_in_the_worker(world):
    world.setup("echo ok")
    pool, done = world.pool(leaky=True)
    first, second = world.run(), world.run(1)
    pool.dispatch(first.id)
    done.wait(1)
    pool.dispatch(second.id)
    done.wait(2)
    assert [world.store.get_run(r.id).state for r in (first, second)] == [RunState.SUCCESS] * 2
    one, two = world.records()
    assert one["pid"] == two["pid"]  # the same worker: its state was put back
    assert {k: v for k, v in two.items() if k != "run"} == {
        k: v for k, v in one.items() if k != "run"
    }
    assert two["env"] is None and two["cwd"] != str(world.tmp / "elsewhere")


def test_a_worker_that_a_run_left_a_thread_or_file_in_retires(world):
    world.setup("echo ok")
    pool, done = world.pool(leaky=True, LEAK_HARD="1")
    first, second = world.run(), world.run(1)
    pool.dispatch(first.id)
    done.wait(1)
    leaky = world.worker_of(first.id)
    wait_for(lambda: not alive(leaky), what="the worker to retire")
    pool.dispatch(second.id)
    done.wait(2)
    assert world.store.get_run(first.id).state is RunState.SUCCESS
    assert world.store.get_run(second.id).state is RunState.SUCCESS
    assert world.worker_of(second.id) != leaky
    assert pool.idle_count() == 1  # replaced: the spare count holds


@pytest.mark.parametrize("bound", ["{worker_max_runs: 2}", "{worker_max_rss: 1M}"])
def test_a_worker_is_replaced_when_it_reaches_its_bound(world, bound):
    world.setup("true", daemon=bound)
    pool, done = world.pool()
    runs = [world.run(i) for i in range(3)]
    for i, run in enumerate(runs):
        pool.dispatch(run.id)
        done.wait(i + 1)
    assert [world.store.get_run(r.id).state for r in runs] == [RunState.SUCCESS] * 3
    pids = [world.worker_of(r.id) for r in runs]
    if "runs" in bound:
        assert pids[0] == pids[1] != pids[2]
    else:  # 1 MiB: every worker is over it after its first run
        assert len(set(pids)) == 3
    wait_for(lambda: not alive(pids[0]), what="the retired worker to exit")
    wait_for(lambda: pool.idle_count() >= 1, what="a spare")


def test_an_idle_worker_retires_after_max_idle_and_is_replaced(world):
    world.setup("true", daemon="{worker_max_idle: 1s}")
    pool, done = world.pool()
    first = pool.worker_pids()
    wait_for(lambda: pool.worker_pids().isdisjoint(first), what="the idle worker's replacement")
    wait_for(lambda: not any(alive(p) for p in first), what="the idle worker to exit")
    wait_for(lambda: pool.idle_count() == 1, what="one spare again")
    run = world.run()
    pool.dispatch(run.id)
    assert done.wait(1) == [(run.id, 0)]
    assert world.store.get_run(run.id).state is RunState.SUCCESS


def test_after_a_reload_the_next_run_gets_a_worker_with_the_new_environment(world):
    world.setup("sleep 0.5")
    pool, done = world.pool()
    first, second = world.run(), world.run(1)
    pool.dispatch(first.id)
    wait_for(lambda: world.store.get_run(first.id).state is RunState.RUNNING, what="claim")
    old = world.worker_of(first.id)
    pool.update_env({"CIWATCH_RELOADED": "1"})
    done.wait(1)
    wait_for(lambda: not alive(old), what="the old worker to retire after its run")
    pool.dispatch(second.id)
    done.wait(2)
    new = world.worker_of(second.id)
    assert new != old
    environ = (Path("/proc") / str(new) / "environ").read_bytes().split(b"\0")
    assert b"CIWATCH_RELOADED=1" in environ
    assert world.store.get_run(second.id).state is RunState.SUCCESS


def test_a_cancel_does_not_carry_over_to_the_next_run(world):
    flag = world.tmp / "started"
    world.setup(
        f'if [ "$CIWATCH_SHA" = "$(cat {flag}.sha 2>/dev/null)" ]; then exit 0; fi\n'
        f"touch {flag}\nsleep 30"
    )
    pool, done = world.pool()
    first = world.run()
    second = world.run(1)
    (world.tmp / "started.sha").write_text(second.sha)  # the second run ends at once
    pool.dispatch(first.id)
    wait_for(flag.exists, what="the first step")
    world.store.request_cancel(first.id, "stopped by a user", CancelMode.CANCEL)
    done.wait(1)
    assert world.store.get_run(first.id).state is RunState.CANCELED
    pool.dispatch(second.id)
    done.wait(2)
    assert world.worker_of(second.id) == world.worker_of(first.id)
    final = world.store.get_run(second.id)
    assert final.state is RunState.SUCCESS, final.reason


def test_a_reused_worker_killed_mid_run_loses_only_that_run(world):
    pidfile = world.tmp / "step.pid"
    world.setup(
        f'if [ "$CIWATCH_SHA" = "$(cat {pidfile}.sha)" ]; then\n'
        f"  echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}; sleep 30\nfi",
        daemon="{lease: 1s}",
    )
    pool, done = world.pool(CIWATCH_LEASE_SECONDS="1")
    first, second = world.run(), world.run(1)
    (world.tmp / "step.pid.sha").write_text(second.sha)
    pool.dispatch(first.id)
    done.wait(1)
    pool.dispatch(second.id)
    wait_for(pidfile.exists, what="the second run's step")
    world.procs.append(int(pidfile.read_text()))
    worker = world.worker_of(second.id)
    assert worker == world.worker_of(first.id)
    os.kill(worker, signal.SIGKILL)
    assert done.wait(2)[-1] == (second.id, -signal.SIGKILL)
    assert world.store.get_run(first.id).state is RunState.SUCCESS  # untouched
    did: list[str] = []
    wait_for(lambda: did.extend(recover(world.store, max_attempts=3)) or did, 10, what="expiry")
    assert world.store.get_run(second.id).state is RunState.QUEUED
    wait_for(lambda: pool.idle_count() >= 1, what="a spare")
