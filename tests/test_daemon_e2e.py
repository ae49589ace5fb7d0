"""The daemon end to end: a real `ciwatch serve`, real pushes through the real
hook, real workers, real SQLite; crashes injected with kill -9."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from daemonutil import DaemonProc, cli, wait_for
from gitdaemon import GitDaemon
from gitutil import commit, git, make_repo

from ciwatch.model import RunState

PIPE = "steps:\n  - name: build\n    run: echo built $CIWATCH_SHA on $CIWATCH_BRANCH\n"


def setup_repo(tmp: Path, pipeline: str = PIPE, name: str = "app") -> tuple[Path, Path]:
    """A bare repository with one commit pushed, and a work tree to push from."""
    bare, work = tmp / f"{name}.git", tmp / f"{name}-work"
    git(tmp, "init", "-q", "--bare", "-b", "main", str(bare))
    make_repo(work, {".ciwatch.yml": pipeline})
    git(work, "push", "-q", str(bare), "HEAD:refs/heads/main")
    return bare, work


def push(work: Path, bare: Path, ref: str = "refs/heads/main", files: dict | None = None) -> str:
    sha = commit(work, files or {"n.txt": str(time.monotonic_ns())})
    git(work, "push", "-q", "-f", str(bare), f"HEAD:{ref}")
    return sha


def install_hook(d: DaemonProc, bare: Path, name: str = "app") -> None:
    out = d.cli("install-hook", str(bare), "--name", name)
    assert out.returncode == 0, out.stderr


@pytest.fixture
def leftovers():
    """Fails the test if a step process (marked by its argv) outlives it."""
    marker = f"ciwatch-test-{os.getpid()}-{time.monotonic_ns()}"
    yield marker

    def alive() -> list[str]:
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if marker.encode() in cmd:
                    found.append(pid)
        return found

    wait_for(lambda: not alive(), 15, what="step processes to be gone")


def test_a_push_through_the_hook_is_built_once(tmp_path):
    bare, work = setup_repo(tmp_path)
    d = DaemonProc(tmp_path, {"repos": [{"name": "app", "path": str(bare)}]})
    install_hook(d, bare)
    d.start()
    try:
        sha = push(work, bare)
        [run] = d.wait_runs_finished(1)
        assert (run.state, run.sha, run.ref) == (RunState.SUCCESS, sha, "refs/heads/main")
        why = d.cli("why", "app", sha[:10])
        assert "seen by:" in why.stdout and "app#1" in why.stdout, why.stdout + why.stderr
        status = d.cli("status", "--json")
        assert status.returncode == 0, status.stderr
    finally:
        assert d.stop() == 0, d.log.read_text()[-3000:]


def test_pushes_while_the_daemon_is_down_are_each_built_once(tmp_path):
    bare, work = setup_repo(tmp_path)
    d = DaemonProc(tmp_path, {"concurrency": 4, "repos": [{"name": "app", "path": str(bare)}]})
    install_hook(d, bare)
    shas = {}
    for i in range(25):
        ref = f"refs/heads/b{i}"
        shas[ref] = push(work, bare, ref)
    d.start()
    try:
        runs = d.wait_runs_finished(25, timeout=120)
        assert sorted((r.ref, r.sha) for r in runs) == sorted(shas.items())
        assert all(r.state is RunState.SUCCESS for r in runs)
    finally:
        d.stop()


def test_the_same_push_seen_by_hook_watcher_and_poller_makes_one_run(tmp_path):
    bare, work = setup_repo(tmp_path)
    repo = {"name": "app", "path": str(bare), "poll": True, "poll_interval": "1s"}
    d = DaemonProc(tmp_path, {"repos": [repo]})
    install_hook(d, bare)
    d.start()
    try:
        sha = push(work, bare)
        d.wait_runs_finished(1)
        time.sleep(2.5)  # let the poller see it too
        runs = d.runs()
        assert len(runs) == 1 and runs[0].sha == sha
        s = d.store()
        [(event_id, _, _)] = s.find_events("app", sha_prefix=sha)
        sources = {x.source for x in s.sightings(event_id)}
        s.close()
        assert {"hook", "watch"} <= sources or {"hook", "poll"} <= sources, sources
    finally:
        d.stop()


def test_a_second_daemon_on_the_same_state_refuses(tmp_path):
    bare, _ = setup_repo(tmp_path)
    d = DaemonProc(tmp_path, {"repos": [{"name": "app", "path": str(bare)}]}).start()
    try:
        out = cli("serve", "-c", str(d.config_path), timeout=30)
        assert out.returncode != 0 and "another ciwatch daemon" in out.stderr
    finally:
        d.stop()


def test_an_invalid_config_lists_every_problem_and_exits(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("concurrency: lots\nrepos:\n  - {name: app}\n")
    out = cli("serve", "-c", str(cfg))
    assert out.returncode == 2
    assert "bad.yaml:1: concurrency" in out.stderr and "bad.yaml:3: repos[0]" in out.stderr


def test_sighup_reload_adds_repos_and_refuses_a_bad_config(tmp_path):
    bare, work = setup_repo(tmp_path)
    bare2, work2 = setup_repo(tmp_path, name="lib")
    d = DaemonProc(tmp_path, {"repos": [{"name": "app", "path": str(bare)}]}).start()
    try:
        good = d.config_path.read_text()
        d.config_path.write_text(good.replace("repos:", f"repos:\n- name: lib\n  path: {bare2}"))
        d.signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in d.log.read_text(), 10)
        sha = push(work2, bare2)
        [run] = d.wait_runs_finished(1, repo="lib")
        assert run.sha == sha and run.state is RunState.SUCCESS
        d.config_path.write_text("concurrency: [oops\n")
        d.signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in d.log.read_text(), 10)
        sha = push(work, bare)  # still serving with the old config
        wait_for(lambda: any(r.sha == sha and r.state.finished for r in d.runs("app")), 30)
    finally:
        d.config_path.write_text(good)
        d.stop()


def test_kill_9_after_the_event_is_stored_loses_nothing(tmp_path):
    bare, work = setup_repo(tmp_path)
    d = DaemonProc(tmp_path, {"repos": [{"name": "app", "path": str(bare)}]})
    install_hook(d, bare)
    d.start(env={"CIWATCH_FAULT": "after-event-stored"})
    sha = push(work, bare)
    wait_for(lambda: d.proc.poll() is not None, 20, what="the injected crash")
    assert d.proc.returncode == 137
    d.start()
    try:
        [run] = d.wait_runs_finished(1)
        assert run.sha == sha and run.state is RunState.SUCCESS
        time.sleep(1)
        assert len(d.runs()) == 1  # the spool file seen again was a duplicate
    finally:
        d.stop()


def test_a_worker_lost_while_claiming_is_retried_as_attempt_2(tmp_path):
    bare, work = setup_repo(tmp_path)
    d = DaemonProc(
        tmp_path,
        {"daemon": {"lease": "2s"}, "repos": [{"name": "app", "path": str(bare)}]},
        env={"CIWATCH_FAULT": "after-claim"},
    )
    install_hook(d, bare)
    d.start()
    try:
        push(work, bare)
        # every worker dies right after claiming: attempts run out, the run ends error
        [run] = d.wait_runs_finished(1, timeout=60)
        assert run.state is RunState.ERROR and "worker lost" in run.reason
        assert run.attempts == 3
    finally:
        d.stop()


def test_kill_9_of_the_daemon_during_a_step_does_not_kill_the_build(tmp_path, leftovers):
    pipeline = f"steps:\n  - run: sleep 2 # {leftovers}\n"
    bare, work = setup_repo(tmp_path, pipeline)
    d = DaemonProc(tmp_path, {"repos": [{"name": "app", "path": str(bare)}]})
    install_hook(d, bare)
    d.start()
    push(work, bare)
    wait_for(lambda: any(r.state is RunState.RUNNING for r in d.runs()), 30)
    d.kill9()
    d.start()
    try:
        [run] = d.wait_runs_finished(1, timeout=60)
        assert run.state is RunState.SUCCESS and run.attempts == 1
    finally:
        d.stop()


def test_sigterm_lets_a_step_finish_within_the_grace(tmp_path, leftovers):
    pipeline = f"steps:\n  - run: sleep 1.5 # {leftovers}\n"
    bare, work = setup_repo(tmp_path, pipeline)
    d = DaemonProc(
        tmp_path,
        {"daemon": {"shutdown_grace": "20s"}, "repos": [{"name": "app", "path": str(bare)}]},
    )
    install_hook(d, bare)
    d.start()
    push(work, bare)
    wait_for(lambda: any(r.state is RunState.RUNNING for r in d.runs()), 30)
    assert d.stop(timeout=40) == 0
    [run] = d.runs()
    assert run.state is RunState.SUCCESS


def test_sigterm_past_the_grace_interrupts_and_the_next_start_reruns(tmp_path, leftovers):
    pipeline = f"steps:\n  - run: sleep 30 # {leftovers}\n    timeout: 1m\n"
    bare, work = setup_repo(tmp_path, pipeline)
    d = DaemonProc(
        tmp_path,
        {"daemon": {"shutdown_grace": "1s"}, "repos": [{"name": "app", "path": str(bare)}]},
    )
    install_hook(d, bare)
    d.start()
    push(work, bare)
    wait_for(lambda: any(r.state is RunState.RUNNING for r in d.runs()), 30)
    assert d.stop(timeout=40) == 0
    [run] = d.runs()
    assert run.state is RunState.QUEUED and "interrupted" in run.reason
    # the next start picks it up again (attempt 2); stop it quickly
    d.start()
    try:
        wait_for(lambda: d.runs()[0].attempts >= 2, 30)
        d.cli("cancel", "app#1")
        [run] = d.wait_runs_finished(1, timeout=30)
        assert run.state is RunState.CANCELED
    finally:
        d.stop()


@pytest.mark.parametrize(
    "policy,expect",
    [
        ("cancel-running", "newest succeeds, every older one canceled"),
        ("cancel-pending", "first and newest succeed, the ones between canceled"),
        ("queue", "all succeed, one at a time"),
    ],
)
def test_twenty_pushes_to_one_branch(tmp_path, policy, expect):
    # Every step waits at a gate, opened once the policy has done its work on the 20
    # pushes: the outcome is the policy's, whatever the machine's speed.
    gate = tmp_path / "gate"
    pipeline = (
        f"concurrency: {{group: '{{repo}}/{{branch}}', on_new_commit: {policy}}}\n"
        f"steps:\n  - run: while [ ! -e {gate} ]; do sleep 0.05; done; sleep 0.1\n"
    )
    bare, work = setup_repo(tmp_path, pipeline)
    d = DaemonProc(tmp_path, {"concurrency": 4, "repos": [{"name": "app", "path": str(bare)}]})
    install_hook(d, bare)
    d.start()
    try:
        shas = [push(work, bare) for _ in range(20)]
        settled = {"cancel-running": 19, "cancel-pending": 18, "queue": 0}[policy]
        wait_for(
            lambda: len(d.runs()) == 20 and sum(r.state.finished for r in d.runs()) >= settled,
            60,
            what=f"the 20 runs stored and {settled} superseded",
        )
        gate.touch()
        runs = d.wait_runs_finished(20, timeout=120)
        by_sha = {r.sha: r for r in runs}
        assert set(by_sha) == set(shas)
        states = [by_sha[s].state for s in shas]
        succeeded = [i for i, state in enumerate(states) if state is RunState.SUCCESS]
        canceled = [by_sha[s] for s in shas if by_sha[s].state is RunState.CANCELED]
        if policy == "queue":
            assert succeeded == list(range(20))
            spans = sorted((r.started_at, r.finished_at) for r in runs)
            assert all(a[1] <= b[0] + 0.05 for a, b in zip(spans, spans[1:], strict=False))
        elif policy == "cancel-running":
            assert succeeded == [19] and len(canceled) == 19
        else:  # the one running when the next came (usually the first) and the newest
            assert succeeded[-1] == 19 and len(succeeded) <= 2, succeeded
            assert len(canceled) == 20 - len(succeeded)
        assert all("superseded" in r.reason for r in canceled)
    finally:
        d.stop()


HOSTILE = [
    "--upload-pack=touch${IFS}pwned;git-upload-pack",
    "$(touch${IFS}pwned)",
    'zzz";touch${IFS}pwned;#',
    "-cprotocol.ext.allow=always",
]


def test_hostile_ref_names_through_hook_watcher_and_poller(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    bare, work = setup_repo(served)
    with GitDaemon(served) as gd:
        repos = [
            {"name": "app", "path": str(bare)},
            {"name": "remote", "url": gd.url("app.git"), "poll_interval": "1s"},
        ]
        d = DaemonProc(tmp_path, {"concurrency": 4, "repos": repos})
        install_hook(d, bare)
        d.start()
        try:
            time.sleep(1.5)  # the poller's first look records the refs
            want = {}
            for name in HOSTILE:
                want[f"refs/heads/{name}"] = push(work, bare, f"refs/heads/{name}")
            want["refs/heads/fine"] = push(work, bare, "refs/heads/fine")

            def got(repo):
                return {r.ref: r.sha for r in d.runs(repo) if r.state.finished}

            wait_for(lambda: got("app") == want, 90, what="every ref of app built")
            wait_for(lambda: want.items() <= got("remote").items(), 90, what="remote built")
            assert all(r.state is RunState.SUCCESS for r in d.runs())
            assert d.proc.poll() is None
        finally:
            d.stop()
    assert not list(tmp_path.rglob("pwned*"))


def test_systemd_notify_ready_status_watchdog_and_stopping(tmp_path):
    import socket

    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    bare, work = setup_repo(tmp_path)
    d = DaemonProc(tmp_path, {"repos": [{"name": "app", "path": str(bare)}]})
    install_hook(d, bare)
    spooled = push(work, bare)  # made while the daemon is down: stored before READY
    d.start(wait=False, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
    got: list[str] = []
    try:
        while "READY=1" not in got:
            got += sock.recv(4096).decode().split("\n")
        # READY comes after recovery and intake are up: the spooled push is already stored
        assert any(r.sha == spooled for r in d.runs())
        assert any(m.startswith("STATUS=") for m in got)
        while "WATCHDOG=1" not in got:
            got += sock.recv(4096).decode().split("\n")
        d.wait_runs_finished(1)
    finally:
        d.stop()
    sock.settimeout(5)
    try:
        while "STOPPING=1" not in got:
            got += sock.recv(4096).decode().split("\n")
    finally:
        sock.close()
    assert "STOPPING=1" in got


def test_manual_trigger_builds_the_branch_head_again(tmp_path):
    bare, work = setup_repo(tmp_path)
    d = DaemonProc(tmp_path, {"repos": [{"name": "app", "path": str(bare)}]})
    d.start()
    try:
        head = git(work, "rev-parse", "HEAD")
        for n in (1, 2):  # the same commit twice: two runs (a trigger is never a duplicate)
            out = d.cli("trigger", "app", "main")
            assert out.returncode == 0, out.stdout + out.stderr
            assert f"app#{n}" in out.stdout
        runs = d.wait_runs_finished(2)
        assert {r.sha for r in runs} == {head} and all(r.state is RunState.SUCCESS for r in runs)
        bad = d.cli("trigger", "nope")
        assert bad.returncode != 0 and "nope" in (bad.stdout + bad.stderr)
    finally:
        d.stop()


def test_a_worker_killed_after_the_run_finished_leaves_the_result_alone(tmp_path):
    bare, work = setup_repo(tmp_path)
    d = DaemonProc(
        tmp_path,
        {"daemon": {"lease": "2s"}, "repos": [{"name": "app", "path": str(bare)}]},
        env={"CIWATCH_FAULT": "after-run-finished"},
    )
    install_hook(d, bare)
    d.start()
    try:
        sha = push(work, bare)
        [run] = d.wait_runs_finished(1)
        time.sleep(3)  # longer than the lease: recovery must not touch a finished run
        [run] = d.runs()
        assert (run.sha, run.state, run.attempts) == (sha, RunState.SUCCESS, 1)
    finally:
        d.stop()
    d.start()  # and a restart neither
    try:
        time.sleep(1)
        [run] = d.runs()
        assert run.state is RunState.SUCCESS and run.attempts == 1
    finally:
        d.stop()


def test_ciwatch_run_beside_the_daemon_builds_its_own_run_once(tmp_path):
    """`ciwatch run` with the daemon's config and state: the CLI runs what it made,
    the daemon's scheduler does not take it too (both would claim it otherwise)."""
    bare, work = setup_repo(tmp_path, name="app")
    d = DaemonProc(tmp_path, {"repos": [{"name": "app", "path": str(bare)}]})
    d.start()
    try:
        for _ in range(4):
            commit(work, {"n.txt": str(time.monotonic_ns())})
            out = d.cli("run", str(work), timeout=120)
            assert out.returncode == 0, out.stdout + out.stderr
        s = d.store()
        try:
            mine = [r for r in s.list_runs(limit=100) if r.source == "cli"]
            assert len(mine) == 4 and all(r.state is RunState.SUCCESS for r in mine)
            for r in mine:
                assert [a.worker.split(":")[0] for a in s.attempts(r.id)] == ["cli"]
        finally:
            s.close()
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0, d.log.read_text()[-3000:]
