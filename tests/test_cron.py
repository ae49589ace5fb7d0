"""Cron schedules with a real APScheduler, a real mirror of a real repository and a
real SQLite store."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from gitutil import commit, git, make_repo

from ciwatch.errors import ConfigError, GitError
from ciwatch.intake import Intake
from ciwatch.model import EventKind, Repo
from ciwatch.sources.cron import CronSource
from ciwatch.store import Store
from ciwatch.workspace import Mirrors


class Box:
    def __init__(self, tmp: Path) -> None:
        self.store = Store.open(tmp / "state" / "ciwatch.db")
        self.intake = Intake(self.store, lambda: None)
        self.work = tmp / "work"
        make_repo(self.work, {"f": "0"})
        self.bare = tmp / "app.git"
        git(tmp, "clone", "-q", "--bare", str(self.work), str(self.bare))
        self.repo = self.store.ensure_repo("app", str(self.bare))
        self.mirrors = Mirrors(tmp / "state")
        self.scheduler = BackgroundScheduler()
        self.resolved: list[tuple[str, str]] = []

    def resolve_head(self, repo: Repo, branch: str) -> str | None:
        """What the daemon does: fetch the mirror, then resolve the branch there."""
        self.resolved.append((repo.name, branch))
        mirror = self.mirrors.mirror(repo.id, repo.url)
        mirror.fetch()
        try:
            return mirror.resolve(f"refs/heads/{branch}")
        except GitError:
            return None

    def push(self, files: dict[str, str]) -> str:
        sha = commit(self.work, files)
        git(self.work, "push", "-q", str(self.bare), "main")
        return sha

    def cron(self, *schedules: tuple[str, str]) -> CronSource:
        source = CronSource(self.intake, self.scheduler, self.resolve_head)
        source.set_schedules([(self.repo, expr, branch) for expr, branch in schedules])
        return source


@pytest.fixture
def box(tmp_path: Path):
    b = Box(tmp_path)
    yield b
    if b.scheduler.running:
        b.scheduler.shutdown(wait=False)
    b.store.close()


def test_every_tick_makes_a_run_even_for_the_same_commit(box: Box) -> None:
    head = git(box.work, "rev-parse", "HEAD")
    cron = box.cron(("0 3 * * *", "main"))
    first, second = cron.fire(0), cron.fire(0)
    assert first is not None and second is not None
    assert first.id != second.id and second.number == first.number + 1
    for run in (first, second):
        assert (run.kind, run.ref, run.sha, run.source) == (
            EventKind.CRON,
            "refs/heads/main",
            head,
            "cron",
        )
    assert first.event_id == second.event_id, "one event, seen twice; two runs"
    newer = box.push({"f": "1"})
    assert cron.fire(0).sha == newer, "each tick builds the branch's head at that moment"
    assert len(box.store.list_runs(repo="app")) == 3


def test_a_missing_branch_makes_no_run_and_says_so(
    box: Box, caplog: pytest.LogCaptureFixture
) -> None:
    cron = box.cron(("0 3 * * *", "main"), ("0 4 * * *", "nightly"))
    with caplog.at_level(logging.WARNING, logger="ciwatch.sources.cron"):
        assert cron.fire(1) is None
    assert box.store.list_runs(repo="app") == []
    assert "nightly" in caplog.text and "app" in caplog.text
    assert cron.fire(0) is not None


def test_invalid_schedules_are_refused_naming_each_and_nothing_changes(box: Box) -> None:
    cron = box.cron(("0 3 * * *", "main"))
    with pytest.raises(ConfigError) as info:
        cron.set_schedules(
            [
                (box.repo, "0 3 * * *", "main"),
                (box.repo, "61 * * * *", "main"),
                (box.repo, "* * *", "main"),
                (box.repo, "0 3 * * *", "bad..name"),
            ]
        )
    text = str(info.value)
    assert "schedule 2" in text and "'61 * * * *'" in text
    assert "schedule 3" in text and "'* * *'" in text
    assert "schedule 4" in text and "bad..name" in text
    assert "schedule 1" not in text
    assert cron.fire(0) is not None, "the schedules in force were kept"


def test_scheduled_ticks_fire_through_the_scheduler_and_stop_removes_them(box: Box) -> None:
    cron = box.cron(("0 3 * * *", "main"), ("30 4 * * 1", "main"))
    box.scheduler.start()
    cron.start()
    jobs = box.scheduler.get_jobs()
    assert len(jobs) == 2
    nxt = sorted(j.next_run_time for j in jobs)
    assert (nxt[0].hour, nxt[0].minute) in {(3, 0), (4, 30)}
    # Make one tick due now, as the clock reaching 03:00 would.
    box.scheduler.modify_job(jobs[0].id, next_run_time=datetime.now(UTC))
    deadline = time.monotonic() + 2
    while not box.store.list_runs(repo="app") and time.monotonic() < deadline:
        time.sleep(0.01)
    runs = box.store.list_runs(repo="app")
    assert [(r.kind, r.source) for r in runs] == [(EventKind.CRON, "cron")]

    cron.set_schedules([(box.repo, "15 2 * * *", "main")])
    assert [(j.next_run_time.hour, j.next_run_time.minute) for j in box.scheduler.get_jobs()] == [
        (2, 15)
    ]
    cron.stop()
    assert box.scheduler.get_jobs() == []
