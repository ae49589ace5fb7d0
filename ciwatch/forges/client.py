"""Commit statuses over HTTP: one client per configured forge (adapter).

Every call has (connect, read) timeouts, a bounded and deadline-limited body
read, and follows no redirect: the token goes to the configured API host only.
HTTP trouble never raises; it becomes a Delivery (see forges.answers.classify).
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

from ciwatch.forges.answers import classify
from ciwatch.forges.status import (
    ForgeRequestError,
    api_prefix,
    auth_headers,
    base_headers,
    build_request,
    clean_text,
    repo_path,
)
from ciwatch.forges.tokencheck import check_lines
from ciwatch.forges.types import Delivery, ForgeKind, StatusUpdate, Verdict

MAX_BODY = 1 << 20  # a forge's answer is small; more is cut, never buffered whole
_GITEA_LIKE = (ForgeKind.GITEA, ForgeKind.FORGEJO)


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

    def url(self, path: str) -> str:
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
            self.url(f"{path}/git/commits/{quote(update.sha.lower(), safe='')}")
            + "?stat=false&verification=false&files=false",
        )
        if probe.status == 404:
            return Delivery(Verdict.DROP, 500, None, "unknown commit (the forge does not have it)")
        return delivery

    def check(self, forge_repo: str) -> list[str]:
        """Human lines: can the token read `forge_repo`, may it post statuses.
        Each line starts with "ok:", "note:", "missing:" or "error:"."""
        return [self._scrub(line) for line in check_lines(self, forge_repo)]

    @property
    def has_token(self) -> bool:
        return self._auth is not None
