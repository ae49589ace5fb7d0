"""Which queued run starts next: resolution, supersede, limits, concurrency groups.

The queue is the `runs` table; the scheduler keeps no queue of its own, only
which runs it handed to the dispatcher that no worker has claimed yet.
Resolving (ciwatch.resolve) reads a newly queued run's concurrency group and
cancels the older runs of the group that a new commit supersedes. Dispatching
starts runs in order (priority, then age) while under the global limit, the
repository's limit and, for one-at-a-time groups, while the group is free,
and none while a filesystem runs write to is short of space (`disk_check`); a
run left waiting has the reason stored on it, for `ciwatch status` and `why`.
Resolving may fetch, so in the daemon it has a thread of its own: a slow
remote never holds up the runs that are ready.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ciwatch.errors import CiwatchError
from ciwatch.model import Run, RunState
from ciwatch.pipeline.plan import OnNewCommit
from ciwatch.resolve import Resolution, resolve_pending

# Policies under which a group runs one at a time; `never` does not limit.
_ONE_AT_A_TIME = frozenset(
    {OnNewCommit.QUEUE.value, OnNewCommit.CANCEL_PENDING.value, OnNewCommit.CANCEL_RUNNING.value}
)
_MAX_BACKOFF = 60.0


class Dispatcher(Protocol):
    def dispatch(self, run_id: int) -> None:
        """Hand the run to a worker, which claims it (or finds it gone)."""

    def in_flight(self) -> set[int]:
        """Runs whose worker process is still alive."""


class RunResolver(Protocol):
    def resolve(self, run: Run) -> Resolution: ...


@dataclass(frozen=True)
class _Handed:
    """A run given to a worker that has not claimed it yet (as far as we saw)."""

    repo: str
    group: str | None
    label: str
    attempts: int  # before the worker: one more means it claimed the run


class Scheduler:
    def __init__(
        self,
        store,
        dispatcher: Dispatcher,
        resolver: RunResolver,
        *,
        max_running: int,
        repo_limits: Mapping[str, int],
        clock: Callable[[], float] = time.time,
        log: logging.Logger | None = None,
        tick: float = 1.0,
        resolve_budget: float = 2.0,
        disk_check: Callable[[], str] | None = None,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.resolver = resolver
        self.clock = clock
        self.log = log or logging.getLogger("ciwatch.scheduler")
        self.tick = tick
        self.resolve_budget = resolve_budget  # seconds of resolving before dispatching
        self._max_running = max_running
        self._repo_limits = dict(repo_limits)
        self._cond = threading.Condition()
        self._wanted = {"scheduler": False, "resolver": False}  # by thread name
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._dispatch_lock = threading.Lock()
        self._resolve_lock = threading.Lock()
        self._last_full = float("-inf")
        self._paused = False
        self._draining = False
        self._handed: dict[int, _Handed] = {}
        self._handed_view: tuple[int, ...] = ()  # for status(), from other threads
        # run id -> (not before, failures): its worker exited without claiming it
        self._backoff: dict[int, tuple[float, int]] = {}
        # "" when runs may start, else why they wait (ciwatch.diskspace.DiskCheck)
        self.disk_check = disk_check or (lambda: "")
        self._disk_wait = ""  # as of the last pass that had queued runs

    # -- control ---------------------------------------------------------------

    def wake(self) -> None:
        with self._cond:
            self._wanted = {"scheduler": True, "resolver": True}
            self._cond.notify_all()

    def start(self) -> None:
        if self._threads:
            return
        self._stopping = False
        for name, body in (("scheduler", self._dispatch_loop), ("resolver", self._resolve_loop)):
            t = threading.Thread(target=self._loop, args=(name, body), name=name, daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    def pause(self) -> None:
        """No run starts until resume(); running runs go on."""
        self._paused = True
        self.wake()

    def resume(self) -> None:
        self._paused = False
        self._draining = False
        self.wake()

    def drain(self) -> None:
        """Stop starting runs (for a stop or an upgrade); running ones finish."""
        self._draining = True
        self.wake()

    def set_limits(
        self, max_running: int | None = None, repo_limits: Mapping[str, int] | None = None
    ) -> None:
        """New limits (a config reload); runs already started are not touched."""
        if max_running is not None:
            self._max_running = max_running
        if repo_limits is not None:
            self._repo_limits = dict(repo_limits)
        self.wake()

    def status(self) -> dict:
        running = self.store.running_runs()
        return {
            "paused": self._paused,
            "draining": self._draining,
            "max_running": self._max_running,
            "repo_limits": dict(self._repo_limits),
            "queued": self.store.count_queued(),
            "running": len(running),
            "running_runs": [r.label for r in running],
            "dispatched": list(self._handed_view),  # given to a worker still alive
            "disk": self._disk_wait,
            "waiting": [
                {"id": rid, "label": label, "reason": reason}
                for rid, label, reason in self.store.wait_reasons(50)
            ],
        }

    def run_once(self, full: bool | None = True) -> bool:
        """Resolve, then dispatch, synchronously; True when runs are left
        unresolved for later. `full=None` dispatches as the daemon's loop does
        (see _dispatch)."""
        more = self._resolve()
        self._dispatch(full)
        return more

    # -- the threads ---------------------------------------------------------------

    def _loop(self, name: str, body: Callable[[], bool]) -> None:
        more = True  # at start: whatever the queue holds
        while True:
            with self._cond:
                if not (more or self._wanted[name] or self._stopping):
                    self._cond.wait(self.tick)
                self._wanted[name] = False
                if self._stopping:
                    return
            try:
                more = body()
            except Exception:  # the loop boundary: log, keep scheduling
                self.log.exception("%s pass failed; retrying in %gs", name, self.tick)
                more = False

    def _dispatch_loop(self) -> bool:
        self._dispatch(None)
        return False

    def _resolve_loop(self) -> bool:
        more = self._resolve()
        with self._cond:  # what was resolved may start now
            self._wanted["scheduler"] = True
            self._cond.notify_all()
        return more

    def _resolve(self) -> bool:
        with self._resolve_lock:
            return resolve_pending(self.store, self.resolver, self.resolve_budget, self.log)

    # -- dispatching -------------------------------------------------------------

    def _dispatch(self, full: bool | None) -> None:
        """Start what may start. A full pass looks at every queued run; with
        `full=None` a pass looks at the head of the queue, and at all of it at
        most once a tick: reading thousands of queued runs on every wake-up
        would cost more than the runs it starts. Beyond the head, wait reasons
        (and a run that could start past a long blocked head) lag by a tick."""
        with self._dispatch_lock:
            if full is None:
                full = time.monotonic() - self._last_full >= self.tick
            self._dispatch_pass(None if full else max(64, 4 * self._max_running))
            if full:
                self._last_full = time.monotonic()

    def _dispatch_pass(self, head: int | None) -> None:
        now = self.clock()
        running = self.store.running_runs()
        in_flight = set(self.dispatcher.in_flight())
        queue = self.store.dispatch_queue(head)
        self._settle(in_flight, now)
        if queue:
            self._check_disk()
        if head is None:  # the whole queue was read: forget runs no longer in it
            queued = {q.id for q in queue}
            self._backoff = {k: v for k, v in self._backoff.items() if k in queued}

        busy = {r.id: (r.repo, r.concurrency_group, r.label) for r in running}
        for rid in in_flight:
            h = self._handed.get(rid)
            busy.setdefault(rid, (h.repo, h.group, h.label) if h else (None, None, f"run {rid}"))
        used = len(busy)
        per_repo = Counter(repo for repo, _, _ in busy.values() if repo)
        holder: dict[str, str] = {}  # group -> the run holding it (or first in line)
        for _, group, label in busy.values():
            if group:
                holder.setdefault(group, label)

        reasons: dict[int, str] = {}
        broken = ""  # once no worker could be started: nothing more this pass
        for q in queue:
            if q.id in busy or q.id in self._handed:
                continue
            group = q.concurrency_group if q.on_new_commit in _ONE_AT_A_TIME else None
            reason = broken or self._why_wait(q, group, used, per_repo, holder, now)
            if not reason:
                try:
                    self.dispatcher.dispatch(q.id)
                except (CiwatchError, OSError) as exc:
                    self.log.error("%s: no worker could take it: %s", q.label, exc)
                    broken = reason = f"no worker could be started: {exc}"
                else:
                    self.log.info("%s (%s): dispatched", q.label, q.sha[:12])
                    self._handed[q.id] = _Handed(q.repo, q.concurrency_group, q.label, q.attempts)
                    used += 1
                    per_repo[q.repo] += 1
                    if q.concurrency_group:
                        holder.setdefault(q.concurrency_group, q.label)
            if group:
                holder.setdefault(group, q.label)  # first in line keeps the group's order
            if reason != q.wait_reason:
                reasons[q.id] = reason
        self.store.set_wait_reasons(reasons)
        self._handed_view = tuple(sorted(self._handed))

    def _why_wait(self, q, group, used, per_repo, holder, now) -> str:
        """Why `q` cannot start now; "" if it can."""
        if self._paused:
            return "paused"
        if self._draining:
            return "draining: no new run starts"
        if self._disk_wait:
            return self._disk_wait
        back = self._backoff.get(q.id)
        if back and back[0] > now:
            return f"its worker exited before starting it ({back[1]}x); retrying soon"
        if group and group in holder:
            return f"waiting for {holder[group]} in group {group}"
        limit = self._repo_limits.get(q.repo)
        if limit is not None and per_repo[q.repo] >= limit:
            return f"waiting for a free slot for {q.repo} ({per_repo[q.repo]} of {limit} running)"
        if used >= self._max_running:
            return f"waiting for a free slot ({used} of {self._max_running} running)"
        return ""

    def _check_disk(self) -> None:
        """Measure free space once a pass; tell the operator when runs start
        waiting for it and when they may start again, not on every pass."""
        was, self._disk_wait = self._disk_wait, self.disk_check()
        if self._disk_wait and not was:
            self.log.warning("queued runs are held back: %s", self._disk_wait)
        elif was and not self._disk_wait:
            self.log.warning("disk space is back above the minimum; queued runs start again")

    def _settle(self, in_flight: set[int], now: float) -> None:
        """Forget runs whose worker is gone. One gone without claiming its run
        (queued, no new attempt) is retried after a growing delay, so a worker
        that cannot start does not spin."""
        for rid in [r for r in self._handed if r not in in_flight]:
            handed = self._handed.pop(rid)
            run = self.store.get_run(rid)
            if run.state is RunState.QUEUED and run.attempts == handed.attempts:
                failures = self._backoff.get(rid, (0.0, 0))[1] + 1
                delay = min(_MAX_BACKOFF, 2.0 ** (failures - 1))
                self._backoff[rid] = (now + delay, failures)
                self.log.warning(
                    "%s: its worker exited before starting it; retrying in %gs", handed.label, delay
                )
