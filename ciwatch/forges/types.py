"""What every forge module agrees on (data layer: stdlib and model only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class ForgeKind(StrEnum):
    GITHUB = "github"
    GITEA = "gitea"
    FORGEJO = "forgejo"
    GITLAB = "gitlab"


class StatusState(StrEnum):
    """ciwatch's status vocabulary; each forge client maps it to its own."""

    PENDING = "pending"  # queued
    RUNNING = "running"  # GitLab has it; the others show pending
    SUCCESS = "success"
    WARNING = "warning"  # passed with allowed failures (Gitea/Forgejo show it; others: success)
    FAILURE = "failure"  # the code failed
    ERROR = "error"  # ciwatch could not run it
    CANCELED = "canceled"  # GitLab has it; the others show error ("canceled")


@dataclass(frozen=True)
class StatusUpdate:
    """One status for one (sha, context) on one forge repository."""

    forge: str  # the name under `forges:` in the config
    forge_repo: str  # owner/name, group/project, or a GitLab numeric id
    sha: str
    context: str  # e.g. "ciwatch/.ciwatch.yml" or "ciwatch/.ciwatch.yml/python=3.12"
    state: StatusState
    description: str = ""
    target_url: str = ""
    run_id: int | None = None
    extra: tuple[tuple[str, str], ...] = field(default=())  # e.g. GitLab ref, pipeline_id


class Verdict(StrEnum):
    """What a forge's answer to a status POST means for the outbox."""

    DELIVERED = "delivered"
    APPLIED = "applied"  # e.g. GitLab's "Cannot transition status": it is there already
    RETRY = "retry"  # 5xx, timeout, connection error, rate limit: try again later
    AUTH = "auth"  # 401/403 for the token: not hot-looped; shown in status
    DROP = "drop"  # unknown sha or repository (404/422): give up after a few tries


@dataclass(frozen=True)
class Delivery:
    verdict: Verdict
    http_status: int | None = None
    retry_after: float | None = None  # seconds to wait at least (retry-after, rate-limit reset)
    message: str = ""
