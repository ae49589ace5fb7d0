"""Commit status requests for each forge, and what each answer means (pure).

`build_request` turns a StatusUpdate into the one HTTP request a forge expects
(endpoint, state vocabulary, field limits); ciwatch.forges.answers says what
the forge's answer means. No I/O here: the HTTP client sends.
Forge facts (limits, quirks) are from ../shared/specs/README.md.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from ciwatch import __version__
from ciwatch.errors import CiwatchError
from ciwatch.forges.types import ForgeKind, StatusState, StatusUpdate

ELLIPSIS = "…"
# GitHub answers 422 past 140 description characters; GitLab 400 past 255 for
# description, target_url and ref. Gitea/Forgejo store TEXT: 255 is our own cap,
# so a status stays a short line in every forge's UI.
DESCRIPTION_LIMIT = {
    ForgeKind.GITHUB: 140,
    ForgeKind.GITEA: 255,
    ForgeKind.FORGEJO: 255,
    ForgeKind.GITLAB: 255,
}
GITLAB_FIELD_LIMIT = 255
URL_LIMIT = 2048  # a link longer than this is dropped, never cut (a cut URL is a wrong link)
GITLAB_DEVELOPER = 30  # access level needed for :create_commit_status

_STATES = {
    ForgeKind.GITHUB: {
        StatusState.PENDING: "pending",
        StatusState.RUNNING: "pending",
        StatusState.SUCCESS: "success",
        StatusState.WARNING: "success",
        StatusState.FAILURE: "failure",
        StatusState.ERROR: "error",
        StatusState.CANCELED: "error",
    },
    ForgeKind.GITLAB: {
        StatusState.PENDING: "pending",
        StatusState.RUNNING: "running",
        StatusState.SUCCESS: "success",
        StatusState.WARNING: "success",
        StatusState.FAILURE: "failed",
        StatusState.ERROR: "failed",
        StatusState.CANCELED: "canceled",
    },
}
_STATES[ForgeKind.GITEA] = {**_STATES[ForgeKind.GITHUB], StatusState.WARNING: "warning"}
_STATES[ForgeKind.FORGEJO] = _STATES[ForgeKind.GITEA]

# ANSI CSI and OSC sequences go whole, so no "[31m" residue is left as text.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")
_SHA = re.compile(r"^[0-9a-fA-F]{4,64}$")


class ForgeRequestError(CiwatchError):
    """A status cannot be expressed for this forge (bad repository name, sha, URL)."""


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)  # never the token
    json: Mapping[str, object] | None = None


def state_for(kind: ForgeKind, state: StatusState) -> str:
    """The forge's word for ciwatch's state."""
    return _STATES[ForgeKind(kind)][StatusState(state)]


def clean_text(text: str) -> str:
    """One line of plain text: escapes, control and bidi characters removed,
    newlines and runs of whitespace turned into single spaces, undecodable
    bytes (surrogates) replaced."""
    text = _ANSI.sub("", text)
    out = []
    for ch in text:
        if ch.isspace():
            out.append(" ")
        elif ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cs"):
            out.append("\ufffd" if unicodedata.category(ch) == "Cs" else "")
        else:
            out.append(ch)
    return " ".join("".join(out).split())


def truncate(text: str, limit: int) -> str:
    """At most `limit` characters, ending in "…" when cut. The cut never splits
    a character from the combining marks that follow it."""
    if len(text) <= limit:
        return text
    cut = limit - len(ELLIPSIS)
    while cut > 0 and unicodedata.combining(text[cut]):
        cut -= 1
    return text[:cut].rstrip() + ELLIPSIS


def safe_target_url(url: str, limit: int = URL_LIMIT) -> str:
    """The URL when it is an absolute http(s) link without spaces or control
    characters and within `limit`; else "" (a status without a link)."""
    if not url or len(url) > limit or any(c.isspace() or not c.isprintable() for c in url):
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return ""
    return url


def description_for(kind: ForgeKind, update: StatusUpdate) -> str:
    text = clean_text(update.description)
    if StatusState(update.state) is StatusState.CANCELED and kind is not ForgeKind.GITLAB:
        # Only GitLab has a canceled state; elsewhere "error" must say why.
        if "cancel" not in text.lower():
            text = f"canceled: {text}" if text else "canceled"
    return truncate(text, DESCRIPTION_LIMIT[kind])


def api_base(kind: ForgeKind | str, url: str, api_url: str | None = None) -> str:
    """Where the forge's REST API lives. github.com -> https://api.github.com;
    GitHub Enterprise -> api_url (else <url>/api/v3); Gitea, Forgejo and GitLab:
    the instance URL (request paths carry /api/v1 or /api/v4)."""
    kind = ForgeKind(kind)
    base = (api_url or "").strip().rstrip("/")
    if base and kind is not ForgeKind.GITHUB:
        # api_url may be given with the version suffix; the paths add it again.
        for suffix in ("/api/v1", "/api/v4"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
    if not base:
        base = url.strip().rstrip("/")
        if kind is ForgeKind.GITHUB:
            host = (urlsplit(base).hostname or "").lower()
            base = (
                "https://api.github.com"
                if host in ("github.com", "www.github.com")
                else (base + "/api/v3")
            )
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ForgeRequestError(f"forge API URL must be http(s)://host[/path], not {base!r}")
    return base


def auth_headers(kind: ForgeKind | str, token: str) -> dict[str, str]:
    """The header that carries the token, in each forge's form."""
    token = token.strip()
    if not token or any(not c.isprintable() or c.isspace() for c in token):
        # Never echo the token: it goes nowhere but the header.
        raise ForgeRequestError("the forge token is empty or contains spaces or control characters")
    kind = ForgeKind(kind)
    if kind is ForgeKind.GITHUB:
        return {"Authorization": f"Bearer {token}"}
    if kind is ForgeKind.GITLAB:
        return {"PRIVATE-TOKEN": token}
    return {"Authorization": f"token {token}"}  # "token" is matched case-sensitively


def base_headers(kind: ForgeKind | str) -> dict[str, str]:
    headers = {"User-Agent": f"ciwatch/{__version__}", "Accept": "application/json"}
    if ForgeKind(kind) is ForgeKind.GITHUB:
        headers["Accept"] = "application/vnd.github+json"
        headers["X-GitHub-Api-Version"] = "2022-11-28"
    return headers


def repo_path(kind: ForgeKind | str, forge_repo: str) -> str:
    """The repository part of an API path: "repos/o/r" or "projects/<id>"."""
    kind = ForgeKind(kind)
    if kind is ForgeKind.GITLAB:
        parts = forge_repo.split("/")
        if not forge_repo or not all(_SEGMENT.match(p) and p not in (".", "..") for p in parts):
            raise ForgeRequestError(f"not a GitLab project id or path: {forge_repo!r}")
        return "projects/" + quote(forge_repo, safe="")
    parts = forge_repo.split("/")
    if len(parts) != 2 or not all(_SEGMENT.match(p) and p not in (".", "..") for p in parts):
        raise ForgeRequestError(f"forge_repo must be owner/name, not {forge_repo!r}")
    return "repos/" + "/".join(quote(p, safe="") for p in parts)


def api_prefix(kind: ForgeKind | str) -> str:
    kind = ForgeKind(kind)
    return {ForgeKind.GITHUB: "", ForgeKind.GITLAB: "/api/v4"}.get(kind, "/api/v1")


def _check_sha(sha: str) -> str:
    if not _SHA.match(sha):
        raise ForgeRequestError(f"not a commit sha: {clean_text(sha)[:80]!r}")
    return sha.lower()


def _gitlab_ref(ref: str) -> str:
    """GitLab wants a branch or tag name; too long or odd refs are left out
    (GitLab then picks the newest pipeline's ref) rather than sent broken."""
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix) :]
            break
    if not ref or len(ref) > GITLAB_FIELD_LIMIT or clean_text(ref) != ref:
        return ""
    return ref


def build_request(kind: ForgeKind | str, api_base: str, update: StatusUpdate) -> Request:
    """The status POST for this forge; headers without the token."""
    kind = ForgeKind(kind)
    sha = _check_sha(update.sha)
    url = f"{api_base.rstrip('/')}{api_prefix(kind)}/{repo_path(kind, update.forge_repo)}"
    url += f"/statuses/{sha}"
    context = truncate(clean_text(update.context), GITLAB_FIELD_LIMIT) or "ciwatch"
    body: dict[str, object] = {"state": state_for(kind, update.state)}
    description = description_for(kind, update)
    link_limit = GITLAB_FIELD_LIMIT if kind is ForgeKind.GITLAB else URL_LIMIT
    target_url = safe_target_url(update.target_url, link_limit)
    if kind is ForgeKind.GITLAB:
        body["name"] = context
        extra = dict(update.extra)
        ref = _gitlab_ref(extra.get("ref", ""))
        if ref:
            body["ref"] = ref
        if extra.get("pipeline_id", "").isdigit():
            body["pipeline_id"] = int(extra["pipeline_id"])
    else:
        body["context"] = context
    if description:
        body["description"] = description
    if target_url:
        body["target_url"] = target_url
    return Request("POST", url, base_headers(kind), body)


# --- answers -------------------------------------------------------------------------
