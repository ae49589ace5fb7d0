"""Run states become commit statuses: the reporting sweep.

The sweep compares each run's state with the last state turned into statuses
(`runs.reported_state`), queues the statuses for what changed in the outbox,
and only then records the state as reported: a crash in between repeats a
status (the outbox drops exact repeats), it never loses one. Runs change state
in worker processes, so the daemon sweeps on a tick rather than on callbacks.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ciwatch.errors import CiwatchError
from ciwatch.forges.types import StatusState, StatusUpdate
from ciwatch.model import Run, RunState, StepRecord, StepState, short_ref
from ciwatch.stepgraph import plan_state

# Escape sequences go whole; other control characters become spaces.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")
# Event meta keys that may name a pull request's source branch (GitLab's `ref`).
_HEAD_BRANCH_KEYS = ("head_branch", "source_branch")
_UNFINISHED = (StepState.PENDING, StepState.RUNNING)


@dataclass(frozen=True)
class RepoForge:
    """Where a repository's statuses go."""

    forge: str  # the name under `forges:` in the config
    forge_repo: str
    context_prefix: str  # the forge's `context`, e.g. "ciwatch"
    pipeline: str  # the pipeline path, e.g. ".ciwatch.yml"

    @property
    def context(self) -> str:
        return f"{self.context_prefix}/{self.pipeline}"


def plain(text: str) -> str:
    """One line of plain text: no escape sequences, control or bidi characters."""
    return " ".join(_CONTROL.sub(" ", _ANSI.sub("", text)).split())


def duration_text(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def run_status(run: Run, steps: Sequence[StepRecord] = ()) -> tuple[StatusState, str]:
    """The status state and description of a whole run."""
    state = run.state
    if state is RunState.QUEUED:
        wait = plain(run.wait_reason)
        return StatusState.PENDING, f"queued: {wait}" if wait else "queued"
    if state is RunState.RUNNING:
        return StatusState.RUNNING, (
            f"running (attempt {run.attempts})" if run.attempts > 1 else "running"
        )
    reason = plain(run.reason)
    if state is RunState.SUCCESS:
        took = ""
        if run.started_at is not None and run.finished_at is not None:
            took = f" in {duration_text(run.finished_at - run.started_at)}"
        if any(s.result.allowed_failure for s in steps):
            return StatusState.WARNING, f"passed with allowed failures{took}"
        return StatusState.SUCCESS, f"passed{took}"
    if state is RunState.FAILURE:
        return StatusState.FAILURE, f"failed: {reason}" if reason else "failed"
    if state is RunState.ERROR:
        return StatusState.ERROR, reason or "error"
    if state is RunState.CANCELED:
        return StatusState.CANCELED, reason or "canceled"
    return StatusState.SUCCESS, f"skipped: {reason}" if reason else "skipped"


def cell_status(run: Run, label: str, steps: Sequence[StepRecord]) -> tuple[StatusState, str]:
    """The status of one matrix cell, from its own steps once the run is done."""
    if not run.state.finished or any(s.state in _UNFINISHED for s in steps):
        state, text = run_status(run, steps)
        if run.state.finished:
            # The run ended with this cell unfinished (lost worker, cancel):
            # the run's own reason, less the "[cell] " it may carry.
            text = text.replace(f"[{label}] ", "", 1)
        return state, text
    state, reason = plan_state({s.name: s.result for s in steps})
    if state is RunState.SUCCESS:
        if any(s.result.allowed_failure for s in steps):
            return StatusState.WARNING, "passed with allowed failures"
        return StatusState.SUCCESS, "passed"
    reason = plain(reason)
    if state is RunState.FAILURE:
        return StatusState.FAILURE, f"failed: {reason}"
    if state is RunState.CANCELED:
        return StatusState.CANCELED, plain(run.reason) or reason or "canceled"
    return StatusState.ERROR, reason


def status_updates(
    run: Run,
    steps: Sequence[StepRecord],
    where: RepoForge,
    public_url: str,
    extra: tuple[tuple[str, str], ...] = (),
) -> list[StatusUpdate]:
    """The statuses for a run's current state: its cells' (once it has steps
    in cells), then the whole run's. Always for the run's own sha."""
    target = f"{public_url.rstrip('/')}/runs/{run.id}"

    def update(context: str, status: tuple[StatusState, str]) -> StatusUpdate:
        return StatusUpdate(
            forge=where.forge,
            forge_repo=where.forge_repo,
            sha=run.sha,
            context=context,
            state=status[0],
            description=status[1],
            target_url=target,
            run_id=run.id,
            extra=extra,
        )

    cells: dict[str, list[StepRecord]] = {}
    for step in steps:
        if step.cell:
            cells.setdefault(step.cell, []).append(step)
    updates = [
        update(f"{where.context}/{plain(label)}", cell_status(run, label, cell_steps))
        for label, cell_steps in cells.items()
    ]
    updates.append(update(where.context, run_status(run, steps)))
    return updates


class Reporter:
    def __init__(
        self,
        store,
        forges: Mapping[str, RepoForge],
        public_url: str,
        clock: Callable[[], float] = time.time,
        log: logging.Logger | None = None,
        *,
        max_age: float = 24 * 3600.0,
        batch: int = 100,
    ) -> None:
        self.store = store
        self.forges = dict(forges)  # repo name -> where its statuses go
        self.public_url = public_url
        self.clock = clock
        self.log = log or logging.getLogger("ciwatch.reporting")
        # Runs that ended longer ago than this get no status: a forge newly
        # configured for a repository is not flooded with its whole history.
        self.max_age = max_age
        self.batch = batch

    def sweep(self) -> int:
        """Queue the statuses of every run whose state changed; returns how
        many statuses were queued."""
        queued = 0
        while True:
            runs = self.store.runs_to_report(self.forges.keys(), self.batch)
            failed = 0
            for run in runs:
                try:
                    queued += self._report(run)
                except CiwatchError as exc:
                    # One run that cannot be read must not stop the others;
                    # it stays unreported and is tried on the next sweep.
                    failed += 1
                    self.log.warning("cannot report %s: %s", run.label, exc)
            if len(runs) < self.batch or failed == len(runs):
                return queued

    def _report(self, run: Run) -> int:
        where = self.forges[run.repo]
        now = self.clock()
        changed_at = run.finished_at or run.started_at or run.created_at
        if run.state.finished and now - changed_at > self.max_age:
            self.store.set_reported(run.id, run.state, run.attempts)
            return 0
        steps = self.store.steps(run.id)
        updates = status_updates(run, steps, where, self.public_url, self._extra(run))
        for u in updates:
            self.store.enqueue_status(u, now)
        self.store.set_reported(run.id, run.state, run.attempts)
        return len(updates)

    def _extra(self, run: Run) -> tuple[tuple[str, str], ...]:
        """GitLab attaches a status to a ref: the branch or tag name, or a pull
        request's source branch when the event named it."""
        branch, tag = short_ref(run.ref)
        name = branch or tag
        if name is None:
            meta = dict(self.store.get_event(run.event_id).meta)
            name = next((meta[k] for k in _HEAD_BRANCH_KEYS if meta.get(k)), None)
        return (("ref", name),) if name else ()
