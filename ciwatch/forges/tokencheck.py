"""`ciwatch forge check`: whether a forge accepts the token, whether the token
can read the repository and may post commit statuses there, in lines that
start with "ok:", "note:", "missing:" or "error:"."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ciwatch.forges.answers import forge_message
from ciwatch.forges.status import (
    GITLAB_DEVELOPER,
    ForgeRequestError,
    api_prefix,
    clean_text,
    repo_path,
)
from ciwatch.forges.types import ForgeKind

if TYPE_CHECKING:  # the client calls in here; only its types are needed
    from ciwatch.forges.client import Answer, ForgeClient

__all__ = ["check_lines"]

_GITEA_LIKE = (ForgeKind.GITEA, ForgeKind.FORGEJO)
_USER_PATH = {ForgeKind.GITHUB: "/user", ForgeKind.GITLAB: "/api/v4/user"}
_ROLES = {
    10: "Guest",
    15: "Planner",
    20: "Reporter",
    30: "Developer",
    40: "Maintainer",
    50: "Owner",
}


def check_lines(client: ForgeClient, forge_repo: str) -> list[str]:
    """What `ciwatch forge check` says about the token and `forge_repo`."""
    if not client.has_token:
        return ["missing: no token is configured (token_file or token_credential)"]
    try:
        repo_url = client.url(f"{api_prefix(client.kind)}/{repo_path(client.kind, forge_repo)}")
    except ForgeRequestError as exc:
        return [f"error: {exc}"]
    lines: list[str] = []
    user = client.request("GET", client.url(_USER_PATH.get(client.kind, "/api/v1/user")))
    if user.status is None or user.status == 401 or 300 <= user.status < 400:
        return [_failed("sign in", user)]
    doc = user.json()
    if user.status == 200 and isinstance(doc, dict):
        login = clean_text(str(doc.get("login") or doc.get("username") or "?"))
        lines.append(f"ok: the forge accepts the token (user {login})")
    else:
        lines.append(f"note: the token cannot read its own user ({user.status}); going on")
    lines += _scopes(client, user)
    repo = client.request("GET", repo_url)
    if repo.status != 200:
        return [*lines, _failed(f"read {forge_repo}", repo)]
    lines.append(f"ok: the token can read {forge_repo}")
    admin = isinstance(doc, dict) and doc.get("is_admin") is True  # GitLab instance admin
    lines.append(_may_post(client.kind, forge_repo, repo.json(), admin))
    return lines


def _failed(what: str, answer: Answer) -> str:
    if answer.status is None:
        return f"error: cannot {what}: {answer.error}"
    if 300 <= answer.status < 400:
        loc = urlsplit(answer.headers.get("location", ""))
        where = f"{loc.scheme}://{loc.netloc}{loc.path}" if loc.netloc else "elsewhere"
        where = clean_text(where)
        return (
            f"error: cannot {what}: the forge redirects ({answer.status}) to {where};"
            " set the forge's url (or api_url) to the real API address"
        )
    said = forge_message(answer.body)
    said = f": {said}" if said else ""
    if answer.status == 401:
        return f"error: the forge refused the token (401): expired, revoked or wrong{said}"
    if answer.status == 404:
        return f"error: cannot {what}: not found, or the token cannot see it (404){said}"
    return f"error: cannot {what} ({answer.status}){said}"


def _scopes(client: ForgeClient, user: Answer) -> list[str]:
    if client.kind is ForgeKind.GITHUB:
        scopes = user.headers.get("x-oauth-scopes")
        if scopes is None:
            return [
                "note: a fine-grained or app token: it needs the repository permission"
                " 'Commit statuses: read and write'"
            ]
        have = {s.strip() for s in scopes.split(",") if s.strip()}
        if have & {"repo", "repo:status"}:
            return ["ok: the token has the repo:status scope"]
        shown = ", ".join(sorted(have)) or "none"
        return [f"missing: the token needs the repo:status (or repo) scope; it has: {shown}"]
    if client.kind is ForgeKind.GITLAB:
        me = client.request("GET", client.url("/api/v4/personal_access_tokens/self"))
        doc = me.json()
        if me.status == 200 and isinstance(doc, dict) and isinstance(doc.get("scopes"), list):
            if "api" in doc["scopes"]:
                return ["ok: the token has the api scope"]
            shown = ", ".join(clean_text(str(s)) for s in doc["scopes"]) or "none"
            return [f"missing: the token needs the api scope; it has: {shown}"]
    return []


def _may_post(kind: ForgeKind, forge_repo: str, doc: object, admin: bool) -> str:
    perms = doc.get("permissions") if isinstance(doc, dict) else None
    if not isinstance(perms, dict):
        return f"note: the forge did not say what the token may do in {forge_repo}"
    if kind is ForgeKind.GITLAB:
        levels = [
            access["access_level"]
            for access in (perms.get("project_access"), perms.get("group_access"))
            if isinstance(access, dict) and isinstance(access.get("access_level"), int)
        ]
        level = max(levels, default=0)
        if admin and level < GITLAB_DEVELOPER:
            return f"ok: may post commit statuses to {forge_repo} (instance admin)"
        if level >= GITLAB_DEVELOPER:
            return f"ok: may post commit statuses to {forge_repo} ({_ROLES.get(level, 'Owner')})"
        role = _ROLES.get(level, "no role")
        return (
            f"missing: commit statuses need the Developer role (or higher) in {forge_repo};"
            f" the token's user has: {role}"
        )
    if perms.get("push") is True:
        how = "push access"
        if kind in _GITEA_LIKE:  # scopes are not visible through the API
            how += "; the token also needs the write:repository scope"
        return f"ok: may post commit statuses to {forge_repo} ({how})"
    return (
        f"missing: commit statuses need push (write) access to {forge_repo};"
        " the token's user has read access only"
    )
