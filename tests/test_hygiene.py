"""Disk space and workspace safety (RELIABILITY.md H4, H5): runs wait while a
filesystem is short of space and start when it is back; the operator is told
once each way; a workspace in use is never cleaned by anyone else."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
from gitutil import make_repo
from test_scheduler import make, push

from ciwatch.attemptdir import Workspace, workspace_dir
from ciwatch.checkouts import FreshCheckout
from ciwatch.config import parse_config
from ciwatch.diskspace import DiskCheck, FreeSpace, SpaceRule, human_size, measure
from ciwatch.errors import ConfigError, WorkspaceError
from ciwatch.model import RunState
from ciwatch.store import Store
from ciwatch.workspace import Mirrors
from ciwatch.wscache import CachedCheckout, CachedCheckouts

GiB = 1 << 30
WS = Path("/var/lib/ciwatch/workspaces")


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "ciwatch.db")
    s.ensure_repo("app", "/nonexistent/app")
    s.ensure_repo("lib", "/nonexistent/lib")
    yield s
    s.close()


class Disk:
    """Free space as the test sets it; counts the measurements."""

    def __init__(self, free: int, total: int = 100 * GiB) -> None:
        self.free, self.total, self.calls = free, total, 0

    def __call__(self, path: Path) -> FreeSpace:
        self.calls += 1
        return FreeSpace(self.free, self.total)


def held_back(records) -> list[str]:
    return [r.getMessage() for r in records if "held back" in r.getMessage()]


def back(records) -> list[str]:
    return [r.getMessage() for r in records if "disk space is back" in r.getMessage()]


# -- H4: the scheduler waits for disk space ---------------------------------------


def test_runs_wait_for_disk_space_and_start_when_it_is_back(store, caplog):
    disk = Disk(free=int(1.2 * GiB))
    runs = [push(store, branch=f"b{i}") for i in range(3)]
    sched, fake = make(store, max_running=2)
    sched.disk_check = DiskCheck([SpaceRule(WS, min_bytes=2 * GiB)], measure=disk)
    wanted = f"waiting for disk space: 1.2 GiB free on {WS}, 2 GiB required"
    with caplog.at_level(logging.WARNING):
        for _ in range(5):  # five passes: one warning, not five
            sched.run_once()
        assert fake.dispatched == []
        assert [store.get_run(r.id).wait_reason for r in runs] == [wanted] * 3
        assert sched.status()["disk"] == wanted
        assert held_back(caplog.records) == [f"queued runs are held back: {wanted}"]

        disk.free = 3 * GiB
        sched.run_once()
        sched.run_once()
        assert fake.dispatched == [runs[0].id, runs[1].id]  # the usual limit applies again
        assert store.get_run(runs[2].id).wait_reason == "waiting for a free slot (2 of 2 running)"
        assert len(back(caplog.records)) == 1
        assert sched.status()["disk"] == ""

        disk.free = GiB  # short again: told again, once
        sched.run_once()
        sched.run_once()
        assert len(held_back(caplog.records)) == 2
        fake.claim_all()
        fake.finish(runs[0].id)
        sched.run_once()
        assert store.get_run(runs[2].id).state is RunState.QUEUED
        assert runs[2].id not in fake.dispatched


def test_a_percentage_of_the_filesystem_can_be_required(store):
    disk = Disk(free=4 * GiB, total=100 * GiB)
    run = push(store)
    sched, fake = make(store)
    sched.disk_check = DiskCheck([SpaceRule(WS, min_percent=5)], measure=disk)
    sched.run_once()
    assert store.get_run(run.id).wait_reason == (
        f"waiting for disk space: 4 GiB free on {WS}, 5 GiB required"
    )
    disk.free = 6 * GiB
    sched.run_once()
    assert fake.dispatched == [run.id]


def test_each_filesystem_is_checked_against_its_own_minimum():
    free = {WS: 10 * GiB, Path("/var/lib/ciwatch"): 100 << 20}
    check = DiskCheck(
        [SpaceRule(WS, min_bytes=GiB), SpaceRule(Path("/var/lib/ciwatch"), min_bytes=256 << 20)],
        measure=lambda p: FreeSpace(free[p], 50 * GiB),
    )
    assert check() == ("waiting for disk space: 100 MiB free on /var/lib/ciwatch, 256 MiB required")
    free[Path("/var/lib/ciwatch")] = GiB
    assert check() == ""


def test_a_filesystem_that_cannot_be_measured_does_not_hold_runs(store, caplog):
    def broken(path: Path) -> FreeSpace:
        raise PermissionError(13, "Permission denied")

    run = push(store)
    sched, fake = make(store)
    sched.disk_check = DiskCheck([SpaceRule(WS, min_bytes=GiB)], measure=broken)
    with caplog.at_level(logging.WARNING):
        sched.run_once()
        sched.run_once()
    assert fake.dispatched == [run.id]
    told = [r.getMessage() for r in caplog.records if "cannot measure" in r.getMessage()]
    assert told == [f"cannot measure free space on {WS}: Permission denied"]


def test_no_rule_and_an_idle_queue_measure_nothing(store):
    disk = Disk(free=0)
    sched, fake = make(store)
    sched.disk_check = DiskCheck([SpaceRule(WS, min_bytes=GiB)], measure=disk)
    sched.run_once()  # nothing queued: nothing to hold back
    assert disk.calls == 0
    run = push(store)
    sched.disk_check = DiskCheck([SpaceRule(WS)], measure=disk)  # 0: no minimum
    sched.run_once()
    assert fake.dispatched == [run.id] and disk.calls == 0


def test_sizes_are_shown_rounded_so_the_wait_reason_rarely_changes():
    assert [human_size(n) for n in (0, 1023, 1024, 1536, 100 << 20, int(1.25 * GiB))] == [
        "0 B",
        "1023 B",
        "1 KiB",
        "1.5 KiB",
        "100 MiB",
        "1.2 GiB",
    ]
    assert human_size(int(1.2 * GiB)) == human_size(int(1.2 * GiB) + (1 << 20))


def test_free_space_of_a_real_filesystem_and_of_a_dir_not_made_yet(tmp_path):
    point = tmp_path / "small"
    point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(point)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"mounting a tmpfs needs root: {done.stderr.strip()}"
    try:
        before = measure(point / "workspaces" / "not" / "yet")  # measured at the mount
        assert before.total == 4 << 20 and before.free == 4 << 20
        (point / "f").write_bytes(b"x" * (1 << 20))
        assert measure(point).free == 3 << 20
        check = DiskCheck([SpaceRule(point / "workspaces", min_bytes=3584 << 10)])
        assert (
            check() == f"waiting for disk space: 3 MiB free on {point}/workspaces, 3.5 MiB required"
        )
    finally:
        subprocess.run(["umount", str(point)], check=True)


def test_the_minimum_is_a_size_a_percentage_or_nothing():
    def daemon(text: str):
        return parse_config(f"daemon:\n  {text}\n".encode(), "ciwatch.yaml").daemon

    assert daemon("min_free_space: 2G").min_free_space.size == 2 * GiB
    assert daemon("min_free_space: 5%").min_free_space.percent == 5.0
    assert daemon("min_free_space: 0").min_free_space.size == 0
    assert daemon("min_free_state_space: 100MB").min_free_state_space.size == 100 << 20
    default = parse_config(b"", "ciwatch.yaml").daemon
    assert (default.min_free_space.size, default.min_free_state_space.size) == (GiB, 256 << 20)
    for bad, why in (
        ("min_free_space: lots", "'lots' is not a size or a percentage; use e.g. 2G, 500M or 5%"),
        ("min_free_space: 120%", "'120%' is not a percentage between 0 and 100, like 5%"),
    ):
        with pytest.raises(ConfigError) as err:
            daemon(bad)
        assert f"ciwatch.yaml:2: daemon.min_free_space: {why}" in str(err.value)


# -- H5: a workspace in use is never removed by another attempt ---------------------


@pytest.fixture
def mirror(tmp_path):
    src = tmp_path / "origin"
    sha = make_repo(src, {"a.txt": "alpha\n", ".gitignore": "build/\n"})
    m = Mirrors(tmp_path / "state", timeout=20).mirror(4, str(src))
    m.fetch()
    return m, sha


def test_a_cached_slot_in_use_is_never_cleaned_or_lent_to_another_attempt(mirror, tmp_path):
    m, sha = mirror
    cache = CachedCheckouts(tmp_path / "state", max_slots=1)
    running = cache.acquire(m, sha, tmp_path / "run1")
    assert isinstance(running, CachedCheckout)
    (running.path / "build").mkdir()
    (running.path / "build" / "out.o").write_text("being written")
    for n in range(2, 5):  # later attempts while it runs get trees of their own
        other = cache.acquire(m, sha, tmp_path / f"run{n}")
        assert isinstance(other, FreshCheckout) and other.path != running.path
        (other.path / "build").mkdir()
        other.remove()
    assert (running.path / "build" / "out.o").read_text() == "being written"
    running.remove()  # handed back: now the next attempt gets the slot, cleaned
    later = cache.acquire(m, sha, tmp_path / "run5")
    assert isinstance(later, CachedCheckout) and later.path == running.path
    assert not (later.path / "build").exists()
    later.remove()


def test_a_new_attempt_never_touches_the_workspace_of_an_earlier_one(mirror, tmp_path):
    """A requeued run (its worker lost) gets a directory of its own: if the
    first worker is still alive after all, its workspace is left to it."""
    m, sha = mirror
    state = tmp_path / "state"
    first = m.checkout(sha, workspace_dir(state, 4, 7, 1) / "cell0")
    (first.path / "build").mkdir()
    (first.path / "build" / "out.o").write_text("still running")
    second = m.checkout(sha, workspace_dir(state, 4, 7, 2) / "cell0")
    second.remove()
    with pytest.raises(WorkspaceError, match="already exists"):
        m.checkout(sha, first.root)  # never checked out over a live one
    assert (first.path / "build" / "out.o").read_text() == "still running"
    assert (first.path / "a.txt").read_text() == "alpha\n"
    Workspace(first.root).remove()
    assert not first.root.exists() and os.path.isdir(state / "mirrors")
