"""Retention: what ciwatch keeps on disk and in the store, and removing the rest.

One pass (`Retention.run`), at daemon start and hourly, or by `ciwatch gc`:

1. finished runs beyond `runs` per repository, oldest first: the record (with
   its attempts, steps, artifact rows), its logs, artifacts and workspaces;
2. logs and artifacts of runs finished more than `log_days` ago: the record
   stays and says "log removed by retention (older than N days)";
3. kept workspaces of runs finished more than `workspace_days` ago (failed
   runs' checkouts, and attempts a lost worker left behind);
4. orphans: workspace, log and artifact directories whose run is gone;
5. cached checkouts (STATE/cache/<repo id>) and mirrors (STATE/mirrors/<repo
   id>.git) of repositories no longer in the config and with no run for
   `workspace_days`;
6. files in STATE/spool/rejected older than `rejected_days`.

Nothing of a queued or running run is ever removed. The store is asked at the
moment of removal, and only a finished run's files go: a finished state is
final (a retry is a new run, with new directories), so a run that starts
while a pass goes on is one that was queued, and queued runs are skipped. A
directory with no run record goes only when its ids are below the highest in
use: a run about to be created can never own it (run numbers are never
reused, and the store never deletes the run with the highest id). Passes of
the daemon and of `ciwatch gc` take turns on STATE/retention.lock. Trees are
removed with fstree.remove_tree: links are unlinked, never followed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ciwatch.diskspace import human_size
from ciwatch.fstree import remove_tree
from ciwatch.retentionfs import (
    PassLock,
    cache_locks,
    free_lock,
    mirror_dirs,
    numbered_dirs,
    old_entries,
    park,
    tree_size,
    workspace_dirs,
)
from ciwatch.retentionpolicy import RetentionPolicy, RetentionReport
from ciwatch.store.prune import Bounds

DAY = 86400.0


class _Tally:
    def __init__(self) -> None:
        names = ("runs", "logs", "workspaces", "orphans", "caches", "mirrors")
        self.counts = dict.fromkeys(names, 0)
        self.counts["rejected"] = 0
        self.freed = 0
        self.problems: list[str] = []


class Retention:
    """One pass of the policy over the store and the state directory."""

    def __init__(
        self,
        store,
        state_dir: Path,
        policy: RetentionPolicy,
        *,
        now: Callable[[], float],
        log: logging.Logger,
        dry_run: bool = False,
        on_item: Callable[[str], None] | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.state = Path(state_dir)
        self.policy = policy
        self.now = now
        self.log = log
        self.dry_run = dry_run
        self.on_item = on_item or (lambda text: None)
        self.bounds = Bounds(0, {})  # read at the start of each pass
        self.stopping = stopping  # checked between batches: the daemon is stopping

    def run(self, *, wait: bool = False) -> RetentionReport:
        """One pass. Another pass already running (the daemon's, or `ciwatch gc`)
        is waited for with `wait`, else this one is skipped."""
        with PassLock(self.state / "retention.lock", wait=wait) as held:
            if not held:
                return RetentionReport(dry_run=self.dry_run, skipped="another pass is running")
            t = _Tally()
            start = self.now()
            deleted: set[int] = set()  # run ids: gone, or would be (a dry run)
            self.bounds = self.store.prune_bounds()
            passes = (
                lambda: self._runs_beyond_count(t, deleted),
                lambda: self._old_logs(t, start, deleted),
                lambda: self._workspaces(t, start, deleted),
                lambda: self._orphan_dirs(t, deleted),
                lambda: self._caches(t, start),
                lambda: self._mirrors(t, start),
                lambda: self._rejected(t, start),
            )
            for one in passes:
                if self.stopping():
                    break
                one()
        report = RetentionReport(
            **t.counts, freed=t.freed, problems=tuple(t.problems), dry_run=self.dry_run
        )
        for problem in report.problems[:20]:
            self.log.warning("retention: %s", problem)
        if report.removed and not self.dry_run:
            self.log.info("retention: %s", report.summary())
        return report

    # -- removing --------------------------------------------------------------

    def _remove(self, t: _Tally, path: Path) -> tuple[bool, int]:
        """Remove a tree (or a file): (all of it went, bytes it freed). A path
        that does not exist is (True, 0)."""
        size = tree_size(path)
        if not size and not path.is_symlink() and not path.exists():
            return True, 0
        problems = [] if self.dry_run else remove_tree(path)
        freed = size - (tree_size(path) if problems else 0)
        t.freed += freed
        t.problems += problems
        return not problems, freed

    def _remove_all(self, t: _Tally, paths: list[Path], said: str, always: bool = False) -> bool:
        """Remove each path; one line for them all (when any existed, or `always`)."""
        ok, freed, there = True, 0, []
        for path in paths:
            if path.is_symlink() or path.exists():
                there.append(str(path.relative_to(self.state)))
            went, size = self._remove(t, path)
            ok, freed = ok and went, freed + size
        if there:
            self.on_item(f"{said}: {', '.join(there)}  {human_size(freed)}")
        elif always:
            self.on_item(said)
        return ok

    def _remove_one(self, t: _Tally, path: Path, kind: str, said: str) -> None:
        size = tree_size(path)
        self._remove(t, path)
        t.counts[kind] += 1
        self.on_item(f"{said}  {human_size(size)}")

    def _run_files(self, run_id: int) -> list[Path]:
        return [self.state / "runs" / str(run_id), self.state / "artifacts" / str(run_id)]

    def _label(self, repo_id: int, number: int) -> str:
        repo = self.bounds.repos.get(repo_id)
        return f"{repo.name if repo else f'repo {repo_id}'}#{number}"

    # -- 1. runs beyond the count ---------------------------------------------

    def _runs_beyond_count(self, t: _Tally, deleted: set[int]) -> None:
        for repo_id, below in self.store.keep_cutoffs(self.policy.runs).items():
            spaces = workspace_dirs(self.state / "workspaces" / str(repo_id))
            after = 0
            while not self.stopping():
                if self.dry_run:
                    batch = self.store.runs_below(repo_id, below, after)
                else:  # deleted in the store first: files left by a crash are orphans
                    batch = self.store.delete_runs_below(repo_id, below)
                if not batch:
                    break
                after = batch[-1].id
                for run in batch:
                    deleted.add(run.id)
                    t.counts["runs"] += 1
                    label = self._label(run.repo_id, run.number)
                    said = f"run {label} (beyond the newest {self.policy.runs})"
                    paths = self._run_files(run.id) + spaces.get(run.number, [])
                    self._remove_all(t, paths, said, always=True)

    # -- 2. old logs -----------------------------------------------------------

    def _old_logs(self, t: _Tally, start: float, deleted: set[int]) -> None:
        before = start - self.policy.log_days * DAY
        after = (0.0, 0)
        while not self.stopping() and (batch := self.store.runs_with_logs(before, after)):
            after = (batch[-1].finished_at or 0.0, batch[-1].id)
            # Read again now: only a finished run's logs go (finished is final).
            now = self.store.run_refs([r.id for r in batch])
            gone: list[int] = []
            for run in batch:
                if run.id in deleted or not (run.id in now and now[run.id].finished):
                    continue
                said = f"logs of {self._label(run.repo_id, run.number)}"
                if self._remove_all(t, self._run_files(run.id), said):
                    gone.append(run.id)
            t.counts["logs"] += len(gone)
            if gone and not self.dry_run:
                self.store.mark_logs_removed(gone, self.policy.log_note)

    # -- 3. workspaces, and 4. orphaned ones ----------------------------------

    def _workspaces(self, t: _Tally, start: float, deleted: set[int]) -> None:
        before = start - self.policy.workspace_days * DAY
        for repo_id, repo_dir in numbered_dirs(self.state / "workspaces"):
            spaces = workspace_dirs(repo_dir)
            for number in sorted(spaces):
                for path in spaces[number] if not self.stopping() else ():
                    self._workspace(t, repo_id, number, path, before, deleted)

    def _workspace(
        self, t: _Tally, repo_id: int, number: int, path: Path, before: float, deleted: set[int]
    ) -> None:
        run = self.store.run_refs_by_number(repo_id, [number]).get(number)  # read at deletion
        label, rel = self._label(repo_id, number), path.relative_to(self.state)
        if run is None:
            repo = self.bounds.repos.get(repo_id)
            if repo is not None and number <= repo.last_number:
                self._remove_one(t, path, "orphans", f"orphaned workspace {rel} ({label} is gone)")
        elif run.id in deleted or not run.finished:
            return  # queued or running: never touched; or counted already (dry run)
        elif run.finished_at is not None and run.finished_at < before:
            said = f"workspace {rel} of {label} ({run.state.value})"
            self._remove_one(t, path, "workspaces", said)

    def _orphan_dirs(self, t: _Tally, deleted: set[int]) -> None:
        """Log and artifact directories of runs that are gone."""
        top = self.store.prune_bounds().max_run_id
        for kind in ("runs", "artifacts"):
            found = dict(numbered_dirs(self.state / kind))
            known = self.store.run_refs(found)
            for run_id, path in sorted(found.items()):
                if run_id in known or run_id in deleted or run_id >= top:
                    continue
                if self.store.run_refs([run_id]):  # read again at deletion
                    continue
                rel = path.relative_to(self.state)
                self._remove_one(t, path, "orphans", f"orphaned {rel} (run {run_id} is gone)")

    # -- 5. cached checkouts of repositories gone from the config --------------

    def _caches(self, t: _Tally, start: float) -> None:
        root = self.state / "cache"
        # Skipped while a run holds one of the repository's slot locks.
        locked = lambda rid, path: cache_locks(path)  # noqa: E731
        self._repo_dirs(t, start, root, numbered_dirs(root), locked, "caches", "cached checkouts")

    def _mirrors(self, t: _Tally, start: float) -> None:
        root = self.state / "mirrors"
        # Skipped while a fetch into the mirror holds its lock.
        locked = lambda rid, path: free_lock(root / f"{rid}.lock")  # noqa: E731
        self._repo_dirs(t, start, root, mirror_dirs(root), locked, "mirrors", "mirror")

    def _repo_dirs(self, t: _Tally, start: float, root: Path, dirs, locked, kind, what) -> None:
        """Remove the per-repository `dirs` under `root` of repositories gone
        from the config, each while `locked(repo_id, path)` is free, moved
        aside first so that a repository added back starts afresh."""
        for path in old_entries(root, prefix=".gc-"):  # a removal cut short
            self._remove_all(t, [path], "leftover of an earlier pass")
        last = self.store.last_run_times()
        for repo_id, path in dirs:
            said = self._gone(repo_id, start, last)
            if said is None:
                continue
            with locked(repo_id, path) as free:
                if not free:
                    continue
                try:
                    target = path if self.dry_run else park(path)
                except OSError as exc:
                    t.problems.append(f"{path}: cannot move it aside: {exc.strerror or exc}")
                    continue
            rel = path.relative_to(self.state)
            self._remove_one(t, target, kind, f"{what} {rel} ({said} is not configured)")

    def _gone(self, repo_id: int, start: float, last: dict[int, float]) -> str | None:
        """The name of a repository no longer configured and quiet for
        `workspace_days` (its cache and mirror may go), else None."""
        repo = self.bounds.repos.get(repo_id)
        if repo is not None:
            if self.policy.repos is None or repo.name in self.policy.repos:
                return None
            if last.get(repo_id, 0.0) >= start - self.policy.workspace_days * DAY:
                return None
        return repo.name if repo else f"repository {repo_id}"

    # -- 6. rejected spool files -----------------------------------------------

    def _rejected(self, t: _Tally, start: float) -> None:
        root = self.state / "spool" / "rejected"
        before = start - self.policy.rejected_days * DAY
        for path in old_entries(root, older_than=before):
            rel = path.relative_to(self.state)
            if path.name.endswith(".reason"):  # beside its file, not counted apart
                self._remove_all(t, [path], "reason of a rejected spool file")
            else:
                self._remove_one(t, path, "rejected", f"rejected spool file {rel}")
