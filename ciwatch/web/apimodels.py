"""The JSON shapes of /api/ as pydantic models, so the OpenAPI description the
daemon serves is exactly what it answers. Times are unix seconds (floats)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ciwatch.model import EventKind, RunState, StepState

MAX_ID = (1 << 63) - 1  # SQLite's largest integer: a bigger id is a 422, not a 500


class Trigger(StrEnum):
    """What made a run: the source of its event."""

    HOOK = "hook"
    WATCH = "watch"
    RECONCILE = "reconcile"  # refs that moved while the daemon was down
    POLL = "poll"
    WEBHOOK = "webhook"
    CRON = "cron"
    MANUAL = "manual"
    CLI = "cli"


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class RunOut(_Out):
    id: int
    repo: str
    number: int
    label: str = Field(description='"repo#number"')
    state: RunState
    kind: EventKind
    ref: str = Field(description="fully qualified, e.g. refs/heads/main")
    ref_name: str = Field(description='for display: the branch, the tag, or "PR #N"')
    branch: str | None
    tag: str | None
    pr_number: int | None
    sha: str
    short_sha: str
    subject: str | None = Field(description="the commit's subject line, once read")
    author: str | None
    source: str = Field(description="what triggered it: hook, watch, poll, webhook, cron, ...")
    trusted: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    queue_wait: float | None = Field(
        description="started_at - created_at; while queued, how long it has waited so far"
    )
    duration: float | None = Field(
        description="finished_at - started_at; while running, how long it has run so far"
    )
    attempt: int = Field(description="attempts so far (a lost worker makes a second)")
    reason: str
    wait_reason: str
    cancel_requested: str | None
    url: str = Field(description="the run's page")


class RunPage(_Out):
    runs: list[RunOut] = Field(description="newest first")
    next: int | None = Field(description="pass as `before` for the next page; null at the end")


class SightingOut(_Out):
    source: str
    at: float


class EventOut(_Out):
    kind: EventKind
    ref: str
    sha: str
    before: str | None
    source: str
    trusted: bool
    pr_number: int | None
    sightings: list[SightingOut]


class AttemptOut(_Out):
    number: int
    state: RunState
    worker: str
    started_at: float
    finished_at: float | None
    reason: str


class StepOut(_Out):
    id: int
    run_id: int
    attempt: int
    cell: str = Field(description='matrix cell label, "" without a matrix')
    index: int
    name: str
    state: StepState
    exit_code: int | None
    reason: str
    failure: str | None
    started_at: float | None
    finished_at: float | None
    duration: float | None
    cpu_seconds: float | None
    max_rss_kib: int | None
    log_bytes: int
    log_truncated: bool
    log_url: str


class ArtifactOut(_Out):
    name: str
    size: int


class RunDetail(RunOut):
    event: EventOut
    attempts: list[AttemptOut]
    cells: list[str]
    steps: list[StepOut] = Field(description="every attempt's, by attempt, cell and index")
    why: list[str] = Field(description="what `ciwatch why` says about this run")
    artifacts: list[ArtifactOut]


class BranchOut(_Out):
    branch: str
    run: RunOut


class RepoOut(_Out):
    name: str
    default_branch: str
    branches: list[BranchOut] = Field(description="latest run per branch, default branch first")
    badge_url: str


class SessionOut(_Out):
    actions: bool = Field(description="a token is configured: cancel, retry, trigger possible")
    signed_in: bool


class ActionOut(_Out):
    ok: bool
    run: RunOut


class TriggerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repo: str = Field(min_length=1, max_length=200)
    branch: str | None = Field(
        None, max_length=1000, description="default: the repository's default branch"
    )


class TokenIn(BaseModel):
    token: str = Field(max_length=4096)


class Problem(_Out):
    detail: str


StatusOut = dict[str, Any]
SourceOut = dict[str, Any]
