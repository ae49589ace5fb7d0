"""Resolving queued runs: the concurrency group from the pipeline their commit
carries, recorded on the run, and the older runs of the group superseded.

The scheduler resolves each run once, before it may start. Nothing here fails
a run: a missing or invalid pipeline, or a commit that cannot be fetched,
resolves to "no group", and the worker that executes the run reports the real
error in the run's log.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ciwatch import pipeline
from ciwatch.commitinfo import CommitInfo, read_commit_info
from ciwatch.errors import CiwatchError, PipelineError
from ciwatch.model import CancelMode, Run, RunState
from ciwatch.pipeline.plan import Limits, OnNewCommit
from ciwatch.runner import event_context

_SPEC_CACHE = 64  # parsed pipelines kept, by (repo, commit, path): manual re-runs and tags
_SUPERSEDING = frozenset({OnNewCommit.CANCEL_PENDING.value, OnNewCommit.CANCEL_RUNNING.value})
_ACTIVE = (RunState.QUEUED, RunState.RUNNING)


@dataclass(frozen=True)
class Resolution:
    group: str | None
    policy: OnNewCommit | None
    note: str  # for the daemon's log: what was found, or why nothing was
    subject: str | None = None  # the commit's, shown with the run
    author: str | None = None


class Resolver:
    def __init__(
        self,
        store,
        mirrors,
        *,
        limits: Limits,
        pipeline_path: str = ".ciwatch.yml",
        pipeline_max_bytes: int = 1 << 20,
        pipeline_paths: Mapping[str, str] | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.store = store
        self.mirrors = mirrors
        self.limits = limits
        self.pipeline_path = pipeline_path
        # Per repository name, for repos whose pipeline file is not the default.
        self.pipeline_paths = dict(pipeline_paths or {})
        self.pipeline_max_bytes = pipeline_max_bytes
        self.log = log or logging.getLogger("ciwatch.resolve")
        self._specs: OrderedDict[tuple[int, str, str], object] = OrderedDict()
        self._commits: OrderedDict[tuple[int, str], CommitInfo] = OrderedDict()

    def resolve(self, run: Run) -> Resolution:
        """The run's group and policy, and its commit's subject and author;
        Resolution(None, None, why) for anything wrong."""
        res = self._resolve(run)
        info = self._commit(run)
        return replace(res, subject=info.subject, author=info.author)

    def _commit(self, run: Run) -> CommitInfo:
        """Read from the mirror `_resolve` brought the commit into; nothing when
        it is not there (the run's log tells why)."""
        key = (run.repo_id, run.sha)
        info = self._commits.get(key)
        if info is not None:
            self._commits.move_to_end(key)
            return info
        try:
            repo = self.store.get_repo(run.repo)
            mirror = self.mirrors.mirror(repo.id, repo.url)
            if not mirror.has_commit(run.sha):
                return CommitInfo(None, None)
            info = read_commit_info(mirror, run.sha)
        except CiwatchError as exc:
            self.log.debug("%s: commit %s not read: %s", run.label, run.sha[:12], exc)
            return CommitInfo(None, None)
        self._commits[key] = info
        if len(self._commits) > _SPEC_CACHE:
            self._commits.popitem(last=False)
        return info

    def _resolve(self, run: Run) -> Resolution:
        path = self.pipeline_paths.get(run.repo, self.pipeline_path)
        try:
            spec = self._spec(run, path)
        except PipelineError as exc:
            return Resolution(None, None, f"invalid pipeline: {exc.short()}")
        except CiwatchError as exc:
            return Resolution(None, None, f"pipeline not read: {exc}")
        meta = dict(self.store.get_event(run.event_id).meta)
        compiled = pipeline.compile(spec, event_context(run, None, meta), self.limits)
        if compiled.skip_reason or not compiled.plans:
            return Resolution(None, None, f"skipped: {compiled.skip_reason or 'no plans'}")
        concurrency = compiled.plans[0].concurrency
        if concurrency is None:
            return Resolution(None, None, "no concurrency group")
        return Resolution(
            concurrency.group,
            concurrency.on_new_commit,
            f"group {concurrency.group} ({concurrency.on_new_commit.value})",
        )

    def _spec(self, run: Run, path: str):
        key = (run.repo_id, run.sha, path)
        spec = self._specs.get(key)
        if spec is not None:
            self._specs.move_to_end(key)
            return spec
        repo = self.store.get_repo(run.repo)
        mirror = self.mirrors.mirror(repo.id, repo.url)
        mirror.ensure(run.sha, run.ref)
        data = mirror.read_blob(run.sha, path, self.pipeline_max_bytes)
        spec = pipeline.parse(data, path, self.limits, max_bytes=self.pipeline_max_bytes)
        self._specs[key] = spec
        if len(self._specs) > _SPEC_CACHE:
            self._specs.popitem(last=False)
        return spec


def superseded_by(run) -> str:
    return f"superseded by {run.label} ({run.sha[:7]})"


def resolve_pending(store, resolver, budget: float, log: logging.Logger) -> bool:
    """Resolve queued runs, oldest first, for up to `budget` seconds; True if
    some are left. Each run's resolution is stored, then its group's policy
    applied."""
    deadline = time.monotonic() + budget
    while True:
        batch = store.unresolved_runs(limit=50)
        if not batch:
            return False
        done: list[tuple[Run, Resolution]] = []
        for run in batch:
            done.append((run, _resolution(resolver, run, log)))
            if time.monotonic() > deadline:
                break
        # One transaction for the batch: each commit is a disk sync.
        store.set_resolutions((r.id, res.group, res.policy) for r, res in done)
        store.set_commit_info(
            (r.id, res.subject, res.author) for r, res in done if res.subject or res.author
        )
        groups: dict[str, set[int]] = {}
        for run, res in done:
            if res.group is not None:
                groups.setdefault(res.group, set()).add(run.id)
        for group, new in groups.items():
            supersede(store, store.group_runs(group, _ACTIVE), new, log)
        if time.monotonic() > deadline:
            return True


def _resolution(resolver, run: Run, log: logging.Logger) -> Resolution:
    try:
        res = resolver.resolve(run)
    except Exception as exc:  # never leave a run unresolvable: it would never start
        log.exception("%s: resolving failed", run.label)
        res = Resolution(None, None, f"internal error: {type(exc).__name__}: {exc}")
    log.debug("%s: %s", run.label, res.note)
    return res


def supersede(store, members: list[Run], new: set[int], log: logging.Logger) -> None:
    """Within one group (`members` oldest first, `new` just resolved): the newest
    run whose policy supersedes cancels the older ones (soft cancel: steps with
    `interruptible: false` finish). Only ever older runs: a commit that arrives
    late never cancels a newer one."""
    newest = next((m for m in reversed(members) if m.on_new_commit in _SUPERSEDING), None)
    if newest is None:
        return
    reason = superseded_by(newest)
    for old in members:
        if old.id >= newest.id:
            break
        if newest.id not in new and old.id not in new:
            continue  # settled when `newest` was resolved
        if old.state is RunState.QUEUED or (
            newest.on_new_commit == OnNewCommit.CANCEL_RUNNING.value and not old.cancel_requested
        ):
            if store.request_cancel(old.id, reason, CancelMode.SUPERSEDE):
                how = "stopping" if old.state is RunState.RUNNING else "canceled"
                log.info("%s (%s): %s, %s", old.label, old.sha[:12], how, reason)
