"""The compiled pipeline: what the runner and executors see (never YAML).

Data layer: stdlib and ciwatch.model only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from ciwatch.model import EventKind


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a pipeline or config file, with its position (1-based)."""

    file: str
    line: int
    col: int
    path: str  # field path, e.g. "steps[2].timeout"; "" for the document
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        what = f"{self.path}: {self.message}" if self.path else self.message
        tag = "warning: " if self.severity is Severity.WARNING else ""
        return f"{where}: {tag}{what}"


class RetryOn(StrEnum):
    INFRA = "infra"  # ciwatch could not start or keep the step (spawn, workspace, lost worker)
    FAILURE = "failure"  # any failure, the step's own included


class OnNewCommit(StrEnum):
    CANCEL_RUNNING = "cancel-running"
    CANCEL_PENDING = "cancel-pending"
    QUEUE = "queue"
    NEVER = "never"


@dataclass(frozen=True)
class Resources:
    """A step's resource limits (sizes in bytes, CPU time in seconds); None: no limit.

    In a PlanStep they are final: pipeline, step and operator default merged,
    and clamped to the operator's maximum.
    """

    memory_bytes: int | float | None = None
    processes: int | float | None = None
    open_files: int | float | None = None
    file_size_bytes: int | float | None = None
    cpu_seconds: int | float | None = None


@dataclass(frozen=True)
class Limits:
    """Bounds from the daemon config that compile applies (clamping, defaults)."""

    default_timeout: float = 3600.0
    max_timeout: float = 6 * 3600.0
    max_parallel: int = 4  # steps of one run at once
    max_retries: int = 5
    # A step's resources: what it may ask for at most (also what it gets when
    # neither it nor the pipeline nor `default_resources` says), and the default.
    max_resources: Resources = field(default_factory=Resources)
    default_resources: Resources = field(default_factory=Resources)


@dataclass(frozen=True)
class EventContext:
    """What `when` is evaluated against."""

    kind: EventKind
    ref: str
    sha: str
    branch: str | None = None
    tag: str | None = None
    # Paths changed between `before` (or the merge base with the default branch)
    # and `sha`. None means unknown: path filters then match (build rather than miss).
    changed_paths: tuple[str, ...] | None = None
    repo: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    max: int = 0
    on: frozenset[RetryOn] = frozenset({RetryOn.INFRA})


@dataclass(frozen=True)
class Concurrency:
    group: str  # expanded, e.g. "app/main"
    on_new_commit: OnNewCommit = OnNewCommit.QUEUE


@dataclass(frozen=True)
class PlanStep:
    index: int  # position in the file (0-based); log files are named by it
    name: str
    script: str
    shell: tuple[str, ...] = ("sh", "-e")  # argv; the script file path is appended
    env: tuple[tuple[str, str], ...] = ()  # pipeline env, matrix values, step env merged
    timeout: float = 3600.0  # seconds, already clamped
    idle_timeout: float | None = None
    depends_on: tuple[str, ...] = ()  # names; empty + file order means "after the previous"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    allow_failure: bool = False
    # Run only if the run's status so far is in this set: {"success"} by default;
    # {"failure"} for clean-up/notify steps; both for "always".
    run_on: frozenset[str] = frozenset({"success"})
    secrets: tuple[str, ...] = ()
    interruptible: bool = True
    artifacts: tuple[str, ...] = ()
    skip_reason: str | None = None  # set when `when` excluded the step for this event
    resources: Resources = field(default_factory=Resources)  # already defaulted and clamped
    image: str | None = None  # container image; only the container executor uses it


@dataclass(frozen=True)
class Plan:
    """One matrix cell (or the whole pipeline without a matrix), ready to run."""

    cell: tuple[tuple[str, str], ...] = ()  # matrix values, in key order
    steps: tuple[PlanStep, ...] = ()
    timeout: float = 3600.0
    concurrency: Concurrency | None = None
    env: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        """ "" without a matrix, else e.g. "python=3.11,os=linux"; used in status contexts."""
        return ",".join(f"{k}={v}" for k, v in self.cell)


@dataclass(frozen=True)
class CompiledPipeline:
    plans: tuple[Plan, ...]
    skip_reason: str | None = None  # pipeline-level `when` did not match: the run is skipped
    warnings: tuple[Diagnostic, ...] = ()
