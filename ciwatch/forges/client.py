"""Commit statuses over HTTP: one client per configured forge (adapter).

Every call has (connect, read) timeouts, a bounded and deadline-limited body
read, and follows no redirect: the token goes to the configured API host only.
HTTP trouble never raises; it becomes a Delivery (see forges.status.classify).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import requests
import urllib3
from requests.auth import AuthBase

from ciwatch.forges.status import (
    GITLAB_DEVELOPER,
    ForgeRequestError,
    api_prefix,
    auth_headers,
    base_headers,
    build_request,
    classify,
    clean_text,
    forge_message,
    repo_path,
)
from ciwatch.forges.types import Delivery, ForgeKind, StatusUpdate, Verdict

MAX_BODY = 1 << 20  # a forge's answer is small; more is cut, never buffered whole
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


class _TokenAuth(AuthBase):
    """Sets the forge's token header. Being an `auth` object also keeps
    requests from replacing it with ~/.netrc credentials."""

    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = headers

    def __call__(self, r):
        r.headers.update(self._headers)
        return r

    def __repr__(self) -> str:
        return "_TokenAuth(<hidden>)"


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no answer (see `error`)
    headers: dict[str, str]  # names lower-cased
    body: bytes
    error: str = ""

    def json(self) -> object:
        try:
            return json.loads(self.body.decode("utf-8", "replace"))
        except ValueError:
            return None


class ForgeClient:
    """Posts commit statuses to one forge and checks what its token may do."""

    def __init__(
        self,
        kind: ForgeKind | str,
        api_base: str,
        token: str | None,
        *,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (5, 15),
        log: logging.Logger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kind = ForgeKind(kind)
        self.api_base = api_base.rstrip("/")
        self._token = token.strip() if token else None
        self._auth = _TokenAuth(auth_headers(self.kind, token)) if token else None
        self._session = session or requests.Session()
        self._timeout = timeout
        self._log = log or logging.getLogger("ciwatch.forges")
        self._clock = clock

    def close(self) -> None:
        self._session.close()

    # --- sending ----------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "[MASKED]") if self._token else text

    def _url(self, path: str) -> str:
        return f"{self.api_base}{path}"

    def request(self, method: str, url: str, payload: object = None) -> Answer:
        """One HTTP exchange; never raises for network or HTTP trouble."""
        # identity: the body is read raw and capped, so no decompression bomb
        headers = {**base_headers(self.kind), "Accept-Encoding": "identity"}
        try:
            resp = self._session.request(
                method,
                url,
                headers=headers,
                json=payload,
                auth=self._auth,
                timeout=self._timeout,
                allow_redirects=False,
                stream=True,
            )
        except requests.RequestException as exc:
            return Answer(None, {}, b"", self._scrub(self._why(exc, url)))
        try:
            body, error = self._read(resp)
        finally:
            resp.close()
        headers = {k.lower(): v for k, v in resp.headers.items()}
        return Answer(resp.status_code, headers, body, error)

    def _read(self, resp: requests.Response) -> tuple[bytes, str]:
        # The read timeout bounds each recv; the deadline bounds a trickling body.
        deadline = time.monotonic() + sum(self._timeout)
        raw = resp.raw
        read = getattr(raw, "read1", None) or (lambda n: raw.read(min(n, 1024)))
        chunks: list[bytes] = []
        size = 0
        try:
            while size < MAX_BODY:
                if time.monotonic() > deadline:
                    return b"".join(chunks), "the answer trickled in too slowly; cut"
                chunk = read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            return b"".join(chunks), f"the answer broke off: {type(exc).__name__}"
        return b"".join(chunks)[:MAX_BODY], ""

    def _why(self, exc: Exception, url: str) -> str:
        host = urlsplit(url).netloc or url
        if isinstance(exc, requests.ConnectTimeout):
            return f"connecting to {host} timed out after {self._timeout[0]:g}s"
        if isinstance(exc, requests.ReadTimeout):
            return f"{host} did not answer within {self._timeout[1]:g}s"
        if isinstance(exc, requests.exceptions.SSLError):
            return f"TLS failure talking to {host}"
        if isinstance(exc, requests.ConnectionError):
            reason = str(exc)
            for known in ("Connection refused", "Name or service not known", "No route to host"):
                if known in reason:
                    return f"cannot connect to {host}: {known.lower()}"
            return f"cannot connect to {host}"
        return f"request to {host} failed: {type(exc).__name__}"

    # --- statuses ---------------------------------------------------------------------

    def post_status(self, update: StatusUpdate) -> Delivery:
        """Post one status; the verdict tells the outbox what to do next."""
        try:
            req = build_request(self.kind, self.api_base, update)
        except ForgeRequestError as exc:
            return Delivery(Verdict.DROP, None, None, str(exc))
        if self._auth is None:
            return Delivery(Verdict.AUTH, None, None, "no token is configured for this forge")
        answer = self.request(req.method, req.url, req.json)
        if answer.status is None:
            delivery = Delivery(Verdict.RETRY, None, None, answer.error)
        else:
            delivery = classify(
                self.kind, answer.status, answer.headers, answer.body, self._clock()
            )
            if 300 <= answer.status < 400:
                where = clean_text(urlsplit(answer.headers.get("location", "")).netloc)
                where = where or "elsewhere"
                delivery = Delivery(
                    Verdict.RETRY,
                    answer.status,
                    None,
                    f"the forge redirected to {where}; not followed (the token goes to"
                    f" {urlsplit(self.api_base).netloc} only): check the forge's url/api_url",
                )
            elif self.kind in _GITEA_LIKE and answer.status == 500:
                delivery = self._gitea_500(update, delivery)
        delivery = Delivery(
            delivery.verdict,
            delivery.http_status,
            delivery.retry_after,
            self._scrub(delivery.message),
        )
        self._log.debug(
            "status %s for %s@%s: %s %s",
            str(update.state),
            clean_text(update.forge_repo),
            update.sha[:12],
            delivery.verdict.value,
            delivery.message,
        )
        return delivery

    def _gitea_500(self, update: StatusUpdate, delivery: Delivery) -> Delivery:
        """Gitea and Forgejo answer 500 for an unknown sha and hide the reason
        from non-admins; asking for the commit tells a gone sha from an outage."""
        if delivery.verdict is not Verdict.RETRY:
            return delivery
        path = f"{api_prefix(self.kind)}/{repo_path(self.kind, update.forge_repo)}"
        probe = self.request(
            "GET",
            self._url(f"{path}/git/commits/{quote(update.sha.lower(), safe='')}")
            + "?stat=false&verification=false&files=false",
        )
        if probe.status == 404:
            return Delivery(Verdict.DROP, 500, None, "unknown commit (the forge does not have it)")
        return delivery

    # --- `ciwatch forge check` --------------------------------------------------------

    def check(self, forge_repo: str) -> list[str]:
        """Human lines: can the token read `forge_repo`, may it post statuses.
        Each line starts with "ok:", "note:", "missing:" or "error:"."""
        return [self._scrub(line) for line in self._check(forge_repo)]

    def _check(self, forge_repo: str) -> list[str]:
        if self._auth is None:
            return ["missing: no token is configured (token_file or token_credential)"]
        try:
            repo_url = self._url(f"{api_prefix(self.kind)}/{repo_path(self.kind, forge_repo)}")
        except ForgeRequestError as exc:
            return [f"error: {exc}"]
        lines: list[str] = []
        user = self.request("GET", self._url(_USER_PATH.get(self.kind, "/api/v1/user")))
        if user.status is None or user.status == 401 or 300 <= user.status < 400:
            return [self._failed("sign in", user)]
        doc = user.json()
        if user.status == 200 and isinstance(doc, dict):
            login = clean_text(str(doc.get("login") or doc.get("username") or "?"))
            lines.append(f"ok: the forge accepts the token (user {login})")
        else:
            lines.append(f"note: the token cannot read its own user ({user.status}); going on")
        lines += self._scopes(user)
        repo = self.request("GET", repo_url)
        if repo.status != 200:
            return [*lines, self._failed(f"read {forge_repo}", repo)]
        lines.append(f"ok: the token can read {forge_repo}")
        admin = isinstance(doc, dict) and doc.get("is_admin") is True  # GitLab instance admin
        lines.append(self._may_post(forge_repo, repo.json(), admin))
        return lines

    def _failed(self, what: str, answer: Answer) -> str:
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

    def _scopes(self, user: Answer) -> list[str]:
        if self.kind is ForgeKind.GITHUB:
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
        if self.kind is ForgeKind.GITLAB:
            me = self.request("GET", self._url("/api/v4/personal_access_tokens/self"))
            doc = me.json()
            if me.status == 200 and isinstance(doc, dict) and isinstance(doc.get("scopes"), list):
                if "api" in doc["scopes"]:
                    return ["ok: the token has the api scope"]
                shown = ", ".join(clean_text(str(s)) for s in doc["scopes"]) or "none"
                return [f"missing: the token needs the api scope; it has: {shown}"]
        return []

    def _may_post(self, forge_repo: str, doc: object, admin: bool) -> str:
        perms = doc.get("permissions") if isinstance(doc, dict) else None
        if not isinstance(perms, dict):
            return f"note: the forge did not say what the token may do in {forge_repo}"
        if self.kind is ForgeKind.GITLAB:
            levels = [
                access["access_level"]
                for access in (perms.get("project_access"), perms.get("group_access"))
                if isinstance(access, dict) and isinstance(access.get("access_level"), int)
            ]
            level = max(levels, default=0)
            if admin and level < GITLAB_DEVELOPER:
                return f"ok: may post commit statuses to {forge_repo} (instance admin)"
            if level >= GITLAB_DEVELOPER:
                return (
                    f"ok: may post commit statuses to {forge_repo} ({_ROLES.get(level, 'Owner')})"
                )
            role = _ROLES.get(level, "no role")
            return (
                f"missing: commit statuses need the Developer role (or higher) in {forge_repo};"
                f" the token's user has: {role}"
            )
        if perms.get("push") is True:
            how = "push access"
            if self.kind in _GITEA_LIKE:  # scopes are not visible through the API
                how += "; the token also needs the write:repository scope"
            return f"ok: may post commit statuses to {forge_repo} ({how})"
        return (
            f"missing: commit statuses need push (write) access to {forge_repo};"
            " the token's user has read access only"
        )
