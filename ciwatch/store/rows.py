"""Rows to model dataclasses: callers never see a sqlite row."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from ciwatch.errors import NotFoundError
from ciwatch.model import (
    Attempt,
    CancelMode,
    Event,
    EventKind,
    FailureKind,
    Repo,
    Run,
    RunState,
    StepRecord,
    StepResult,
    StepState,
    ref_from_bytes,
)


@dataclass(frozen=True)
class Artifact:
    """A file a step produced and ciwatch kept."""

    id: int
    run_id: int
    step_id: int | None
    path: str  # as the pipeline named it, relative to the workspace
    size: int
    stored_path: str  # where ciwatch keeps the copy


@dataclass(frozen=True)
class Sighting:
    """One source that reported an event: the "why" behind a run."""

    source: str
    seen_at: float


RUN_SELECT = """
    SELECT r.id, r.repo_id, p.name AS repo, r.number, r.event_id, r.kind, r.ref, r.sha,
           r.state, r.source, r.created_at, r.trusted, r.before, r.started_at,
           r.finished_at, r.reason, r.concurrency_group, r.on_new_commit, r.resolved_at,
           r.priority, r.cancel_requested, r.cancel_mode, r.wait_reason,
           (SELECT COUNT(*) FROM attempts a WHERE a.run_id = r.id) AS attempts
    FROM runs r JOIN repos p ON p.id = r.repo_id
"""

EVENT_SELECT = """
    SELECT p.name AS repo, e.kind, e.ref, e.sha, e.before, e.source, e.trusted,
           e.pr_number, e.meta
    FROM events e JOIN repos p ON p.id = e.repo_id
"""


def fetch_run(c: sqlite3.Connection, run_id: int) -> Run:
    row = c.execute(RUN_SELECT + " WHERE r.id = ?", (run_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"no run {run_id}")
    return to_run(row)


def to_repo(row: sqlite3.Row) -> Repo:
    return Repo(
        id=row["id"], name=row["name"], url=row["url"], default_branch=row["default_branch"]
    )


def to_run(row: sqlite3.Row) -> Run:
    return Run(
        id=row["id"],
        repo_id=row["repo_id"],
        repo=row["repo"],
        number=row["number"],
        event_id=row["event_id"],
        kind=EventKind(row["kind"]),
        ref=ref_from_bytes(row["ref"]),
        sha=row["sha"],
        state=RunState(row["state"]),
        source=row["source"],
        created_at=row["created_at"],
        trusted=bool(row["trusted"]),
        before=row["before"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        reason=row["reason"],
        attempts=row["attempts"],
        concurrency_group=row["concurrency_group"],
        on_new_commit=row["on_new_commit"],
        resolved_at=row["resolved_at"],
        priority=row["priority"],
        cancel_requested=row["cancel_requested"],
        cancel_mode=CancelMode(row["cancel_mode"]) if row["cancel_mode"] else None,
        wait_reason=row["wait_reason"],
    )


def to_attempt(row: sqlite3.Row) -> Attempt:
    return Attempt(
        id=row["id"],
        run_id=row["run_id"],
        number=row["number"],
        state=RunState(row["state"]),
        worker=row["worker"],
        started_at=row["started_at"],
        lease_until=row["lease_until"],
        finished_at=row["finished_at"],
        reason=row["reason"],
    )


def to_step(row: sqlite3.Row) -> StepRecord:
    state = StepState(row["state"])
    result = StepResult(
        state=state,
        exit_code=row["exit_code"],
        failure=FailureKind(row["failure"]) if row["failure"] else None,
        reason=row["reason"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        allowed_failure=bool(row["allowed_failure"]),
        tries=row["tries"],
        log_bytes=row["log_bytes"],
        log_truncated=bool(row["log_truncated"]),
        cpu_seconds=row["cpu_seconds"],
        max_rss_kib=row["max_rss_kib"],
    )
    return StepRecord(
        id=row["id"],
        run_id=row["run_id"],
        attempt=row["attempt"],
        cell=row["cell"],
        index=row["idx"],
        name=row["name"],
        state=state,
        log_path=row["log_path"],
        result=result,
    )


def to_artifact(row: sqlite3.Row) -> Artifact:
    return Artifact(
        id=row["id"],
        run_id=row["run_id"],
        step_id=row["step_id"],
        path=row["path"],
        size=row["size"],
        stored_path=row["stored_path"],
    )


def to_event(row: sqlite3.Row) -> Event:
    return Event(
        repo=row["repo"],
        kind=EventKind(row["kind"]),
        ref=ref_from_bytes(row["ref"]),
        sha=row["sha"],
        before=row["before"],
        source=row["source"],
        trusted=bool(row["trusted"]),
        pr_number=row["pr_number"],
        meta=tuple((str(k), str(v)) for k, v in json.loads(row["meta"])),
    )


def meta_json(event: Event) -> str:
    # A list of pairs, not an object: keeps order and repeated keys as given.
    return json.dumps([list(pair) for pair in event.meta])
