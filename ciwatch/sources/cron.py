"""Cron schedules: at each tick, a run of the branch's current head.

A tick always makes a new run, even for a commit already built: a nightly
build of an unchanged branch still runs (the event deduplicates, the run does
not). A tick missed while the daemon was down is not made up for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from apscheduler.jobstores.base import JobLookupError
from apscheduler.triggers.cron import CronTrigger

from ciwatch.errors import CiwatchError, ConfigError, NotFoundError
from ciwatch.git import check_ref, check_sha
from ciwatch.model import Event, EventKind, Repo, Run, ref_display

Schedule = tuple[Repo, str, str]  # (repository, crontab expression, branch)


class CronSource:
    """Cron jobs on an APScheduler scheduler we are given (started or not)."""

    def __init__(
        self,
        intake,
        scheduler,
        resolve_head: Callable[[Repo, str], str | None],
        *,
        timezone=None,
        log: logging.Logger | None = None,
    ) -> None:
        self._intake = intake
        self._scheduler = scheduler
        self._resolve_head = resolve_head  # (repo, branch) -> sha, None if no such branch
        self._timezone = timezone  # None: the local zone
        self.log = log or logging.getLogger("ciwatch.sources.cron")
        self._schedules: list[tuple[Schedule, CronTrigger]] = []
        self._lock = threading.Lock()
        self._generation = 0
        self._running = False
        self._job_prefix = f"ciwatch-cron-{id(self):x}:"

    def set_schedules(self, schedules: Sequence[Schedule]) -> None:
        """Replace every schedule. Each expression is checked first: ConfigError
        names every bad schedule, and then nothing changes."""
        parsed, problems = [], []
        for n, (repo, expr, branch) in enumerate(schedules, 1):
            where = f"schedule {n} (repo {repo.name}, cron {expr!r})"
            try:
                trigger = CronTrigger.from_crontab(expr, timezone=self._timezone)
            except (ValueError, TypeError) as exc:
                problems.append(f"{where}: not a valid crontab expression: {exc}")
                continue
            try:
                check_ref(f"refs/heads/{branch}")
            except CiwatchError:
                problems.append(f"{where}: not a valid branch name: {branch!r}")
                continue
            parsed.append(((repo, expr, branch), trigger))
        if problems:
            raise ConfigError(problems)
        with self._lock:
            self._remove_jobs()
            self._generation += 1
            self._schedules = parsed
            if self._running:
                self._add_jobs()

    def start(self) -> None:
        with self._lock:
            if not self._running:
                self._running = True
                self._add_jobs()

    def stop(self) -> None:
        with self._lock:
            self._remove_jobs()
            self._running = False

    def fire(self, index: int) -> Run | None:
        """One tick of schedule `index` (0-based): the run it queued, or None when
        the branch could not be resolved (logged)."""
        with self._lock:
            if not 0 <= index < len(self._schedules):
                raise NotFoundError(f"no schedule {index}")
            (repo, expr, branch), _ = self._schedules[index]
        ref = f"refs/heads/{branch}"
        try:
            sha = self._resolve_head(repo, branch)
            if sha is None:
                self.log.warning(
                    "%s: cron %r: branch %s does not exist; nothing to build",
                    repo.name,
                    expr,
                    ref_display(branch),
                )
                return None
            sha = check_sha(sha)
        except CiwatchError as exc:
            self.log.warning(
                "%s: cron %r: cannot resolve branch %s: %s", repo.name, expr, branch, exc
            )
            return None
        event = Event(
            repo=repo.name,
            kind=EventKind.CRON,
            ref=ref,
            sha=sha,
            source="cron",
            meta=(("schedule", expr),),
        )
        run, _ = self._intake.submit(event, force_new_run=True)
        return run

    def _job(self, index: int, generation: int) -> None:
        if generation != self._generation or not self._running:
            return  # a job of schedules since replaced
        try:
            self.fire(index)
        except Exception:  # a job boundary: log it with context, keep the schedule
            self.log.exception("cron schedule %d failed", index + 1)

    def _add_jobs(self) -> None:
        for index, ((repo, _, _), trigger) in enumerate(self._schedules):
            self._scheduler.add_job(
                self._job,
                trigger,
                args=(index, self._generation),
                id=self._job_prefix + str(index),
                name=f"cron {repo.name} #{index + 1}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,  # late (a busy scheduler, a suspend) beats never
                replace_existing=True,
            )

    def _remove_jobs(self) -> None:
        if not self._running:
            return
        for index in range(len(self._schedules)):
            try:
                self._scheduler.remove_job(self._job_prefix + str(index))
            except JobLookupError:
                pass
