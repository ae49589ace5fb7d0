"""Webhook deliveries to events (pure): pushes, tags and pull/merge requests of
GitHub, Gitea, Forgejo and GitLab, and which of them ciwatch builds.

Built: a branch push (new branches included) and a tag push; a pull request
opened, reopened or given new commits (GitHub ``synchronize``, Gitea/Forgejo
``synchronized``, GitLab ``update`` with ``oldrev``). Deletions and every other
event or action are *ignored*, with the reason, so the endpoint can answer 2xx.

Trust (whether the run may see secrets) uses only identities the forge
authenticated: the delivery's sender and the pull request's author, never a
commit author, branch name or title.
- pushes and tags are trusted: pushing needs write access to the repository;
- a pull request from a fork (head repository id differs from the base's, or
  the head repository is gone) is trusted only if both its sender and its
  author are in the forge's ``trusted_users``; a maintainer reopening or
  updating an outsider's pull request does not lend it their trust;
- a pull request inside the repository is trusted when ``trusted_users`` is
  empty (its branch was pushed by someone with write access, and that push was
  trusted already); with a list, the same rule as for forks applies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ciwatch.errors import CiwatchError
from ciwatch.forges.signatures import lower_headers
from ciwatch.forges.types import ForgeKind
from ciwatch.model import Event, EventKind, ref_display

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SOURCE = "webhook"

EVENT_HEADERS: Mapping[ForgeKind, tuple[str, ...]] = MappingProxyType(
    {
        ForgeKind.GITHUB: ("x-github-event",),
        ForgeKind.GITEA: ("x-gitea-event",),
        ForgeKind.FORGEJO: ("x-forgejo-event", "x-gitea-event"),
        ForgeKind.GITLAB: ("x-gitlab-event",),
    }
)
DELIVERY_HEADERS: Mapping[ForgeKind, tuple[str, ...]] = MappingProxyType(
    {
        ForgeKind.GITHUB: ("x-github-delivery",),
        ForgeKind.GITEA: ("x-gitea-delivery",),
        ForgeKind.FORGEJO: ("x-forgejo-delivery", "x-gitea-delivery"),
        # GitLab repeats Idempotency-Key on a retry of the same delivery.
        ForgeKind.GITLAB: ("idempotency-key", "x-gitlab-event-uuid"),
    }
)
# X-Gitlab-Event -> the object_kind its payload must have
_GITLAB_KINDS = MappingProxyType(
    {"Push Hook": "push", "Tag Push Hook": "tag_push", "Merge Request Hook": "merge_request"}
)
_BUILT = MappingProxyType(
    {
        ForgeKind.GITHUB: frozenset({"push", "pull_request"}),
        ForgeKind.GITEA: frozenset({"push", "pull_request"}),
        ForgeKind.FORGEJO: frozenset({"push", "pull_request"}),
        ForgeKind.GITLAB: frozenset(_GITLAB_KINDS),
    }
)
_PR_ACTIONS = MappingProxyType(
    {
        ForgeKind.GITHUB: ("opened", "synchronize", "reopened"),
        ForgeKind.GITEA: ("opened", "synchronized", "reopened"),
        ForgeKind.FORGEJO: ("opened", "synchronized", "reopened"),
    }
)


class PayloadError(CiwatchError):
    """The delivery cannot be understood: not JSON, or a field missing or of the wrong type."""


@dataclass(frozen=True)
class Parsed:
    events: tuple[Event, ...] = ()
    delivery_id: str | None = None
    ignored: str | None = None  # why nothing is built, when nothing is


@dataclass(frozen=True)
class RepoRef:
    """The forge repository a delivery is about (for a pull request: the base)."""

    full_name: str  # owner/name, group/subgroup/project
    id: str = ""  # the forge's numeric id as text, "" if not given


def event_name(kind: ForgeKind, headers: Mapping[str, str]) -> str:
    low = lower_headers(headers)
    return next((low[h].strip() for h in EVENT_HEADERS[kind] if low.get(h, "").strip()), "")


def delivery_id(kind: ForgeKind, headers: Mapping[str, str]) -> str | None:
    low = lower_headers(headers)
    value = next((low[h].strip() for h in DELIVERY_HEADERS[kind] if low.get(h, "").strip()), "")
    if not value:
        return None
    if len(value) > 200 or not all(" " < c < "\x7f" for c in value):
        raise PayloadError("the delivery id header is malformed")
    return value


def not_built(kind: ForgeKind, name: str) -> str | None:
    """Why an event kind is never built (None if it may be)."""
    if name in _BUILT[kind]:
        return None
    if not name:
        return "no event header"
    return f"{name[:60]!r} events are not built"


def load(body: bytes) -> dict:
    if body.lstrip()[:8] == b"payload=":
        raise PayloadError("the body is form-encoded: set the webhook's content type to JSON")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PayloadError(f"the body is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(data, dict):
        raise PayloadError("the body is not a JSON object")
    return data


def repository(kind: ForgeKind, data: Mapping) -> RepoRef:
    if kind == ForgeKind.GITLAB:
        name = _get(data, "project.path_with_namespace", str)
        ident = _get(data, "project.id", int, optional=True) or _get(
            data, "project_id", int, optional=True
        )
    else:
        name = _get(data, "repository.full_name", str)
        ident = _get(data, "repository.id", int, optional=True)
    return RepoRef(name, "" if ident is None else str(ident))


def parse(
    kind: ForgeKind,
    headers: Mapping[str, str],
    body: bytes,
    *,
    repo_name: str,
    trusted_users: Iterable[str] = (),
) -> Parsed:
    """The events one delivery asks for. Raises PayloadError for a body that
    cannot be understood; an event ciwatch does not build comes back `ignored`."""
    kind = ForgeKind(kind)
    name = event_name(kind, headers)
    delivery = delivery_id(kind, headers)
    if reason := not_built(kind, name):
        return Parsed(delivery_id=delivery, ignored=reason)
    return interpret(
        kind,
        name,
        load(body),
        repo_name=repo_name,
        trusted_users=trusted_users,
        delivery=delivery,
    )


def interpret(
    kind: ForgeKind,
    name: str,
    data: Mapping,
    *,
    repo_name: str,
    trusted_users: Iterable[str] = (),
    delivery: str | None = None,
) -> Parsed:
    """`parse` for a body already decoded (`name` is the event header's value)."""
    kind = ForgeKind(kind)
    if reason := not_built(kind, name):
        return Parsed(delivery_id=delivery, ignored=reason)
    allowed = frozenset(u.casefold() for u in trusted_users)
    if kind == ForgeKind.GITLAB:
        found = _get(data, "object_kind", str)
        if found != _GITLAB_KINDS[name]:
            raise PayloadError(f"object_kind {found[:40]!r} does not match X-Gitlab-Event {name!r}")
        if name != "Merge Request Hook":
            sender = _get(data, "user_username", str, optional=True)
            return _parsed(_push(data, repo_name, sender), delivery)
        pr, ignored = _gitlab_mr(data)
    elif name == "push":
        return _parsed(_push(data, repo_name, _login(data, "sender")), delivery)
    else:
        pr, ignored = _pull_request(kind, data)
    return _parsed((pr.event(repo_name, allowed) if pr else None, ignored), delivery)


def _parsed(found: tuple[Event | None, str | None], delivery: str | None) -> Parsed:
    event, ignored = found
    return Parsed(events=(event,) if event else (), delivery_id=delivery, ignored=ignored)


def _push(data: Mapping, repo: str, sender: str | None) -> tuple[Event | None, str | None]:
    ref = _ref(data, "ref")
    after = _sha(data, "after")
    if data.get("deleted") is True or _zero(after):
        return None, f"{ref_display(ref)} was deleted"
    if ref.startswith("refs/heads/"):
        kind = EventKind.PUSH
    elif ref.startswith("refs/tags/"):
        kind = EventKind.TAG
    else:
        return None, f"{ref_display(ref)} is neither a branch nor a tag"
    before = _sha(data, "before", optional=True)
    return Event(
        repo=repo,
        kind=kind,
        ref=ref,
        sha=after,
        before=None if before is None or _zero(before) else before,
        source=SOURCE,
        trusted=True,
        meta=(("sender", sender),) if sender else (),
    ), None


@dataclass(frozen=True)
class _PR:
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
            before=None if self.before is None or _zero(self.before) else self.before,
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


def _pull_request(kind: ForgeKind, data: Mapping) -> tuple[_PR | None, str | None]:
    action = _get(data, "action", str)
    if action not in _PR_ACTIONS[kind]:
        return None, f"pull_request action {action[:40]!r} is not built"
    number = _get(data, "number", int, optional=True) or _get(data, "pull_request.number", int)
    if kind == ForgeKind.GITHUB:
        base_id = _get(data, "pull_request.base.repo.id", int)
        head_id = _get(data, "pull_request.head.repo.id", int, optional=True)  # None: fork deleted
    else:
        base_id = _get(data, "pull_request.base.repo_id", int)
        head_id = _get(data, "pull_request.head.repo_id", int, optional=True)
    fork = head_id is None or head_id != base_id
    head_repo = _get(data, "pull_request.head.repo.full_name", str, optional=True)
    if head_repo is None and not fork:
        head_repo = _get(data, "repository.full_name", str)
    return _PR(
        ref=f"refs/pull/{_positive(number, 'number')}/head",
        number=number,
        sha=_sha(data, "pull_request.head.sha"),
        before=_sha(data, "before", optional=True) if action == "synchronize" else None,
        action=action,
        base_branch=_get(data, "pull_request.base.ref", str),
        head_branch=_get(data, "pull_request.head.ref", str),
        head_repo=head_repo,
        fork=fork,
        sender=_login(data, "sender"),
        author=_login(data, "pull_request.user"),
    ), None


def _gitlab_mr(data: Mapping) -> tuple[_PR | None, str | None]:
    action = _get(data, "object_attributes.action", str)
    if action not in ("open", "reopen", "update"):
        return None, f"merge request action {action[:40]!r} is not built"
    oldrev = _sha(data, "object_attributes.oldrev", optional=True)
    if action == "update" and oldrev is None:
        return None, "merge request update without new commits"
    iid = _get(data, "object_attributes.iid", int)
    source_id = _get(data, "object_attributes.source_project_id", int)
    sender = _get(data, "user.username", str, optional=True)
    # The payload names the author by id only: it is known by login when it is the sender.
    author_id = _get(data, "object_attributes.author_id", int, optional=True)
    same = author_id is not None and author_id == _get(data, "user.id", int, optional=True)
    return _PR(
        ref=f"refs/merge-requests/{_positive(iid, 'object_attributes.iid')}/head",
        number=iid,
        sha=_sha(data, "object_attributes.last_commit.id"),
        before=oldrev if action == "update" else None,
        action=action,
        base_branch=_get(data, "object_attributes.target_branch", str),
        head_branch=_get(data, "object_attributes.source_branch", str),
        head_repo=_get(data, "object_attributes.source.path_with_namespace", str, optional=True),
        fork=source_id != _get(data, "object_attributes.target_project_id", int),
        sender=sender,
        author=sender if same else None,
    ), None


def _trusted(fork: bool, identities: tuple[str | None, ...], allowed: frozenset[str]) -> bool:
    if not fork and not allowed:
        return True
    return all(who is not None and who.casefold() in allowed for who in identities)


def _login(data: Mapping, path: str) -> str | None:
    # GitHub users have `login`; Gitea and Forgejo send both `login` and `username`.
    return _get(data, f"{path}.login", str, optional=True) or _get(
        data, f"{path}.username", str, optional=True
    )


def _get(data: Mapping, path: str, typ: type, *, optional: bool = False):
    cur: object = data
    for part in path.split("."):
        if not isinstance(cur, Mapping) or cur.get(part) is None:
            if optional:
                return None
            raise PayloadError(f"{path}: missing")
        cur = cur[part]
    if not isinstance(cur, typ) or (typ is int and isinstance(cur, bool)):
        raise PayloadError(f"{path}: expected {typ.__name__}, got {type(cur).__name__}")
    if typ is str and _CONTROL.search(cur):
        raise PayloadError(f"{path}: contains control characters")
    return cur


def _sha(data: Mapping, path: str, *, optional: bool = False) -> str | None:
    value = _get(data, path, str, optional=optional)
    if value is None or (optional and not value):
        return None
    if not _SHA.fullmatch(value.lower()):
        raise PayloadError(f"{path}: not a full commit sha")
    return value.lower()


def _ref(data: Mapping, path: str) -> str:
    value = _get(data, path, str)
    if not value.startswith("refs/"):
        raise PayloadError(f"{path}: not a fully qualified ref")
    return value


def _positive(value: int, path: str) -> int:
    if value <= 0:
        raise PayloadError(f"{path}: not a positive number")
    return value


def _zero(sha: str | None) -> bool:
    return bool(sha) and set(sha) == {"0"}
