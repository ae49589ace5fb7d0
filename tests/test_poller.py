"""The remote poller against a real `git daemon` on 127.0.0.1, a refusing port and a
server that never answers, with a real APScheduler and a real SQLite store."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from gitdaemon import GitDaemon, HangingServer, closed_port, git_daemon  # noqa: F401
from gitutil import commit, git, make_repo

from ciwatch.errors import ConfigError
from ciwatch.git import Git
from ciwatch.intake import Intake
from ciwatch.model import EventKind, Run
from ciwatch.sources.poller import Poller, PollTarget
from ciwatch.store import Store

LOGGER = "ciwatch.sources.poller"


def wait_for(predicate: Callable[[], object], timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


class Box:
    def __init__(self, tmp: Path, served: Path) -> None:
        self.tmp = tmp
        self.served = served
        self.store = Store.open(tmp / "state" / "ciwatch.db")
        self.intake = Intake(self.store, lambda: None)
        (tmp / "git-home").mkdir()
        self.git = Git(tmp / "git-home")
        self.scheduler = BackgroundScheduler()
        self.pollers: list[Poller] = []

    def remote(self, name: str) -> Path:
        """A bare repository served by the daemon, and its work tree (returned)."""
        self.served.mkdir(parents=True, exist_ok=True)
        git(self.served, "init", "-q", "--bare", f"{name}.git")
        work = self.tmp / f"{name}-work"
        make_repo(work, {"f": "0"})
        git(work, "remote", "add", "origin", str(self.served / f"{name}.git"))
        git(work, "push", "-q", "origin", "main")
        return work

    def target(self, name: str, url: str, interval: float = 0.3, **kw) -> PollTarget:
        return PollTarget(self.store.ensure_repo(name, url), url, interval, **kw)

    def poller(self, *targets: PollTarget, **kw) -> Poller:
        kw.setdefault("rng", random.Random(7))
        p = Poller(self.intake, self.store, self.git, self.scheduler, **kw)
        p.set_repos(list(targets))
        self.pollers.append(p)
        return p

    def runs(self, repo: str) -> list[Run]:
        return list(reversed(self.store.list_runs(repo=repo, limit=1000)))

    def close(self) -> None:
        for p in self.pollers:
            p.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.store.close()


@pytest.fixture
def box(tmp_path: Path, git_daemon: GitDaemon):  # noqa: F811
    b = Box(tmp_path, git_daemon.base)
    yield b
    b.close()


def push(work: Path, *args: str) -> None:
    git(work, "push", "-q", "origin", *args)


def test_a_new_commit_on_the_remote_becomes_a_poll_event(box: Box, git_daemon: GitDaemon) -> None:  # noqa: F811
    work = box.remote("app")
    before = git(work, "rev-parse", "HEAD")
    p = box.poller(box.target("app", git_daemon.url("app.git")))
    assert p.poll_now("app") == [], "the first poll records, it builds nothing"
    assert box.store.seen_refs(box.store.get_repo("app").id) == {"refs/heads/main": before}

    sha = commit(work, {"f": "1"})
    push(work, "main")
    events = p.poll_now("app")
    assert [(e.kind, e.ref, e.sha, e.before, e.source) for e in events] == [
        (EventKind.PUSH, "refs/heads/main", sha, before, "poll")
    ]
    assert [(r.sha, r.source) for r in box.runs("app")] == [(sha, "poll")]
    assert p.poll_now("app") == [] and len(box.runs("app")) == 1, "nothing moved: nothing new"

    # Scheduled: the job notices the next push by itself.
    box.scheduler.start()
    p.start()
    later = commit(work, {"f": "2"})
    push(work, "main")
    assert wait_for(lambda: len(box.runs("app")) == 2, timeout=2.0)
    assert box.runs("app")[-1].sha == later
    [st] = p.status()
    assert st["repo"] == "app" and st["failures"] == 0 and st["last_ok"] is not None
    assert st["next_poll"] is not None and st["next_poll"] <= time.time() + 0.3 + 0.05

    p.stop()
    assert box.scheduler.get_jobs() == [] and p.status()[0]["next_poll"] is None
    commit(work, {"f": "3"})
    push(work, "main")
    time.sleep(0.5)
    assert len(box.runs("app")) == 2, "a stopped poller polls no more"


def test_refusing_and_hanging_remotes_do_not_delay_a_healthy_one(
    box: Box,
    git_daemon: GitDaemon,  # noqa: F811
) -> None:
    work = box.remote("app")
    with HangingServer() as hang:
        refused = box.target("refused", f"git://127.0.0.1:{closed_port()}/x.git", 0.3)
        hanging = box.target("hanging", hang.url(), 0.3)
        healthy = box.target("app", git_daemon.url("app.git"), 0.3)
        p = box.poller(refused, hanging, healthy, max_concurrent=4)
        box.scheduler.start()
        p.start()
        assert wait_for(lambda: box.store.has_seen_refs(healthy.repo.id), timeout=1.0)
        sha = commit(work, {"f": "1"})
        t0 = time.monotonic()
        push(work, "main")
        assert wait_for(lambda: box.runs("app"), timeout=1.0), "the healthy repo waited"
        assert time.monotonic() - t0 < 0.3 + 0.5
        assert [r.sha for r in box.runs("app")] == [sha]
        assert wait_for(lambda: hang.accepted >= 1)
        status = {s["repo"]: s for s in p.status()}
        assert wait_for(lambda: {s["repo"]: s for s in p.status()}["hanging"]["failures"] >= 1)
        assert status["refused"]["failures"] >= 1
        assert "timed out" in {s["repo"]: s for s in p.status()}["hanging"]["error"]


def test_backoff_grows_and_each_outage_is_logged_once(
    box: Box, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box.remote("app")
    port = closed_port()
    daemon = GitDaemon(box.served, port=port).start()
    try:
        url = f"git://user:s3cret@127.0.0.1:{port}/app.git"
        # git:// has no userinfo: the credentials are only there to prove redaction.
        ok_url = f"git://127.0.0.1:{port}/app.git"
        interval = 0.2
        p = box.poller(box.target("app", ok_url, interval), box.target("cred", url, interval))
        box.scheduler.start(paused=True)  # jobs exist, but only poll_now polls
        p.start()
        caplog.set_level(logging.DEBUG, logger=LOGGER)
        assert p.poll_now("app") == []
        daemon.stop()

        delays = []
        for _ in range(4):
            p.poll_now("app")
            st = next(s for s in p.status() if s["repo"] == "app")
            delays.append(st["next_poll"] - time.time())
        assert st["failures"] == 4 and st["last_error"] is not None
        for n, d in enumerate(delays, 1):
            assert interval * 2**n * 0.9 < d < interval * 2**n * 1.1 + 0.05, delays
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "app" in warnings[0].getMessage()

        daemon.start()  # the same port: the remote is back
        p.poll_now("app")
        st = next(s for s in p.status() if s["repo"] == "app")
        assert st["failures"] == 0 and st["next_poll"] - time.time() < interval + 0.05
        recovered = [r for r in caplog.records if "reachable again" in r.getMessage()]
        assert len(recovered) == 1 and recovered[0].levelno == logging.INFO

        daemon.stop()
        for _ in range(3):
            p.poll_now("app")
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 2, "a second outage: a second warning, not one per poll"

        for _ in range(2):
            p.poll_now("cred")
        assert "s3cret" not in caplog.text
        assert "s3cret" not in repr(p.status())
    finally:
        daemon.stop()


def test_branch_filter_selects_branches_and_keeps_tags(box: Box, git_daemon: GitDaemon) -> None:  # noqa: F811
    work = box.remote("app")
    p = box.poller(
        box.target("app", git_daemon.url("app.git"), branches=("main", "release/*", "!release/old"))
    )
    p.poll_now("app")
    sha = commit(work, {"f": "1"})
    push(
        work,
        "main",
        "HEAD:refs/heads/release/1.0",
        "HEAD:refs/heads/release/old",
        "HEAD:refs/heads/feature/x",
        "HEAD:refs/tags/v1",
        "HEAD:refs/notes/commits",
    )
    events = p.poll_now("app")
    assert {(e.kind, e.ref) for e in events} == {
        (EventKind.PUSH, "refs/heads/main"),
        (EventKind.PUSH, "refs/heads/release/1.0"),
        (EventKind.TAG, "refs/tags/v1"),
    }
    assert {e.sha for e in events} == {sha}
    seen = box.store.seen_refs(box.store.get_repo("app").id)
    assert seen["refs/heads/feature/x"] == sha, "filtered branches are still recorded"
    assert "refs/notes/commits" not in seen


def test_pull_request_heads_only_when_asked_and_untrusted(box: Box, git_daemon: GitDaemon) -> None:  # noqa: F811
    work = box.remote("app")
    box.remote("plain")
    plain_work = box.tmp / "plain-work"
    with_prs = box.target("app", git_daemon.url("app.git"), pull_requests=True)
    without = box.target("plain", git_daemon.url("plain.git"))
    p = box.poller(with_prs, without)
    p.poll_now("app")
    p.poll_now("plain")
    sha = commit(work, {"f": "pr"})
    push(work, "HEAD:refs/pull/7/head", "HEAD:refs/merge-requests/8/head")
    commit(plain_work, {"f": "pr"})
    push(plain_work, "HEAD:refs/pull/9/head")
    events = p.poll_now("app")
    assert sorted((e.kind, e.pr_number, e.trusted, e.sha) for e in events) == [
        (EventKind.PULL_REQUEST, 7, False, sha),
        (EventKind.PULL_REQUEST, 8, False, sha),
    ]
    assert p.poll_now("plain") == []


def test_a_bad_target_is_refused_with_every_problem(box: Box) -> None:
    p = box.poller()
    with pytest.raises(ConfigError) as info:
        p.set_repos(
            [
                box.target("a", "ext::sh -c touch% /tmp/pwned"),
                box.target("b", "git://127.0.0.1:1/b.git", branches=("[main",)),
                box.target("c", "git://127.0.0.1:1/c.git", interval=0),
            ]
        )
    text = str(info.value)
    assert "repo a" in text and "repo b" in text and "repo c" in text
    assert p.status() == []
