"""A client of the daemon's JSON API (docs/api.md), for the command line.

Errors are ciwatch's: ApiUnreachable when nothing answers (the caller may
fall back to the store or the control socket), ApiError with the server's
`detail` for an answer that says no. The token goes only into the
Authorization header and never into a message.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import requests

from ciwatch.errors import CiwatchError, NotFoundError

TIMEOUT = 10.0


class ApiUnreachable(CiwatchError):
    """No daemon answers at the URL."""


class ApiError(CiwatchError):
    """The daemon answered with an error."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True)
class SseEvent:
    event: str  # "message" unless the server named it
    id: str | None
    data: str


def _detail(resp: requests.Response) -> str:
    try:
        detail = resp.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # a validation error: say which parameter
        detail = "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}"
            for d in detail
            if isinstance(d, dict)
        )
    return str(detail or f"HTTP {resp.status_code} from the daemon")


def _raise_for(resp: requests.Response) -> None:
    if resp.status_code == 404:
        raise NotFoundError(_detail(resp))
    if resp.status_code >= 400:
        raise ApiError(resp.status_code, _detail(resp))


class ApiClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = TIMEOUT,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url
        self._token = token
        self.timeout = timeout
        self.session = session or requests.Session()

    def __repr__(self) -> str:
        return f"ApiClient({self.base_url!r})"

    @property
    def has_token(self) -> bool:
        return bool(self._token)

    def _url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _call(
        self, method: str, path: str, timeout: float | None = None, **kw
    ) -> requests.Response:
        try:
            resp = self.session.request(
                method,
                self._url(path),
                headers=self._headers(),
                timeout=timeout or self.timeout,
                **kw,
            )
        except requests.RequestException as exc:
            raise ApiUnreachable(
                f"no answer from the daemon at {self.base_url}: {type(exc).__name__}"
            ) from None
        _raise_for(resp)
        return resp

    def alive(self, timeout: float = 2.0) -> bool:
        try:
            resp = self.session.get(self._url("/healthz/live"), timeout=timeout)
        except requests.RequestException:
            return False
        return resp.status_code == 200

    def get(self, path: str, params: Mapping[str, object] | None = None):
        params = {k: v for k, v in (params or {}).items() if v is not None}
        return self._call("GET", path, params=params).json()

    def post(
        self,
        path: str,
        body: Mapping[str, object] | None = None,
        *,
        timeout: float | None = None,
    ):
        kw = {"json": dict(body)} if body is not None else {}
        return self._call("POST", path, timeout, **kw).json()

    def events(self, path: str, last_id: str | None = None) -> Iterator[SseEvent]:
        """A text/event-stream, event by event, until the server closes it."""
        headers = self._headers()
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        try:
            resp = self.session.get(
                self._url(path), headers=headers, stream=True, timeout=(self.timeout, 300)
            )
        except requests.RequestException as exc:
            raise ApiUnreachable(
                f"no answer from the daemon at {self.base_url}: {type(exc).__name__}"
            ) from None
        with resp:
            _raise_for(resp)
            yield from parse_sse(resp.iter_lines(decode_unicode=False))


def parse_sse(lines) -> Iterator[SseEvent]:
    """Server-sent events from the stream's lines (bytes, without newlines)."""
    event, ident, data = "message", None, []
    for raw in lines:
        line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not line:
            if data:
                yield SseEvent(event, ident, "\n".join(data))
            elif event != "message":
                yield SseEvent(event, ident, "")
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue  # a comment: keep-alive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            ident = value
    if data:
        yield SseEvent(event, ident, "\n".join(data))
