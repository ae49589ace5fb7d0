"""Retention against a real store, real files in a tmp state directory, the real
`ciwatch gc` and `ciwatch logs` commands, a real HTTP server for the log API
and a real daemon that prunes at start."""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from daemonutil import DaemonProc, cli, wait_for

from ciwatch.config import parse_config
from ciwatch.errors import ConfigError
from ciwatch.logs import StepLog
from ciwatch.masking import Masker
from ciwatch.model import Event, EventKind, Run, RunState, StepResult, StepState
from ciwatch.retention import Retention
from ciwatch.retentionpolicy import RetentionPolicy
from ciwatch.store import Store
from ciwatch.web.live import ChangeSignal
from ciwatch.web.logapi import log_router
from ciwatch.web.server import WebServer, create_app

DAY = 86400.0
NOW = time.time()
_shas = itertools.count(1)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class State:
    root: Path
    store: Store
    clock: Clock

    def repo_id(self, name: str) -> int:
        return self.store.get_repo(name).id

    def run(
        self,
        state: RunState,
        *,
        age_days: float = 0.0,
        repo: str = "app",
        files: bool = True,
    ) -> Run:
        """A run in `state`, created (and finished) `age_days` ago, with its
        log, artifact and workspace directories."""
        self.clock.now = NOW - age_days * DAY
        sha = f"{next(_shas):040x}"
        run, _ = self.store.submit(
            Event(repo=repo, kind=EventKind.PUSH, ref="refs/heads/main", sha=sha, source="hook")
        )
        if state is not RunState.QUEUED:
            attempt = self.store.start_attempt(run.id, "w", 60)
            if files:
                self._files(run, attempt.number)
            if state is not RunState.RUNNING:
                self.store.finish_run(run.id, state, "", attempt_id=attempt.id)
        self.clock.now = NOW
        return self.store.get_run(run.id)

    def _files(self, run: Run, attempt: int) -> None:
        adir = self.root / "runs" / str(run.id) / f"a{attempt}"
        adir.mkdir(parents=True, exist_ok=True)
        (adir / "setup.log").write_text("setup\n")
        log = adir / "0-0.log"
        writer = StepLog(log, Masker([]), 1 << 20, time.time)
        writer.write(b"compiling main.c\n" * 300)
        writer.close()
        step = self.store.start_step(run.id, attempt, "", 0, "build", str(log))
        self.store.finish_step(step, StepResult(state=StepState.SUCCESS, exit_code=0))
        art = self.root / "artifacts" / str(run.id) / "0-0" / "out.bin"
        art.parent.mkdir(parents=True, exist_ok=True)
        art.write_bytes(b"a" * 3000)
        self.store.add_artifact(run.id, step, "out.bin", 3000, str(art))
        ws = self.workspace(run, attempt) / "cell0" / "src"
        ws.mkdir(parents=True, exist_ok=True)
        (ws / "main.c").write_text("int main;\n")

    def workspace(self, run: Run, attempt: int = 1) -> Path:
        return self.root / "workspaces" / str(run.repo_id) / f"{run.number}-{attempt}"

    def logs(self, run: Run) -> Path:
        return self.root / "runs" / str(run.id)

    def artifacts(self, run: Run) -> Path:
        return self.root / "artifacts" / str(run.id)

    def prune(self, dry_run: bool = False, **policy) -> object:
        return Retention(
            self.store,
            self.root,
            RetentionPolicy(**policy),
            now=lambda: NOW,
            log=logging.getLogger("test.retention"),
            dry_run=dry_run,
        ).run()


@pytest.fixture
def st(tmp_path: Path):
    root = tmp_path / "state"
    clock = Clock(NOW)
    store = Store.open(root / "ciwatch.db", clock=clock)
    for name in ("app", "lib"):
        store.ensure_repo(name, f"/srv/git/{name}.git")
    yield State(root, store, clock)
    store.close()


def all_there(st: State, run: Run) -> bool:
    return st.logs(run).is_dir() and st.artifacts(run).is_dir() and st.workspace(run).is_dir()


def none_there(st: State, run: Run) -> bool:
    return not (st.logs(run).exists() or st.artifacts(run).exists() or st.workspace(run).exists())


def test_runs_beyond_the_count_go_oldest_first_with_their_files(st: State):
    old = [st.run(RunState.FAILURE, age_days=5 - i) for i in range(4)]
    lib = st.run(RunState.SUCCESS, repo="lib")
    newest = st.run(RunState.SUCCESS)

    report = st.prune(runs=2)

    assert report.runs == 3
    for run in old[:3]:
        with pytest.raises(Exception, match="no run"):
            st.store.get_run(run.id)
        assert none_there(st, run), run.label
    for run in (old[3], newest, lib):
        assert st.store.get_run(run.id).state.finished
        assert all_there(st, run), run.label
    assert report.freed >= 3 * (5100 + 3000)
    assert "3 runs" in report.summary() and "freed" in report.summary()
    assert st.prune(runs=2).runs == 0  # nothing left to do


def test_old_logs_are_removed_and_the_record_says_so(st: State):
    old = st.run(RunState.SUCCESS, age_days=40)
    recent = st.run(RunState.FAILURE, age_days=10)

    report = st.prune(log_days=30, workspace_days=100)

    assert report.logs == 1 and report.runs == 0
    kept = st.store.get_run(old.id)
    assert kept.state is RunState.SUCCESS  # the record stays
    assert st.store.logs_removed(old.id) == "log removed by retention (older than 30 days)"
    assert not st.logs(old).exists() and not st.artifacts(old).exists()
    assert st.store.artifacts(old.id) == []
    assert [s.name for s in st.store.steps(old.id)] == ["build"]
    assert st.workspace(old).is_dir()  # workspaces follow workspace_days
    assert st.store.logs_removed(recent.id) is None and all_there(st, recent)
    assert st.store.artifacts(recent.id)


def test_ciwatch_logs_says_the_log_was_removed_by_retention(st: State, tmp_path: Path):
    run = st.run(RunState.SUCCESS, age_days=40)
    config = tmp_path / "ciwatch.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(st.root)}))
    before = cli("logs", run.label, "-c", str(config))
    assert before.returncode == 0 and "compiling main.c" in before.stdout, before.stderr

    st.prune(log_days=30)

    after = cli("logs", run.label, "-c", str(config))
    assert after.returncode == 0, after.stderr
    assert f"{run.label}: log removed by retention (older than 30 days)" in after.stdout
    assert "── build (success) ──" in after.stdout and "compiling" not in after.stdout


def test_the_log_api_answers_410_for_removed_logs(st: State):
    old = st.run(RunState.SUCCESS, age_days=40)
    fresh = st.run(RunState.SUCCESS, age_days=1)
    st.prune(log_days=30)
    changes = ChangeSignal(st.store.path, min_interval=0.02)
    app = create_app(log_router(st.store.get_step, changes.version, removed=st.store.logs_removed))
    server = WebServer(app, "127.0.0.1", 0)
    server.start()
    try:
        old_step = st.store.steps(old.id)[0].id
        for path in ("log", "log/lines", "log/stream"):
            resp = requests.get(f"{server.url}/api/steps/{old_step}/{path}", timeout=10)
            assert resp.status_code == 410, (path, resp.text)
            assert resp.json()["detail"] == "log removed by retention (older than 30 days)"
        fresh_step = st.store.steps(fresh.id)[0].id
        resp = requests.get(f"{server.url}/api/steps/{fresh_step}/log", timeout=10)
        assert resp.status_code == 200 and resp.text == "compiling main.c\n" * 300
    finally:
        server.stop()
        changes.close()


def test_kept_workspaces_go_after_workspace_days(st: State):
    stale = st.run(RunState.FAILURE, age_days=4)
    fresh = st.run(RunState.FAILURE, age_days=1)

    report = st.prune(workspace_days=3)

    assert report.workspaces == 1
    assert not st.workspace(stale).exists() and st.workspace(fresh).is_dir()
    assert st.logs(stale).is_dir()  # logs follow log_days
    assert "1 workspace," in report.summary()


def test_nothing_of_a_queued_or_running_run_is_ever_removed(st: State):
    queued = st.run(RunState.QUEUED, age_days=100)
    queued_ws = st.workspace(queued) / "src"  # left by a lost attempt, say
    queued_ws.mkdir(parents=True)
    (st.logs(queued) / "a1").mkdir(parents=True)
    running = st.run(RunState.RUNNING, age_days=100)
    # A lost first attempt, a second one running: both attempts' files stay.
    st.store.requeue(running.id, "worker lost")
    second = st.store.start_attempt(running.id, "w2", 60)
    st._files(running, second.number)
    finished = [st.run(RunState.FAILURE, age_days=90 - i) for i in range(3)]

    report = st.prune(runs=1, log_days=1, workspace_days=1, rejected_days=1)

    assert report.runs == 2 and report.logs == 1
    assert queued_ws.is_dir() and (st.logs(queued) / "a1").is_dir()
    assert st.store.get_run(queued.id).state is RunState.QUEUED
    assert all_there(st, running) and st.workspace(running, 2).is_dir()
    assert (st.logs(running) / "a2" / "0-0.log").is_file()
    assert st.store.logs_removed(running.id) is None
    assert st.store.get_run(running.id).state is RunState.RUNNING
    assert none_there(st, finished[0]) and none_there(st, finished[1])


def test_orphans_are_removed_and_what_a_future_run_may_own_is_not(st: State):
    runs = [st.run(RunState.SUCCESS) for _ in range(4)]
    gone = runs[1]
    assert st.store.delete_run(gone.id)
    rid = st.repo_id("app")
    future_logs = st.root / "runs" / str(runs[-1].id + 1)  # the next run's id
    future_ws = st.root / "workspaces" / str(rid) / f"{runs[-1].number + 1}-1"
    unknown_repo = st.root / "workspaces" / "77" / "1-1"
    foreign = st.root / "runs" / "notes"
    for d in (future_logs, future_ws, unknown_repo, foreign):
        d.mkdir(parents=True)

    report = st.prune()

    assert report.orphans == 3  # its logs, artifacts and workspace
    assert none_there(st, gone)
    for d in (future_logs, future_ws, unknown_repo, foreign):
        assert d.is_dir(), d
    for run in runs[:1] + runs[2:]:
        assert all_there(st, run)


def test_cached_checkouts_of_repos_gone_from_the_config(st: State):
    for name in ("old", "busy"):
        st.store.ensure_repo(name, f"/srv/git/{name}.git")
    caches = {}
    for name in ("app", "old", "busy"):
        base = st.root / "cache" / str(st.repo_id(name))
        (base / "0" / "src").mkdir(parents=True)
        (base / "0" / "src" / "big").write_bytes(b"b" * 20000)
        (base / "0.lock").touch()
        caches[name] = base
    st.run(RunState.SUCCESS, repo="lib")  # configured or not, lib has no cache
    held = os.open(caches["busy"] / "0.lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # a run is using busy's slot 0
    try:
        report = st.prune(repos=frozenset({"app"}))
    finally:
        os.close(held)

    assert report.caches == 1
    assert not caches["old"].exists()
    assert caches["app"].is_dir() and caches["busy"].is_dir()
    assert not list((st.root / "cache").glob(".gc-*"))
    assert st.prune(repos=frozenset({"app"})).caches == 1  # busy, now free


def test_mirrors_of_repos_gone_from_the_config(st: State):
    for name in ("old", "busy"):
        st.store.ensure_repo(name, f"/srv/git/{name}.git")
    mirrors = st.root / "mirrors"
    paths = {}
    for name in ("app", "old", "busy"):
        path = mirrors / f"{st.repo_id(name)}.git"
        (path / "objects" / "pack").mkdir(parents=True)
        (path / "objects" / "pack" / "p.pack").write_bytes(b"p" * 20000)
        paths[name] = path
    held = os.open(mirrors / f"{st.repo_id('busy')}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)  # a fetch into busy's mirror is running
    try:
        assert st.prune(repos=frozenset({"app"}), dry_run=True).mirrors == 1
        assert paths["old"].is_dir()  # a dry run removes nothing
        report = st.prune(repos=frozenset({"app"}))
    finally:
        os.close(held)

    assert report.mirrors == 1 and "1 mirror" in report.summary()
    assert not paths["old"].exists()
    assert paths["app"].is_dir() and paths["busy"].is_dir()
    assert not list(mirrors.glob(".gc-*"))
    assert st.prune(repos=frozenset({"app"})).mirrors == 1  # busy, now free
    assert st.prune().mirrors == 0  # the configured repositories unknown: keep them all


def test_old_rejected_spool_files_go(st: State):
    rejected = st.root / "spool" / "rejected"
    rejected.mkdir(parents=True)
    old, reason, new = (rejected / n for n in ("1-1.push", "1-1.push.reason", "2-1.push"))
    for f in (old, reason, new):
        f.write_text("junk\n")
    for f in (old, reason):
        os.utime(f, (NOW - 20 * DAY, NOW - 20 * DAY))

    report = st.prune(rejected_days=14)

    assert report.rejected == 1
    assert not old.exists() and not reason.exists() and new.is_file()


def test_a_symlink_in_a_workspace_is_removed_not_its_target(st: State, tmp_path: Path):
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    secret = outside / "secret.txt"
    secret.write_text("keep me")
    (outside / "dir" / "file").write_text("keep me too")
    run = st.run(RunState.FAILURE, age_days=10)
    src = st.workspace(run) / "cell0" / "src"
    (src / "out").symlink_to(outside)
    (src / "sec").symlink_to(secret)
    (src / "dir-link").symlink_to(outside / "dir")
    (src / "loop").symlink_to(src / "loop")
    st.workspace(run).parent.joinpath("9999-1").symlink_to(outside)  # not ours: a link

    report = st.prune(workspace_days=3)

    assert report.workspaces == 1 and not st.workspace(run).exists()
    assert secret.read_text() == "keep me"
    assert (outside / "dir" / "file").read_text() == "keep me too"
    assert st.workspace(run).parent.joinpath("9999-1").is_symlink()


def test_ciwatch_gc_dry_run_removes_nothing_then_gc_does(st: State, tmp_path: Path):
    runs = [st.run(RunState.FAILURE, age_days=50 - i) for i in range(3)]
    config = tmp_path / "ciwatch.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(st.root), "retention": {"runs": 1}}))

    dry = cli("gc", "--dry-run", "-c", str(config))

    assert dry.returncode == 0, dry.stderr
    assert f"would remove run {runs[0].label} (beyond the newest 1)" in dry.stdout
    assert "gc (dry run): 2 runs, 1 run's logs, 1 workspace," in dry.stdout
    for run in runs:
        assert all_there(st, run) and st.store.get_run(run.id)
    assert st.store.logs_removed(runs[2].id) is None

    real = cli("gc", "-c", str(config))

    assert real.returncode == 0, real.stderr
    assert f"removed run {runs[0].label}" in real.stdout
    assert "gc: 2 runs, 1 run's logs, 1 workspace," in real.stdout
    assert none_there(st, runs[0]) and none_there(st, runs[1])
    assert st.store.logs_removed(runs[2].id)


def test_retention_settings_are_validated_with_clear_errors():
    doc = b"retention:\n  runs: 0\n  workspace_days: soon\n  rejected_dayz: 3\n"
    with pytest.raises(ConfigError) as err:
        parse_config(doc, "ciwatch.yaml")
    text = str(err.value)
    assert "ciwatch.yaml:2: retention.runs: must be greater than 0, got 0" in text
    assert "ciwatch.yaml:3: retention.workspace_days: expected an integer" in text
    assert "did you mean 'rejected_days'?" in text
    r = parse_config(b"{}", "c.yaml").retention
    assert (r.runs, r.log_days, r.workspace_days, r.rejected_days) == (1000, 30, 3, 14)


def test_the_daemon_prunes_at_start(tmp_path: Path):
    root = tmp_path / "state"
    clock = Clock(NOW)
    store = Store.open(root / "ciwatch.db", clock=clock)
    store.ensure_repo("app", "/srv/git/app.git")
    st = State(root, store, clock)
    runs = [st.run(RunState.SUCCESS, age_days=42 - i) for i in range(3)]
    store.close()
    daemon = DaemonProc(tmp_path, {"retention": {"runs": 1}})
    daemon.start()
    try:
        wait_for(lambda: len(daemon.runs()) == 1, 30, 0.1, what="the old runs pruned")
        line = "retention: 2 runs, 1 run's logs, 1 workspace,"
        wait_for(lambda: line in daemon.log.read_text(), 10, 0.1, what=line)
        assert none_there(st, runs[0]) and none_there(st, runs[1]) and none_there(st, runs[2])
        # The kept run's log, followed through the daemon's API: a 410, said plainly.
        out = daemon.cli("logs", runs[2].label, "--follow")
        assert out.returncode == 0, out.stderr
        assert "log removed by retention (older than 30 days)" in out.stdout
    finally:
        assert daemon.stop() == 0
