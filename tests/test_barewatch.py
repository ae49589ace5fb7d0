"""The bare-repository watcher against real git, real inotify and a real SQLite store."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from gitutil import commit, git, make_repo

from ciwatch.git import Git
from ciwatch.intake import Intake
from ciwatch.model import EventKind, Run, ref_bytes, ref_from_bytes
from ciwatch.sources.barewatch import BareWatch, read_refs
from ciwatch.store import Store


def wait_for(predicate: Callable[[], object], timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


class Box:
    """A store, an intake, and bare repositories pushed to from work trees."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.store = Store.open(tmp / "state" / "ciwatch.db")
        self.wakes = 0
        self.intake = Intake(self.store, self._wake)
        home = tmp / "git-home"
        home.mkdir()
        self.git = Git(home)
        self.watchers: list[BareWatch] = []

    def _wake(self) -> None:
        self.wakes += 1

    def bare(self, name: str, *, with_commit: bool = True) -> tuple[Path, Path]:
        """A bare repository NAME.git and a work tree pushing to it (branch main)."""
        bare = self.tmp / f"{name}.git"
        git(self.tmp, "init", "-q", "--bare", str(bare))
        work = self.tmp / f"{name}-work"
        make_repo(work, {"f": "0"})
        git(work, "remote", "add", "origin", str(bare))
        if with_commit:
            git(work, "push", "-q", "origin", "main")
        self.store.ensure_repo(name, str(bare))
        return bare, work

    def watcher(self, *names: str, **kw) -> BareWatch:
        kw.setdefault("debounce", 0.03)
        w = BareWatch(self.intake, self.store, self.git, **kw)
        w.set_repos([(self.store.get_repo(n), self.tmp / f"{n}.git") for n in names])
        self.watchers.append(w)
        return w

    def runs(self, repo: str | None = None) -> list[Run]:
        return list(reversed(self.store.list_runs(repo=repo, limit=1000)))

    def close(self) -> None:
        for w in self.watchers:
            w.stop()
        self.store.close()


@pytest.fixture
def box(tmp_path: Path):
    b = Box(tmp_path)
    yield b
    b.close()


def push(work: Path, *args: str | bytes) -> None:
    git(work, "push", "-q", "origin", *args)


# -- the store's record of refs ---------------------------------------------


def test_refs_seen_complete_snapshots_and_partial_updates(box: Box) -> None:
    repo = box.store.ensure_repo("r", "/x")
    odd = ref_from_bytes(b"refs/heads/bad\xff\xfe")
    assert not box.store.has_seen_refs(repo.id)
    box.store.record_refs(repo.id, {"refs/heads/a": "1" * 40}, "hook", complete=False)
    assert not box.store.has_seen_refs(repo.id), "a partial record is not a snapshot"

    box.store.record_refs(
        repo.id, {"refs/heads/main": "2" * 40, odd: "3" * 40}, "watch", complete=True
    )
    assert box.store.has_seen_refs(repo.id)
    assert box.store.seen_refs(repo.id) == {"refs/heads/main": "2" * 40, odd: "3" * 40}
    assert (
        ref_bytes(next(r for r in box.store.seen_refs(repo.id) if "bad" in r))
        == b"refs/heads/bad\xff\xfe"
    )

    box.store.record_refs(repo.id, {"refs/tags/v1": "4" * 40}, "hook", complete=False)
    assert box.store.seen_refs(repo.id)["refs/tags/v1"] == "4" * 40
    assert len(box.store.seen_refs(repo.id)) == 3

    box.store.record_refs(repo.id, {}, "watch", complete=True)
    assert box.store.seen_refs(repo.id) == {} and box.store.has_seen_refs(repo.id)
    other = box.store.ensure_repo("other", "/y")
    assert not box.store.has_seen_refs(other.id)


# -- the watcher -------------------------------------------------------------


def test_read_refs_reads_loose_and_packed_refs(box: Box) -> None:
    bare, work = box.bare("app")
    main = git(work, "rev-parse", "HEAD")
    git(bare, "pack-refs", "--all")
    push(work, "HEAD:refs/heads/loose")
    assert read_refs(box.git, bare) == {"refs/heads/main": main, "refs/heads/loose": main}


def test_first_sight_records_refs_without_building(box: Box) -> None:
    bare, work = box.bare("app")
    push(work, "HEAD:refs/heads/feature", "HEAD:refs/tags/v1")
    w = box.watcher("app")
    w.start()
    assert box.runs() == []
    assert box.store.seen_refs(box.store.get_repo("app").id) == read_refs(box.git, bare)
    assert set(read_refs(box.git, bare)) == {
        "refs/heads/main",
        "refs/heads/feature",
        "refs/tags/v1",
    }


def test_a_push_becomes_exactly_one_event_within_a_second(box: Box) -> None:
    _, work = box.bare("app")
    before = git(work, "rev-parse", "HEAD")
    box.watcher("app").start()
    sha = commit(work, {"f": "1"})
    t0 = time.monotonic()
    push(work, "main")
    assert wait_for(lambda: box.runs(), timeout=1.0), "no run within a second"
    latency = time.monotonic() - t0
    time.sleep(0.15)  # any duplicate would have arrived by now
    runs = box.runs()
    assert len(runs) == 1, runs
    run = runs[0]
    assert (run.kind, run.ref, run.sha, run.before, run.source) == (
        EventKind.PUSH,
        "refs/heads/main",
        sha,
        before,
        "watch",
    )
    assert box.wakes == 1
    assert latency < 1.0


def test_force_push_new_branch_and_tag_become_events_and_deletion_does_not(box: Box) -> None:
    bare, work = box.bare("app")
    push(work, "HEAD:refs/heads/old")
    box.watcher("app").start()
    git(work, "commit", "-q", "--amend", "-m", "rewritten")
    rewritten = git(work, "rev-parse", "HEAD")
    push(work, "--force", "main")
    assert wait_for(lambda: len(box.runs()) == 1)
    push(work, "HEAD:refs/heads/feature", "HEAD:refs/tags/v1")
    assert wait_for(lambda: len(box.runs()) == 3)
    push(work, "--delete", "old")
    assert wait_for(
        lambda: "refs/heads/old" not in box.store.seen_refs(box.store.get_repo("app").id)
    )
    time.sleep(0.1)
    got = {(r.kind, r.ref, r.sha, r.before) for r in box.runs()}
    assert got == {
        (EventKind.PUSH, "refs/heads/main", rewritten, box.runs()[0].before),
        (EventKind.PUSH, "refs/heads/feature", rewritten, None),
        (EventKind.TAG, "refs/tags/v1", rewritten, None),
    }
    assert box.runs()[0].before not in (None, rewritten), "a force push carries the old sha"


def test_refs_moved_while_stopped_become_events_at_start(box: Box) -> None:
    _, work = box.bare("app")
    w = box.watcher("app")
    w.start()
    w.stop()
    moved = commit(work, {"f": "while down"})
    push(work, "main", "HEAD:refs/heads/new-while-down")
    assert box.runs() == []
    w2 = box.watcher("app")
    w2.start()  # reconciles before returning
    runs = box.runs()
    assert {(r.ref, r.sha, r.source) for r in runs} == {
        ("refs/heads/main", moved, "reconcile"),
        ("refs/heads/new-while-down", moved, "reconcile"),
    }
    w2.stop()
    box.watcher("app").start()
    assert len(box.runs()) == 2, "nothing moved since: no new event"


def test_the_first_push_into_an_empty_repository_builds(box: Box) -> None:
    _, work = box.bare("empty", with_commit=False)
    box.watcher("empty").start()
    assert box.store.has_seen_refs(box.store.get_repo("empty").id)
    sha = git(work, "rev-parse", "HEAD")
    push(work, "main")
    assert wait_for(lambda: box.runs())
    assert [(r.ref, r.sha, r.before) for r in box.runs()] == [("refs/heads/main", sha, None)]


def test_quick_pushes_the_newest_sha_of_a_branch_is_always_seen(box: Box) -> None:
    # Pushes landing within one debounce window are seen together: a branch
    # pushed three times in quick succession is built at least at its newest
    # sha (the post-receive hook, when installed, sees every one).
    _, work = box.bare("app")
    box.watcher("app").start()
    pushed = []
    for n in range(3):
        pushed.append(commit(work, {"f": f"quick {n}"}))
        push(work, "main")
    assert wait_for(lambda: any(r.sha == pushed[-1] for r in box.runs()))
    time.sleep(0.1)
    shas = [r.sha for r in box.runs()]
    assert len(shas) == len(set(shas)), "no sha built twice"
    assert set(shas) <= set(pushed)


def test_quick_pushes_to_different_branches_are_each_seen(box: Box) -> None:
    _, work = box.bare("app")
    box.watcher("app").start()
    want = {}
    for n in range(3):
        want[f"refs/heads/b{n}"] = commit(work, {"f": f"branch {n}"})
        push(work, f"HEAD:refs/heads/b{n}")
    assert wait_for(lambda: len(box.runs()) == 3)
    time.sleep(0.1)
    assert {r.ref: r.sha for r in box.runs()} == want


HOSTILE = [
    b"--upload-pack=touch${IFS}pwned;git-upload-pack",
    b"-cprotocol.ext.allow=always",
    b"$(touch${IFS}pwned)",
    b"`touch${IFS}pwned`",
    b"a;touch${IFS}pwned",
    b'zzz";echo${IFS}"hello";#',
    b"bad\xff\xfe",
    b"/".join([b"x" * 199] * 4),
]


# watchdog may add a watch twice for nested directories made at once, and says so.
@pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")
def test_hostile_ref_names_pushed_for_real_are_carried_exactly(box: Box, monkeypatch) -> None:
    _, work = box.bare("app")
    monkeypatch.chdir(box.tmp)
    box.watcher("app").start()
    sha = commit(work, {"f": "hostile"})
    refs = [b"refs/heads/" + n for n in HOSTILE] + [b"refs/tags/" + HOSTILE[0]]
    push(work, *[b"HEAD:" + r for r in refs])
    assert wait_for(lambda: len(box.runs()) == len(refs), timeout=2.0)
    time.sleep(0.1)
    runs = box.runs()
    assert sorted(ref_bytes(r.ref) for r in runs) == sorted(refs)
    assert {r.sha for r in runs} == {sha}
    for root in (box.tmp, Path.cwd(), box.git.home):
        assert not any(p.name in ("pwned", "hello") for p in Path(root).rglob("*"))
    assert not os.path.exists("/tmp/pwned")


def test_a_missing_repository_is_logged_once_and_the_others_keep_working(
    box: Box, caplog: pytest.LogCaptureFixture
) -> None:
    _, work = box.bare("app")
    box.store.ensure_repo("gone", str(box.tmp / "gone.git"))
    caplog.set_level(logging.INFO, logger="ciwatch.sources.barewatch")
    w = box.watcher("gone", "app", rescan=0.1)
    w.start()
    sha = commit(work, {"f": "1"})
    push(work, "main")
    assert wait_for(lambda: [r.sha for r in box.runs("app")] == [sha])
    time.sleep(0.35)  # several rescans of the missing repository
    complaints = [r for r in caplog.records if "gone" in r.getMessage()]
    assert len(complaints) == 1 and complaints[0].levelno == logging.WARNING
    assert "gone.git" in complaints[0].getMessage()

    # It appears (whole, by a rename): the next rescan sees it (first sight),
    # then watches it.
    staging = box.tmp / "staging"
    staging.mkdir()
    git(staging, "init", "-q", "--bare", "gone.git")
    gone_work = staging / "work"
    make_repo(gone_work, {"f": "0"})
    git(gone_work, "push", "-q", str(staging / "gone.git"), "main")
    os.rename(staging / "gone.git", box.tmp / "gone.git")
    git(gone_work, "remote", "add", "origin", str(box.tmp / "gone.git"))
    assert wait_for(lambda: box.store.has_seen_refs(box.store.get_repo("gone").id))
    later = commit(gone_work, {"f": "now"})
    push(gone_work, "main")
    assert wait_for(lambda: [r.sha for r in box.runs("gone")] == [later])


def test_set_repos_adds_and_removes_watches(box: Box) -> None:
    _, app_work = box.bare("app")
    _, lib_work = box.bare("lib")
    w = box.watcher("app")
    w.start()
    w.set_repos([(box.store.get_repo("lib"), box.tmp / "lib.git")])
    assert box.store.has_seen_refs(box.store.get_repo("lib").id), "an added repo is reconciled"
    lib_sha = commit(lib_work, {"f": "lib"})
    push(lib_work, "main")
    commit(app_work, {"f": "app"})
    push(app_work, "main")
    assert wait_for(lambda: box.runs("lib"))
    time.sleep(0.15)
    assert [r.sha for r in box.runs("lib")] == [lib_sha]
    assert box.runs("app") == [], "a removed repository is no longer watched"


def test_reloading_while_refs_churn_neither_hangs_nor_loses_the_watch(box: Box) -> None:
    import threading

    bare, work = box.bare("app")
    w = box.watcher("app")
    w.start()
    repo = box.store.get_repo("app")
    sha = git(work, "rev-parse", "HEAD")
    stop = threading.Event()

    def churn() -> None:  # ref files appear and vanish as fast as git can make them
        n = 0
        while not stop.is_set():
            git(bare, "update-ref", f"refs/notes/churn{n % 5}", sha)
            n += 1

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    done = threading.Event()

    def reload() -> None:
        for n in range(40):
            w.set_repos([(repo, bare)] if n % 2 else [])
        done.set()

    threading.Thread(target=reload, daemon=True).start()
    finished = done.wait(timeout=10)
    stop.set()
    t.join(timeout=5)
    assert finished, "set_repos hung against the watcher's own event thread"
    newer = commit(work, {"f": "after reloads"})
    push(work, "main")
    assert wait_for(lambda: any(r.sha == newer for r in box.runs()))
