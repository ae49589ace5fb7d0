"""Who may act (cancel, retry, trigger): the operator's token, sent as
`Authorization: Bearer <token>` or exchanged for a browser session.

Sessions keep no state on the server: the `ciwatch_session` cookie is
`<expires>.<nonce>.<mac>`, signed with a key derived from the token (a new
token ends every session). The `ciwatch_csrf` cookie holds a value derived
from the same nonce, which the page's script sends back as `X-CSRF-Token`: a
form on another site can send the cookies, but not the header. A request
whose Origin (or Referer) is not the daemon's own is refused as well.

Tokens are compared with hmac.compare_digest and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import HTTPException, Request, Response

SESSION_COOKIE = "ciwatch_session"
CSRF_COOKIE = "ciwatch_csrf"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL = 30 * 24 * 3600.0

READ_ONLY = "read-only: no web token configured (web.token_file)"
CROSS_SITE = "cross-site request refused"
UNAUTHORIZED = "sign in, or send Authorization: Bearer <token>"
WRONG_TOKEN = "wrong token"


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int


def origin_of(url: str) -> str | None:
    """scheme://host[:port] of a URL, lower-cased; None if it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port and port != default else "")


class WebAuth:
    """The rules above. `token()` gives the configured token (None: read-only);
    it is asked on every check, so a reloaded configuration takes effect."""

    def __init__(
        self,
        token: Callable[[], str | None],
        *,
        clock: Callable[[], float],
        public_url: str | None = None,
        nonce: Callable[[], str] = lambda: secrets.token_hex(16),
        ttl: float = SESSION_TTL,
    ) -> None:
        self._token = token
        self.clock = clock
        self.public_origin = origin_of(public_url) if public_url else None
        self._nonce = nonce
        self.ttl = ttl

    # -- what a request may do ---------------------------------------------------

    @property
    def actions(self) -> bool:
        return bool(self._token())

    def signed_in(self, request: Request) -> bool:
        token = self._token()
        return bool(token) and self._session(request, token) is not None

    def require(self, request: Request) -> None:
        """Raise 403/401 unless the request may act (a FastAPI dependency)."""
        token = self._token()
        if not token:
            raise HTTPException(403, READ_ONLY)
        if not self.same_origin(request):
            raise HTTPException(403, CROSS_SITE)
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not _same(given.strip(), token):
                raise HTTPException(401, WRONG_TOKEN, {"WWW-Authenticate": "Bearer"})
            return
        session = self._session(request, token)
        if session is None:
            raise HTTPException(401, UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
        expected = self._csrf(token, session.nonce)
        sent = request.headers.get(CSRF_HEADER, "")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not (_same(sent, expected) and _same(cookie, expected)):
            raise HTTPException(403, CROSS_SITE)

    def same_origin(self, request: Request) -> bool:
        """True unless an Origin or Referer header names another origin."""
        claimed = request.headers.get("origin")
        if claimed is None:
            referer = request.headers.get("referer")
            if referer is None:
                return True  # not a browser's cross-site request: scripts, curl
            claimed = origin_of(referer) or "null"
        own = {origin_of(str(request.base_url))}
        host = request.headers.get("host")
        if host:
            own.add(origin_of(f"{request.url.scheme}://{host}"))
        if self.public_origin:
            own.add(self.public_origin)
        return origin_of(claimed) in own - {None}

    # -- sessions ------------------------------------------------------------------

    def sign_in(self, request: Request, response: Response, given: str) -> None:
        """Set the session cookies for a right token; 401 for a wrong one."""
        token = self._token()
        if not token:
            raise HTTPException(403, READ_ONLY)
        if not self.same_origin(request):
            raise HTTPException(403, CROSS_SITE)
        if not _same(given, token):
            raise HTTPException(401, WRONG_TOKEN)
        nonce = self._nonce()
        expires = int(self.clock() + self.ttl)
        value = f"{expires}.{nonce}.{self._mac(token, f'{expires}.{nonce}')}"
        secure = request.url.scheme == "https" or (self.public_origin or "").startswith("https:")
        common = {"max_age": int(self.ttl), "path": "/", "samesite": "strict", "secure": secure}
        response.set_cookie(SESSION_COOKIE, value, httponly=True, **common)
        response.set_cookie(CSRF_COOKIE, self._csrf(token, nonce), httponly=False, **common)

    @staticmethod
    def sign_out(response: Response) -> None:
        for name in (SESSION_COOKIE, CSRF_COOKIE):
            response.delete_cookie(name, path="/", samesite="strict")

    def _session(self, request: Request, token: str) -> Session | None:
        value = request.cookies.get(SESSION_COOKIE)
        if not value:
            return None
        expires, _, rest = value.partition(".")
        nonce, _, mac = rest.partition(".")
        if not expires.isdigit() or not nonce or not mac:
            return None
        if not _same(mac, self._mac(token, f"{expires}.{nonce}")):
            return None
        if int(expires) < self.clock():
            return None
        return Session(nonce, int(expires))

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(b"ciwatch web session\0" + token.encode()).digest()

    def _mac(self, token: str, message: str) -> str:
        return hmac.new(self._key(token), message.encode(), hashlib.sha256).hexdigest()

    def _csrf(self, token: str, nonce: str) -> str:
        return self._mac(token, f"csrf.{nonce}")


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode())
