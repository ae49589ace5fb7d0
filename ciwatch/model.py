"""Frozen data shared by every layer: events, runs, attempts, step results.

Ref names are ``str`` decoded with ``surrogateescape`` so that refs holding
non-UTF-8 bytes survive losslessly (``ref_bytes`` gives the raw bytes back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class EventKind(StrEnum):
    PUSH = "push"
    TAG = "tag"
    PULL_REQUEST = "pull_request"
    CRON = "cron"
    MANUAL = "manual"


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"  # the code failed: a step exited non-zero or timed out
    ERROR = "error"  # ciwatch could not run it: clone, invalid pipeline, spawn
    CANCELED = "canceled"
    SKIPPED = "skipped"

    @property
    def finished(self) -> bool:
        return self not in (RunState.QUEUED, RunState.RUNNING)


class StepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"  # non-zero exit, timeout, idle timeout
    ERROR = "error"  # could not be started (infra)
    CANCELED = "canceled"
    SKIPPED = "skipped"


class CancelMode(StrEnum):
    """How a run is asked to stop (set in the store; the worker running it obeys)."""

    SUPERSEDE = "supersede"  # a newer commit: steps with `interruptible: false` finish
    CANCEL = "cancel"  # a user: everything stops, the run ends canceled
    INTERRUPT = "interrupt"  # a shutdown: everything stops, the run is queued again


class FailureKind(StrEnum):
    """Why a step did not succeed; drives `retry.on` and the run's state."""

    EXIT = "exit"  # non-zero exit status
    SIGNAL = "signal"  # killed by a signal it did not get from us
    TIMEOUT = "timeout"
    IDLE_TIMEOUT = "idle_timeout"
    CANCELED = "canceled"
    INFRA = "infra"  # ciwatch's side: spawn failed, workspace lost, worker lost


def ref_bytes(ref: str) -> bytes:
    """The raw bytes of a ref name held as a surrogateescape str."""
    return ref.encode("utf-8", "surrogateescape")


def ref_from_bytes(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def ref_display(ref: str) -> str:
    """A printable form: undecodable bytes become U+FFFD, control chars escaped."""
    text = ref_bytes(ref).decode("utf-8", "replace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def short_ref(ref: str) -> tuple[str | None, str | None]:
    """(branch, tag) of a fully qualified ref; (None, None) for anything else."""
    if ref.startswith("refs/heads/"):
        return ref[len("refs/heads/") :], None
    if ref.startswith("refs/tags/"):
        return None, ref[len("refs/tags/") :]
    return None, None


@dataclass(frozen=True)
class Event:
    """Something that asks for a run: a push, a tag, a PR head, a cron tick, a manual trigger."""

    repo: str
    kind: EventKind
    ref: str  # fully qualified, e.g. refs/heads/main
    sha: str
    before: str | None = None  # previous sha of the ref, None if new or unknown
    source: str = "manual"  # hook | watch | poll | webhook | cron | manual | cli
    trusted: bool = True  # untrusted events (fork PRs) get no secrets
    pr_number: int | None = None
    meta: tuple[tuple[str, str], ...] = ()

    @property
    def dedupe_key(self) -> tuple:
        return (self.repo, self.kind.value, ref_bytes(self.ref), self.sha, self.pr_number)

    @property
    def branch(self) -> str | None:
        return short_ref(self.ref)[0]

    @property
    def tag(self) -> str | None:
        return short_ref(self.ref)[1]


@dataclass(frozen=True)
class Repo:
    id: int
    name: str
    url: str  # a local path or a remote URL
    default_branch: str = "main"


@dataclass(frozen=True)
class Run:
    id: int
    repo_id: int
    repo: str
    number: int  # per repo: 1, 2, 3 …
    event_id: int
    kind: EventKind
    ref: str
    sha: str
    state: RunState
    source: str
    created_at: float
    trusted: bool = True
    before: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    reason: str = ""
    attempts: int = 0
    # Scheduling, filled by the daemon's scheduler (None/"" for `ciwatch run`):
    concurrency_group: str | None = None
    on_new_commit: str | None = None
    resolved_at: float | None = None  # when the scheduler read its pipeline
    priority: int = 0  # higher first; FIFO within a priority
    cancel_requested: str | None = None  # a reason, once cancel was asked
    cancel_mode: CancelMode | None = None
    wait_reason: str = ""  # what a queued run waits on

    @property
    def label(self) -> str:
        return f"{self.repo}#{self.number}"


@dataclass(frozen=True)
class Attempt:
    id: int
    run_id: int
    number: int  # 1, 2 … ; a retry after a lost worker is attempt 2
    state: RunState
    worker: str
    started_at: float
    lease_until: float
    finished_at: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class StepResult:
    """What happened to one step. A failing step is this value, never an exception."""

    state: StepState
    exit_code: int | None = None
    failure: FailureKind | None = None
    reason: str = ""  # human text: "exit code 2", "timed out after 10m (SIGTERM, then SIGKILL)"
    started_at: float | None = None
    finished_at: float | None = None
    allowed_failure: bool = False  # failed, but `allow_failure: true`
    tries: int = 1
    log_bytes: int = 0
    log_truncated: bool = False
    cpu_seconds: float | None = None  # user + system, the step's processes together
    max_rss_kib: int | None = None  # peak memory: the step's cgroup, else its largest process

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def passed(self) -> bool:
        """Counts as passing for the run: success, skipped, or an allowed failure."""
        return self.state in (StepState.SUCCESS, StepState.SKIPPED) or self.allowed_failure


@dataclass(frozen=True)
class StepRecord:
    """A stored step row, as the store gives it back."""

    id: int
    run_id: int
    attempt: int
    cell: str  # matrix cell label, "" without a matrix
    index: int
    name: str
    state: StepState
    log_path: str
    result: StepResult = field(default_factory=lambda: StepResult(StepState.PENDING))
