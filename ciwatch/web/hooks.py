"""POST /hooks/{forge_name}: a forge's webhook in, an event stored, an answer out.

The order is the contract: bound the body (size and time) before and while
reading it; check the signature over the raw bytes before parsing anything;
answer a replayed delivery 200 without storing it again; store the events
through `submit` before answering 2xx; answer 5xx, never 4xx, when storing
fails, so the forge retries (GitLab disables a hook for good on repeated 4xx).
Events a forge sends that ciwatch does not build are answered 202 as well: a
forge that sees errors for them would disable the hook.

A pull request's code is not fetched here: the event carries its ref
(``refs/pull/N/head``, ``refs/merge-requests/N/head``) and the runner's
workspace fetches that ref from the base repository when it runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ciwatch.errors import CiwatchError
from ciwatch.forges import payloads
from ciwatch.forges.payloadfields import PayloadError
from ciwatch.forges.payloads import RepoRef
from ciwatch.forges.signatures import SignatureError, verify
from ciwatch.forges.types import ForgeKind
from ciwatch.model import Event, ref_display

MiB = 1024 * 1024
MAX_BODY = 5 * MiB  # GitHub caps payloads at 25 MB; pushes and PRs stay far below this
BODY_TIMEOUT = 10.0  # seconds for the whole body to arrive


@dataclass(frozen=True)
class HookForge:
    """One forge as the endpoint sees it."""

    kind: ForgeKind
    secret: bytes | None = field(default=None, repr=False)
    trusted_users: tuple[str, ...] = ()
    # forge repository (full name, or a numeric id as text) -> ciwatch repo name
    repos: Mapping[str, str] = field(default_factory=dict)

    def repo_for(self, where: RepoRef) -> str | None:
        """The configured repo a delivery is about. Forges treat owner/name
        case-insensitively, so a differently cased name still matches."""
        if where.full_name in self.repos:
            return self.repos[where.full_name]
        folded = where.full_name.casefold()
        for forge_repo, name in self.repos.items():
            if forge_repo.casefold() == folded:
                return name
        return self.repos.get(where.id) if where.id else None


class DeliveryLog(Protocol):
    """Delivery ids already stored, so a replay is not queued twice."""

    def seen(self, forge: str, delivery: str) -> bool: ...

    def record(self, forge: str, delivery: str) -> object: ...


class StoreDeliveries:
    """DeliveryLog over the store's `webhook_deliveries` table."""

    def __init__(self, store) -> None:
        self.store = store

    def seen(self, forge: str, delivery: str) -> bool:
        return self.store.delivery_seen(forge, delivery)

    def record(self, forge: str, delivery: str) -> object:
        return self.store.record_delivery(forge, delivery)


class _Refused(CiwatchError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def hooks_router(
    forges: Mapping[str, HookForge],
    submit: Callable[[Event], object],
    deliveries: DeliveryLog,
    *,
    max_body: int = MAX_BODY,
    body_timeout: float = BODY_TIMEOUT,
    log: logging.Logger | None = None,
) -> APIRouter:
    """The webhook routes. `submit` stores one event durably (or raises);
    it and `deliveries` are called from a worker thread, not the event loop."""
    log = log or logging.getLogger("ciwatch.web.hooks")
    # Not copied: the daemon updates the mapping in place when it reloads its config.
    warned_unsigned: set[str] = set()
    router = APIRouter()

    def handle(name: str, forge: HookForge, headers: Mapping[str, str], body: bytes):
        kind = forge.kind
        try:
            verify(kind, headers, body, forge.secret)
        except SignatureError as exc:
            log.warning("webhook for forge %s refused: %s", name, exc.reason)
            return 401, {"error": "invalid signature"}
        try:
            event_name = payloads.event_name(kind, headers)
            delivery = payloads.delivery_id(kind, headers)
        except PayloadError as exc:
            log.warning("webhook for forge %s refused: %s", name, exc)
            return 400, {"error": str(exc)}
        if reason := payloads.not_built(kind, event_name):
            log.debug("webhook for forge %s ignored: %s", name, reason)
            return 202, {"ignored": reason}
        if delivery is not None:
            try:
                if deliveries.seen(name, delivery):
                    log.info("webhook for forge %s: delivery %s seen already", name, delivery)
                    return 200, {"duplicate": True}
            except Exception:
                log.exception("webhook for forge %s: cannot read the delivery log", name)
                return 503, {"error": "temporarily unable to take the delivery"}
        try:
            data = payloads.load(body)
            where = payloads.repository(kind, data)
            repo = forge.repo_for(where)
            if repo is None:
                log.info(
                    "webhook for forge %s ignored: repository %r is not configured",
                    name,
                    where.full_name,
                )
                return 202, {"ignored": "repository not configured"}
            parsed = payloads.interpret(
                kind,
                event_name,
                data,
                repo_name=repo,
                trusted_users=forge.trusted_users,
                delivery=delivery,
            )
        except PayloadError as exc:
            log.warning("webhook for forge %s refused: %s", name, exc)
            return 400, {"error": str(exc)}
        if not parsed.events:
            log.info("webhook for forge %s ignored: %s", name, parsed.ignored)
            return 202, {"ignored": parsed.ignored or "nothing to build"}
        try:
            for event in parsed.events:
                submit(event)
            if delivery is not None:
                deliveries.record(name, delivery)
        except Exception:
            # Not acknowledged: the forge retries (or the operator redelivers),
            # and the intake's deduplication absorbs what did get stored.
            log.exception("webhook for forge %s: the event could not be stored", name)
            return 503, {"error": "temporarily unable to store the event"}
        for event in parsed.events:
            log.info(
                "webhook for forge %s: %s %s %s of %s queued%s",
                name,
                event.kind.value,
                ref_display(event.ref),
                event.sha[:12],
                event.repo,
                "" if event.trusted else " (untrusted: no secrets)",
            )
        return 202, {"queued": len(parsed.events)}

    @router.post("/hooks/{forge_name}")
    async def receive_hook(forge_name: str, request: Request) -> JSONResponse:
        forge = forges.get(forge_name)
        if forge is None:
            return _answer(404, {"error": "no such forge"}, close=True)
        try:
            body = await _read_body(request, max_body, body_timeout)
        except _Refused as refused:
            log.warning("webhook for forge %s refused: %s", forge_name, refused.message)
            return _answer(refused.status, {"error": refused.message}, close=True)
        if forge.secret is None and forge_name not in warned_unsigned:
            warned_unsigned.add(forge_name)
            log.warning(
                "forge %s has no webhook secret: its webhooks are accepted unsigned", forge_name
            )
        try:
            status, answer = await run_in_threadpool(
                handle, forge_name, forge, request.headers, body
            )
        except Exception:
            log.exception("webhook for forge %s: internal error", forge_name)
            status, answer = 500, {"error": "internal error"}
        return _answer(status, answer)

    return router


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise _Refused(400, "malformed Content-Length")
        if int(declared) > limit:
            raise _Refused(413, f"body larger than {limit} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise _Refused(413, f"body larger than {limit} bytes")
    except TimeoutError:
        raise _Refused(408, f"the body did not arrive within {timeout:g} s") from None
    except ClientDisconnect:
        raise _Refused(400, "the client went away mid-body") from None
    return bytes(body)


def _answer(status: int, content: dict, *, close: bool = False) -> JSONResponse:
    # An unread body is left on the connection: close it rather than let the
    # server drain what the client keeps sending.
    return JSONResponse(
        content, status_code=status, headers={"Connection": "close"} if close else None
    )
