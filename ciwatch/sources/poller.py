"""Polled remotes: `git ls-remote` on an interval; a ref that moves becomes an event.

Each repository has its own APScheduler interval job (first run spread over a
fraction of the interval, so repositories configured alike do not poll in
step). The jobs run on a thread pool of our own, `max_concurrent` wide, added to
the scheduler we are given: a remote that hangs holds one of those threads for
at most the ls-remote timeout, and never a thread the other scheduled work
(cron) needs. An unreachable remote is polled less and less often (interval x
2^n, capped), with one warning when it starts failing and one line when it
recovers. Nothing is fetched here: the run's mirror fetches its sha.

The refs recorded are every branch and tag (and pull request head when asked
for); events are made for branches matching `branches`, every tag, and pull
request heads. Recording branches outside the filter means that widening the
filter later builds new pushes, not every old head.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.triggers.interval import IntervalTrigger

from ciwatch.errors import CiwatchError, NotFoundError
from ciwatch.git import Git, redact
from ciwatch.model import Event
from ciwatch.pipeline.globs import list_matcher
from ciwatch.sources.refdiff import diff_refs, events_for
from ciwatch.sources.remoterefs import PollTarget, check_targets, describe_failure, ls_remote

JITTER = 0.1  # a fraction of the interval (or of the backoff delay)

__all__ = ["Poller", "PollTarget"]  # PollTarget: callers know it from here


@dataclass
class _State:
    target: PollTarget
    generation: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    failures: int = 0
    last_ok: float | None = None
    last_error: float | None = None
    error: str = ""


class Poller:
    """Polls remotes; see the module doc."""

    def __init__(
        self,
        intake,
        store,
        git: Git,
        scheduler,
        *,
        max_concurrent: int = 4,
        rng: random.Random,
        clock: Callable[[], float] = time.time,
        max_backoff: float = 3600.0,
        log: logging.Logger | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._intake = intake
        self._store = store
        self._git = git
        self._scheduler = scheduler
        self._max_concurrent = max_concurrent
        self._sem = threading.BoundedSemaphore(max_concurrent)
        self._rng = rng
        self._clock = clock  # wall time: it also places the jobs' next run
        self._max_backoff = max_backoff
        self.log = log or logging.getLogger("ciwatch.sources.poller")
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self._running = False
        self._stopped = False  # stop() was called: polls in flight submit nothing
        self._executor = f"ciwatch-poll-{id(self):x}"
        self._pool: ThreadPoolExecutor | None = None

    # -- configuration and lifecycle -----------------------------------------

    def set_repos(self, repos: list[PollTarget]) -> None:
        """The remotes to poll. Every target is checked first (ConfigError lists
        every problem, nothing changes); on a reload only changed jobs move."""
        check_targets(repos, self._git.allowed_protocols)
        with self._lock:
            wanted = {t.repo.name: t for t in repos}
            for name in list(self._states):
                if wanted.get(name) != self._states[name].target:
                    del self._states[name]
                    self._remove_job(name)
            for name, target in wanted.items():
                if name not in self._states:
                    self._generation += 1
                    self._states[name] = _State(target, self._generation)
                    if self._running:
                        self._add_job(self._states[name])

    def start(self) -> None:
        with self._lock:
            if self._running:
                return
            self._running, self._stopped = True, False
            self._pool = ThreadPoolExecutor(max_workers=self._max_concurrent)
            self._scheduler.add_executor(self._pool, alias=self._executor)
            for state in self._states.values():
                self._add_job(state)

    def stop(self) -> None:
        """Remove the jobs; a poll in flight ends by its timeout and submits nothing."""
        with self._lock:
            if not self._running:
                return
            for name in self._states:
                self._remove_job(name)
            self._running, self._stopped = False, True
        try:
            self._scheduler.remove_executor(self._executor, shutdown=False)
        except KeyError:
            pass  # the scheduler was shut down first
        if self._pool is not None:
            # Not waiting: a hanging ls-remote must not hold up the daemon's stop.
            self._pool.shutdown(wait=False)
            self._pool = None

    def status(self) -> list[dict]:
        out = []
        with self._lock:
            states = sorted(self._states.items())
        for name, s in states:
            job = self._scheduler.get_job(_job_id(name)) if self._running else None
            nxt = getattr(job, "next_run_time", None) if job else None
            out.append(
                {
                    "repo": name,
                    "url": redact(s.target.url),
                    "last_ok": s.last_ok,
                    "last_error": s.last_error,
                    "error": s.error,
                    "next_poll": nxt.timestamp() if nxt else None,
                    "failures": s.failures,
                }
            )
        return out

    # -- polling -------------------------------------------------------------

    def poll_now(self, repo_name: str) -> list[Event]:
        """Poll one remote now, in this thread; returns the events submitted. An
        unreachable remote is recorded as a failure (and backs off), not raised."""
        state = self._states.get(repo_name)
        if state is None:
            raise NotFoundError(f"repository {repo_name!r} is not polled")
        return self._poll(state)

    def _job(self, name: str, generation: int) -> None:
        state = self._states.get(name)
        if state is None or state.generation != generation or not self._running:
            return  # a job of a removed or replaced target
        try:
            self._poll(state)
        except Exception:  # a job boundary: log it with context, keep polling
            self.log.exception("%s: polling %s failed", name, redact(state.target.url))

    def _poll(self, state: _State) -> list[Event]:
        target = state.target
        repo = target.repo
        with state.lock:
            try:
                with self._sem:
                    refs = ls_remote(self._git, target)
            except CiwatchError as exc:
                self._failed(state, exc)
                return []
            if self._states.get(repo.name) is not state or self._stopped:
                return []  # removed, reconfigured or stopped meanwhile
            events = self._apply(target, refs)
            self._succeeded(state)
            return events

    def _apply(self, target: PollTarget, refs: dict[str, str]) -> list[Event]:
        repo = target.repo
        if not self._store.has_seen_refs(repo.id):
            self._store.record_refs(repo.id, refs, "poll", complete=True)
            self.log.info(
                "%s: first poll of %s: %d refs recorded, nothing built",
                repo.name,
                redact(target.url),
                len(refs),
            )
            return []
        old = self._store.seen_refs(repo.id)
        if old == refs:
            return []
        wanted = list_matcher(target.branches) if target.branches else None
        changes = [
            c
            for c in diff_refs(old, refs)
            if wanted is None
            or not c.ref.startswith("refs/heads/")
            or wanted(c.ref[len("refs/heads/") :])
        ]
        events = events_for(repo.name, changes, "poll")
        for event in events:
            self._intake.submit(event)
        # Only after every event is stored: a crash in between sees them again.
        self._store.record_refs(repo.id, refs, "poll", complete=True)
        return events

    def _failed(self, state: _State, exc: CiwatchError) -> None:
        target = state.target
        state.failures += 1
        state.last_error = self._clock()
        state.error = describe_failure(exc, target.url)
        delay = min(self._max_backoff, target.interval * 2**state.failures)
        delay *= 1 + self._rng.uniform(0, JITTER)
        if state.failures == 1:
            self.log.warning(
                "%s: cannot poll %s: %s (next try in %.3gs, backing off)",
                target.repo.name,
                redact(target.url),
                state.error,
                delay,
            )
        else:
            self.log.debug(
                "%s: poll failed %d times: %s", target.repo.name, state.failures, state.error
            )
        self._reschedule(state, delay)

    def _succeeded(self, state: _State) -> None:
        state.last_ok = self._clock()
        if state.failures:
            self.log.info(
                "%s: %s reachable again after %d failed polls",
                state.target.repo.name,
                redact(state.target.url),
                state.failures,
            )
            state.failures = 0
            self._reschedule(state, state.target.interval)

    # -- jobs ----------------------------------------------------------------

    def _add_job(self, state: _State) -> None:
        target = state.target
        first = self._clock() + self._rng.uniform(0, JITTER * target.interval)
        self._scheduler.add_job(
            self._job,
            IntervalTrigger(seconds=target.interval),
            args=(target.repo.name, state.generation),
            id=_job_id(target.repo.name),
            name=f"poll {target.repo.name}",
            executor=self._executor,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,  # late (all threads busy) is better than skipped
            next_run_time=datetime.fromtimestamp(first, UTC),
            replace_existing=True,
        )

    def _reschedule(self, state: _State, seconds: float) -> None:
        if not self._running or self._states.get(state.target.repo.name) is not state:
            return
        try:
            self._scheduler.reschedule_job(
                _job_id(state.target.repo.name), trigger=IntervalTrigger(seconds=seconds)
            )
        except JobLookupError:
            pass  # removed meanwhile (stop, reload)

    def _remove_job(self, name: str) -> None:
        if not self._running:
            return
        try:
            self._scheduler.remove_job(_job_id(name))
        except JobLookupError:
            pass


def _job_id(name: str) -> str:
    return f"ciwatch-poll:{name}"
