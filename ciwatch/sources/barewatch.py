"""Watched local bare repositories: a ref that moves becomes an event.

The refs are read with one `git for-each-ref` (about 2 ms here) rather than by
parsing `packed-refs` and loose ref files in Python (0.2 ms): git resolves the
loose-over-packed precedence, half-written lock files, symbolic refs and any
ref backend for us, and 2 ms is small next to the debounce window.

Changes are noticed through watchdog on `refs/` (recursive) and on the
repository directory (for `packed-refs`). A push touches several files (lock,
rename, sometimes a new directory), so the events of one repository are
coalesced over a short window that opens at the first one: the check runs at
most `debounce` seconds after a push, and pushes landing inside one window are
seen together (the newest sha of each ref; see tests/test_barewatch.py). A
slow periodic rescan is the safety net for anything inotify misses.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from ciwatch.errors import CiwatchError, GitError, NotFoundError
from ciwatch.git import Git
from ciwatch.model import Event, Repo, ref_from_bytes
from ciwatch.sources.refdiff import diff_refs, events_for

_SHA = re.compile(rb"(?:[0-9a-f]{40}|[0-9a-f]{64})")
# Reads (ours included: for-each-ref opens every loose ref) must not re-trigger.
_TRIGGERS = frozenset({"created", "modified", "moved", "deleted", "closed"})
_RETRY_MAX = 60.0


def read_refs(git: Git, path: Path) -> dict[str, str]:
    """Every ref of the repository at `path` and the object it points to."""
    if not path.is_dir():
        raise GitError(f"{path} does not exist or is not a directory")
    res = git.call(["for-each-ref", "--format=%(objectname) %(refname)"], git_dir=path)
    if res.returncode != 0:
        tail = res.stderr.decode("utf-8", "replace").strip()[-300:]
        raise GitError(f"cannot read the refs of {path}: {tail or f'exit {res.returncode}'}")
    refs = {}
    # A ref name holds neither a space nor a newline (git check-ref-format).
    for line in res.stdout.split(b"\n"):
        sha, _, ref = line.partition(b" ")
        if _SHA.fullmatch(sha) and ref.startswith(b"refs/"):
            refs[ref_from_bytes(ref)] = sha.decode()
    return refs


@dataclass
class _Target:
    repo: Repo
    path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    watches: list = field(default_factory=list)
    failures: int = 0


class _Handler(FileSystemEventHandler):
    def __init__(self, name: str, notify: Callable[[str], None], root_only: bool) -> None:
        self._name = name
        self._notify = notify
        self._root_only = root_only  # the repository directory: only packed-refs counts

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _TRIGGERS:
            return
        for p in (event.src_path, getattr(event, "dest_path", "")):
            name = str(p).rsplit("/", 1)[-1] if p else ""
            if not name or name.endswith(".lock"):
                continue
            if not self._root_only or name == "packed-refs":
                self._notify(self._name)
                return


class BareWatch:
    """Watches local bare repositories; see the module doc."""

    def __init__(
        self,
        intake,
        store,
        git: Git,
        *,
        debounce: float = 0.03,
        rescan: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger | None = None,
    ) -> None:
        self._intake = intake
        self._store = store
        self._git = git
        self._debounce = debounce
        self._rescan = rescan
        self._clock = clock
        self.log = log or logging.getLogger("ciwatch.sources.barewatch")
        self._targets: dict[str, _Target] = {}
        self._due: dict[str, float] = {}  # repo name -> when to check it
        # Two locks, never nested: watchdog calls our handler (which takes
        # _cond) while holding its own lock, so observer calls happen under
        # _wlock only, never under _cond.
        self._cond = threading.Condition()  # _due, _running
        self._wlock = threading.RLock()  # _targets, watches, the observer
        self._observer = None
        self._thread: threading.Thread | None = None
        self._running = False

    # -- lifecycle -----------------------------------------------------------

    def set_repos(self, repos: list[tuple[Repo, Path]]) -> None:
        """The repositories to watch; on a reload, watches are added and removed,
        and a newly added repository is reconciled at once."""
        wanted = {repo.name: (repo, Path(path)) for repo, path in repos}
        added, removed = [], []
        with self._wlock:
            for name in list(self._targets):
                t = self._targets[name]
                if name not in wanted or wanted[name] != (t.repo, t.path):
                    self._unwatch(self._targets.pop(name))
                    removed.append(name)
            for name, (repo, path) in wanted.items():
                if name not in self._targets:
                    self._targets[name] = _Target(repo, path)
                    added.append(name)
        with self._cond:
            for name in removed:
                self._due.pop(name, None)
            running = self._running
        if running:
            for name in added:
                self._watch(name)
                self._check_logged(name, "reconcile")

    def start(self) -> None:
        """Watch every repository, then reconcile each: refs that moved while
        nothing watched become events (source "reconcile")."""
        with self._wlock:
            if self._observer is not None:
                return
            self._observer = Observer(timeout=0.2)
            self._observer.daemon = True
            self._observer.start()
            names = list(self._targets)
        with self._cond:
            self._running = True
        # Watch first, then read: a push in between is seen by one or the other.
        for name in names:
            self._watch(name)
        for name in names:
            self._check_logged(name, "reconcile")
        self._thread = threading.Thread(target=self._loop, name="ciwatch-barewatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wlock:
            observer, self._observer = self._observer, None
            if observer is None:
                return
            for t in self._targets.values():
                t.watches.clear()
        with self._cond:
            self._running = False
            self._due.clear()
            self._cond.notify_all()
        observer.stop()
        observer.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    # -- checking ------------------------------------------------------------

    def check(self, repo_name: str, *, source: str = "watch") -> list[Event]:
        """Diff the repository's refs against the last seen now; returns the events
        submitted. Raises CiwatchError when the refs cannot be read or stored."""
        target = self._targets.get(repo_name)
        if target is None:
            raise NotFoundError(f"repository {repo_name!r} is not watched")
        repo = target.repo
        with target.lock:
            refs = read_refs(self._git, target.path)
            if not self._store.has_seen_refs(repo.id):
                self._store.record_refs(repo.id, refs, source, complete=True)
                self.log.info(
                    "%s: first sight of %s: %d refs recorded, nothing built",
                    repo.name,
                    target.path,
                    len(refs),
                )
                return []
            old = self._store.seen_refs(repo.id)
            if old == refs:
                return []
            events = events_for(repo.name, diff_refs(old, refs), source)
            for event in events:
                self._intake.submit(event)
            # Only after every event is stored: a crash in between sees them again.
            self._store.record_refs(repo.id, refs, source, complete=True)
            return events

    def _check_logged(self, name: str, source: str) -> None:
        """check() at a loop boundary: a failure is logged once per outage and
        retried later; it never stops the other repositories."""
        target = self._targets.get(name)
        if target is None:
            return
        try:
            self.check(name, source=source)
        except Exception as exc:  # the watcher thread must survive any one repository
            target.failures += 1
            delay = min(_RETRY_MAX, 2.0**target.failures)
            if target.failures == 1:
                self.log.warning("%s: cannot check for pushes: %s (retrying)", name, _short(exc))
            with self._wlock:
                self._unwatch(target)  # a repository moved away: watch it afresh later
            self._mark(name, delay)
            return
        if target.failures:
            self.log.info("%s: %s readable again", name, target.path)
            target.failures = 0
        self._watch(name)  # no-op when watched; else it was missing until now

    # -- watches and the debounce loop ---------------------------------------

    def _watch(self, name: str) -> None:
        with self._wlock:
            target, observer = self._targets.get(name), self._observer
            if target is None or observer is None or target.watches:
                return
            places = [(target.path / "refs", True, False), (target.path, False, True)]
            try:
                for place, recursive, root_only in places:
                    handler = _Handler(name, self._mark, root_only)
                    target.watches.append(observer.schedule(handler, place, recursive=recursive))
            except OSError as exc:
                # A missing repository: check() says so once; the rescan retries.
                self._unwatch(target)
                self.log.debug("%s: cannot watch %s: %s", name, target.path, exc)

    def _unwatch(self, target: _Target) -> None:
        for watch in target.watches:
            try:
                if self._observer is not None:
                    self._observer.unschedule(watch)
            except (KeyError, OSError):
                pass  # already gone with its directory
        target.watches.clear()

    def _mark(self, name: str, delay: float | None = None) -> None:
        """Ask for a check of `name`; the window opens at the first mark."""
        when = self._clock() + (self._debounce if delay is None else delay)
        with self._cond:
            if name in self._targets and (name not in self._due or when < self._due[name]):
                self._due[name] = when
                self._cond.notify()

    def _loop(self) -> None:
        next_rescan = self._clock() + self._rescan
        while True:
            with self._cond:
                if not self._running:
                    return
                now = self._clock()
                if now >= next_rescan:
                    next_rescan = now + self._rescan
                    for name in list(self._targets):  # set_repos may change it meanwhile
                        self._due[name] = min(now, self._due.get(name, now))
                ready = [n for n, when in self._due.items() if when <= now]
                if not ready:
                    wake = min([next_rescan, *self._due.values()])
                    self._cond.wait(max(0.001, wake - now))
                    continue
                for name in ready:
                    del self._due[name]
            for name in ready:
                self._check_logged(name, "watch")


def _short(exc: BaseException) -> str:
    if isinstance(exc, CiwatchError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {exc}"
