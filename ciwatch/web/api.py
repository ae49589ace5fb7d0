"""The JSON API under /api/: runs (list, filter, get), steps, repositories,
the queue, the daemon's status and sources, and the actions (cancel, retry,
trigger) behind the operator's token. Logs and live streams are served by
ciwatch.web's log routes; this module only links to them."""

# No `from __future__ import annotations`: FastAPI reads the dependency
# annotations below at definition time, and they name local functions.
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Protocol
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response

from ciwatch.errors import CiwatchError, NotFoundError
from ciwatch.model import Run, RunState
from ciwatch.store.queries import RunFilter
from ciwatch.web.apimodels import (
    MAX_ID,
    ActionOut,
    Problem,
    RepoOut,
    RunDetail,
    RunOut,
    RunPage,
    SessionOut,
    SourceOut,
    StatusOut,
    StepOut,
    TokenIn,
    Trigger,
    TriggerIn,
)
from ciwatch.web.auth import WebAuth
from ciwatch.web.readmodel import MAX_PAGE, ReadModel

MAX_SESSION_BODY = 16 * 1024

RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="the run's id")]


class Actions(Protocol):
    """What the API's actions do; each returns the run it concerns (for retry
    and trigger, the new one) or raises NotFoundError / CiwatchError."""

    def trigger(self, repo: str, branch: str | None) -> Run: ...

    def cancel(self, run_id: int) -> Run: ...

    def retry(self, run_id: int) -> Run: ...


def _problems(*codes: int) -> dict:
    text = {
        400: "bad request",
        401: "no token, or a wrong one",
        403: "read-only (no token configured), or a cross-site request",
        404: "no such run or repository",
        409: "the action does not apply (e.g. the run has already finished)",
        415: "unsupported body type",
        422: "invalid parameters",
    }
    return {c: {"model": Problem, "description": text[c]} for c in codes}


@contextmanager
def _answers() -> Iterator[None]:
    """ciwatch's errors as HTTP answers: unknown -> 404, refused -> 409."""
    try:
        yield
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except CiwatchError as exc:
        raise HTTPException(409, str(exc) or type(exc).__name__) from None


def runs_router(
    read: ReadModel,
    *,
    status: Callable[[], dict] | None = None,
    sources: Callable[[], list[dict]] | None = None,
) -> APIRouter:
    """The read-only half: anyone who reaches the daemon may read."""
    router = APIRouter(prefix="/api", tags=["runs"])

    @router.get("/runs", response_model=RunPage)
    def list_runs(
        repo: Annotated[str | None, Query(max_length=200)] = None,
        branch: Annotated[
            str | None, Query(max_length=1000, description="a branch name or a full ref")
        ] = None,
        state: RunState | None = None,
        trigger: Trigger | None = None,
        before: Annotated[
            int | None, Query(ge=1, le=MAX_ID, description="the `next` of the previous page")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    ) -> RunPage:
        """Runs newest first, filtered (the filters combine), a page at a time."""
        ref = None
        if branch is not None:
            ref = branch if branch.startswith("refs/") else f"refs/heads/{branch}"
        filters = RunFilter(
            repo=repo, ref=ref, state=state, source=trigger.value if trigger else None
        )
        return read.runs(filters, before=before, limit=limit)

    @router.get("/runs/{run_id}", response_model=RunDetail, responses=_problems(404))
    def get_run(run_id: RunId) -> RunDetail:
        """A run with its event, attempts, steps, artifacts and what it waits on."""
        with _answers():
            return read.run_detail(run_id)

    @router.get("/runs/{run_id}/steps", response_model=list[StepOut], responses=_problems(404))
    def get_steps(run_id: RunId) -> list[StepOut]:
        with _answers():
            return read.steps(run_id)

    @router.get("/repos/{repo}/runs/{number}", response_model=RunOut, responses=_problems(404))
    def get_run_by_number(
        repo: Annotated[str, Path(max_length=200)],
        number: Annotated[int, Path(ge=1, le=MAX_ID)],
    ) -> RunOut:
        """The run named REPO#NUMBER."""
        with _answers():
            return read.run_by_number(repo, number)

    @router.get("/repos", response_model=list[RepoOut])
    def list_repos() -> list[RepoOut]:
        """Every repository with the latest run of each branch."""
        return read.repos()

    @router.get("/queue", response_model=list[RunOut])
    def queue() -> list[RunOut]:
        """Queued runs in the order they will start, with what each waits on."""
        return read.queue()

    if status is not None:

        @router.get("/status", response_model=StatusOut)
        def get_status() -> dict:
            """What `ciwatch status --json` prints."""
            return status()

    if sources is not None:

        @router.get("/sources", response_model=list[SourceOut])
        def get_sources() -> list[dict]:
            """Each source's health: last poll, its error, consecutive failures."""
            return sources()

    return router


def actions_router(read: ReadModel, auth: WebAuth, actions: Actions | None) -> APIRouter:
    """Sessions, and the actions that need the token."""
    router = APIRouter(prefix="/api", tags=["actions"])
    refused = _problems(401, 403, 404, 409)

    def allowed(request: Request) -> Actions:
        auth.require(request)
        if actions is None:
            raise HTTPException(403, "this server takes no actions")
        return actions

    def answer(run: Run) -> ActionOut:
        return ActionOut(ok=True, run=read.run(run.id))

    @router.post("/runs/{run_id}/cancel", response_model=ActionOut, responses=refused)
    def cancel(run_id: RunId, act: Annotated[Actions, Depends(allowed)]) -> ActionOut:
        """Cancel a queued or running run (its steps are stopped)."""
        with _answers():
            return answer(act.cancel(run_id))

    @router.post("/runs/{run_id}/retry", response_model=ActionOut, responses=refused)
    def retry(run_id: RunId, act: Annotated[Actions, Depends(allowed)]) -> ActionOut:
        """A new run of the same event (same commit, same ref)."""
        with _answers():
            return answer(act.retry(run_id))

    @router.post("/trigger", response_model=ActionOut, responses=_problems(400, 401, 403, 404, 409))
    def trigger(body: TriggerIn, act: Annotated[Actions, Depends(allowed)]) -> ActionOut:
        """Queue a run of a branch's current commit."""
        with _answers():
            return answer(act.trigger(body.repo, body.branch))

    @router.get("/session", response_model=SessionOut)
    def session(request: Request) -> SessionOut:
        return SessionOut(actions=auth.actions, signed_in=auth.signed_in(request))

    token_schema = TokenIn.model_json_schema()

    @router.post(
        "/session",
        status_code=204,
        response_class=Response,
        responses=_problems(400, 401, 403, 415, 422),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": token_schema},
                    "application/x-www-form-urlencoded": {"schema": token_schema},
                },
            }
        },
    )
    async def sign_in(request: Request) -> Response:
        """Exchange the token for session cookies (`ciwatch_session`, `ciwatch_csrf`)."""
        token = _token_from(request.headers.get("content-type", ""), await _body(request))
        response = Response(status_code=204)
        auth.sign_in(request, response, token)
        return response

    @router.delete("/session", status_code=204, response_class=Response)
    def sign_out() -> Response:
        response = Response(status_code=204)
        auth.sign_out(response)
        return response

    return router


async def _body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_SESSION_BODY:
            raise HTTPException(400, f"body over {MAX_SESSION_BODY} bytes")
    return body


def _token_from(content_type: str, body: bytes) -> str:
    """The `token` of a JSON object or of an urlencoded form."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise HTTPException(422, "body: not JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("token"), str):
            raise HTTPException(422, 'body: expected {"token": "..."}')
        return doc["token"]
    if kind == "application/x-www-form-urlencoded":
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        if len(fields.get("token", [])) != 1:
            raise HTTPException(422, "form: expected one field `token`")
        return fields["token"][0]
    raise HTTPException(415, "send the token as JSON or as a form field `token`")
