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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ciwatch.forges.payloadfields import (
    SOURCE,
    PayloadError,
    field,
    is_zero,
    login_at,
    ref_at,
    sha_at,
)
from ciwatch.forges.pullrequests import gitlab_merge_request, pull_request
from ciwatch.forges.signatures import lower_headers
from ciwatch.forges.types import ForgeKind
from ciwatch.model import Event, EventKind, ref_display

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
        name = field(data, "project.path_with_namespace", str)
        ident = field(data, "project.id", int, optional=True) or field(
            data, "project_id", int, optional=True
        )
    else:
        name = field(data, "repository.full_name", str)
        ident = field(data, "repository.id", int, optional=True)
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
        found = field(data, "object_kind", str)
        if found != _GITLAB_KINDS[name]:
            raise PayloadError(f"object_kind {found[:40]!r} does not match X-Gitlab-Event {name!r}")
        if name != "Merge Request Hook":
            sender = field(data, "user_username", str, optional=True)
            return _parsed(_push(data, repo_name, sender), delivery)
        pr, ignored = gitlab_merge_request(data)
    elif name == "push":
        return _parsed(_push(data, repo_name, login_at(data, "sender")), delivery)
    else:
        pr, ignored = pull_request(kind, data)
    return _parsed((pr.event(repo_name, allowed) if pr else None, ignored), delivery)


def _parsed(found: tuple[Event | None, str | None], delivery: str | None) -> Parsed:
    event, ignored = found
    return Parsed(events=(event,) if event else (), delivery_id=delivery, ignored=ignored)


def _push(data: Mapping, repo: str, sender: str | None) -> tuple[Event | None, str | None]:
    ref = ref_at(data, "ref")
    after = sha_at(data, "after")
    if data.get("deleted") is True or is_zero(after):
        return None, f"{ref_display(ref)} was deleted"
    if ref.startswith("refs/heads/"):
        kind = EventKind.PUSH
    elif ref.startswith("refs/tags/"):
        kind = EventKind.TAG
    else:
        return None, f"{ref_display(ref)} is neither a branch nor a tag"
    before = sha_at(data, "before", optional=True)
    return Event(
        repo=repo,
        kind=kind,
        ref=ref,
        sha=after,
        before=None if before is None or is_zero(before) else before,
        source=SOURCE,
        trusted=True,
        meta=(("sender", sender),) if sender else (),
    ), None
