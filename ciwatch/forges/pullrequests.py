"""Pull and merge request deliveries (GitHub, Gitea, Forgejo; GitLab) read into
what ciwatch builds, and whether the run is trusted (see ciwatch.forges.payloads)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ciwatch.forges.payloadfields import SOURCE, field, is_zero, login_at, positive, sha_at
from ciwatch.forges.types import ForgeKind
from ciwatch.model import Event, EventKind

__all__ = ["PullRequest", "gitlab_merge_request", "pull_request"]

_PR_ACTIONS = MappingProxyType(
    {
        ForgeKind.GITHUB: ("opened", "synchronize", "reopened"),
        ForgeKind.GITEA: ("opened", "synchronized", "reopened"),
        ForgeKind.FORGEJO: ("opened", "synchronized", "reopened"),
    }
)


@dataclass(frozen=True)
class PullRequest:
    """What a pull/merge request delivery says, before it becomes an Event."""

    ref: str
    number: int
    sha: str
    before: str | None
    action: str
    base_branch: str
    head_branch: str
    head_repo: str | None
    fork: bool
    sender: str | None
    author: str | None

    def event(self, repo: str, allowed: frozenset[str]) -> Event:
        return Event(
            repo=repo,
            kind=EventKind.PULL_REQUEST,
            ref=self.ref,
            sha=self.sha,
            before=None if self.before is None or is_zero(self.before) else self.before,
            source=SOURCE,
            trusted=_trusted(self.fork, (self.sender, self.author), allowed),
            pr_number=self.number,
            meta=(
                ("action", self.action),
                ("base_branch", self.base_branch),
                ("head_branch", self.head_branch),
                ("head_repo", self.head_repo or ""),
                ("sender", self.sender or ""),
                ("author", self.author or ""),
                ("fork", "true" if self.fork else "false"),
            ),
        )


def pull_request(kind: ForgeKind, data: Mapping) -> tuple[PullRequest | None, str | None]:
    action = field(data, "action", str)
    if action not in _PR_ACTIONS[kind]:
        return None, f"pull_request action {action[:40]!r} is not built"
    number = field(data, "number", int, optional=True) or field(data, "pull_request.number", int)
    if kind == ForgeKind.GITHUB:
        base_id = field(data, "pull_request.base.repo.id", int)
        head_id = field(data, "pull_request.head.repo.id", int, optional=True)  # None: fork deleted
    else:
        base_id = field(data, "pull_request.base.repo_id", int)
        head_id = field(data, "pull_request.head.repo_id", int, optional=True)
    fork = head_id is None or head_id != base_id
    head_repo = field(data, "pull_request.head.repo.full_name", str, optional=True)
    if head_repo is None and not fork:
        head_repo = field(data, "repository.full_name", str)
    return PullRequest(
        ref=f"refs/pull/{positive(number, 'number')}/head",
        number=number,
        sha=sha_at(data, "pull_request.head.sha"),
        before=sha_at(data, "before", optional=True) if action == "synchronize" else None,
        action=action,
        base_branch=field(data, "pull_request.base.ref", str),
        head_branch=field(data, "pull_request.head.ref", str),
        head_repo=head_repo,
        fork=fork,
        sender=login_at(data, "sender"),
        author=login_at(data, "pull_request.user"),
    ), None


def gitlab_merge_request(data: Mapping) -> tuple[PullRequest | None, str | None]:
    action = field(data, "object_attributes.action", str)
    if action not in ("open", "reopen", "update"):
        return None, f"merge request action {action[:40]!r} is not built"
    oldrev = sha_at(data, "object_attributes.oldrev", optional=True)
    if action == "update" and oldrev is None:
        return None, "merge request update without new commits"
    iid = field(data, "object_attributes.iid", int)
    source_id = field(data, "object_attributes.source_project_id", int)
    sender = field(data, "user.username", str, optional=True)
    # The payload names the author by id only: it is known by login when it is the sender.
    author_id = field(data, "object_attributes.author_id", int, optional=True)
    same = author_id is not None and author_id == field(data, "user.id", int, optional=True)
    return PullRequest(
        ref=f"refs/merge-requests/{positive(iid, 'object_attributes.iid')}/head",
        number=iid,
        sha=sha_at(data, "object_attributes.last_commit.id"),
        before=oldrev if action == "update" else None,
        action=action,
        base_branch=field(data, "object_attributes.target_branch", str),
        head_branch=field(data, "object_attributes.source_branch", str),
        head_repo=field(data, "object_attributes.source.path_with_namespace", str, optional=True),
        fork=source_id != field(data, "object_attributes.target_project_id", int),
        sender=sender,
        author=sender if same else None,
    ), None


def _trusted(fork: bool, identities: tuple[str | None, ...], allowed: frozenset[str]) -> bool:
    if not fork and not allowed:
        return True
    return all(who is not None and who.casefold() in allowed for who in identities)
