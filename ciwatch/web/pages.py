"""The HTML pages: the dashboard (``/``, ``/repos/{name}``) and a run's page
(``/runs/{id}``, where a commit status links), plus their one stylesheet and
one script (``/static/...``).

Pages are rendered on the server (Jinja2, autoescaped) from the same read
model as the JSON API, so the first paint is complete and reading works
without JavaScript; ciwatch.js then keeps them live. Every answer carries a
strict Content-Security-Policy: scripts and styles only from the daemon's own
files, no inline script, no framing. URLs in attributes are built from our
own paths and ids, never taken from data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from ciwatch.errors import NotFoundError
from ciwatch.model import RunState, StepRecord, StepState
from ciwatch.store.queries import RunFilter
from ciwatch.web import webfmt
from ciwatch.web.apimodels import RunDetail, StepOut, Trigger
from ciwatch.web.logindex import LogIndexes
from ciwatch.web.logrecords import read_records
from ciwatch.web.readmodel import ReadModel

TAIL_LINES = 200  # a step's log shows its last lines; "show earlier" loads the rest
PAGE_RUNS = 50
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
# The script is ES modules (ciwatch.js imports the others); each needs a JavaScript type.
_SCRIPTS = ("ciwatch", "api", "dashboard", "dom", "format", "run", "session", "steplog")
ASSETS = {
    "ciwatch.css": "text/css; charset=utf-8",
    **{f"{name}.js": "text/javascript; charset=utf-8" for name in _SCRIPTS},
}
OPEN_STATES = (StepState.RUNNING, StepState.FAILURE, StepState.ERROR)


@dataclass(frozen=True)
class Asset:
    body: bytes
    media: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """The static files, read once: they ship inside the package."""
    folder = resources.files("ciwatch.web") / "static"
    out = {}
    for name, media in ASSETS.items():
        body = (folder / name).read_bytes()
        out[name] = Asset(body, media, hashlib.sha256(body).hexdigest()[:16])
    return out


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ciwatch.web", "templates"),
        autoescape=True,  # every {{ }} is HTML-escaped, attributes included
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(
        dur=webfmt.duration,
        when=webfmt.when,
        cpu=webfmt.cpu,
        mem=webfmt.mem,
        size=webfmt.size,
        elapsed=webfmt.elapsed,
    )
    env.globals["qs"] = lambda **kw: urlencode({k: v for k, v in kw.items() if v})
    return env


@dataclass(frozen=True)
class Filters:
    repo: str = ""
    branch: str = ""
    state: str = ""
    trigger: str = ""
    before: int | None = None

    def query(self, **change) -> str:
        values = {
            "repo": self.repo,
            "branch": self.branch,
            "state": self.state,
            "trigger": self.trigger,
            "before": self.before,
        }
        values.update(change)
        return urlencode({k: v for k, v in values.items() if v})


def parse_filters(params) -> tuple[Filters, RunFilter, list[str]]:
    """The dashboard's query string -> (what the form shows, the store filter,
    problems). A bad value is named and ignored, never a server error."""
    problems = []
    repo = params.get("repo", "")[:200]
    branch = params.get("branch", "")[:1000]
    state, trigger = params.get("state", ""), params.get("trigger", "")
    if state and state not in RunState.__members__.values():
        problems.append(
            f"state {state[:40]!r} is not one of: {', '.join(s.value for s in RunState)}"
        )
        state = ""
    if trigger and trigger not in Trigger.__members__.values():
        problems.append(
            f"trigger {trigger[:40]!r} is not one of: {', '.join(t.value for t in Trigger)}"
        )
        trigger = ""
    before = params.get("before", "")
    if before and (not before.isdigit() or len(before) > 18):
        problems.append(f"before {before[:40]!r} is not a run id")
        before = ""
    ref = None
    if branch:
        ref = branch if branch.startswith("refs/") else f"refs/heads/{branch}"
    shown = Filters(repo, branch, state, trigger, int(before) if before else None)
    return (
        shown,
        RunFilter(
            repo=repo or None,
            ref=ref,
            state=RunState(state) if state else None,
            source=trigger or None,
        ),
        problems,
    )


@dataclass(frozen=True)
class StepView:
    step: StepOut
    open: bool
    total: int  # log records so far
    lines: list[dict]  # the last ones, rendered when the step is open


def pages_router(
    read: ReadModel,
    *,
    step: Callable[[int], StepRecord | None],
    session: Callable[[Request], tuple[bool, bool]],
    indexes: LogIndexes,
) -> APIRouter:
    """`step(id)` reads a step's record (for its log file); `session(request)`
    says (actions possible, signed in)."""
    router = APIRouter(include_in_schema=False)
    env = environment()
    assets = load_assets()
    version = hashlib.sha256(b"".join(a.etag.encode() for a in assets.values())).hexdigest()[:12]

    def page(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        actions, signed_in = session(request)
        body = env.get_template(template).render(
            asset_version=version,
            actions=actions,
            signed_in=signed_in,
            **context,
        )
        return HTMLResponse(body, status_code=status, headers=dict(SECURITY_HEADERS))

    def dashboard(request: Request, repo_page: str | None = None) -> HTMLResponse:
        params = dict(request.query_params)
        if repo_page is not None:
            params["repo"] = repo_page
        shown, filters, problems = parse_filters(params)
        runs = read.runs(filters, before=shown.before, limit=PAGE_RUNS)
        every = read.repos()
        repos = [r for r in every if repo_page is None or r.name == repo_page]
        if repo_page is not None and not repos:
            what = f"no repository {repo_page!r}"
            return page(request, "missing.html", 404, title="Not found", what=what)
        return page(
            request,
            "dashboard.html",
            400 if problems else 200,
            title=repo_page or "Dashboard",
            repo_page=repo_page,
            repos=repos,
            all_repos=[r.name for r in every],
            runs=runs,
            filters=shown,
            problems=problems,
            states=[s.value for s in RunState],
            triggers=[t.value for t in Trigger],
        )

    @router.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        return dashboard(request)

    @router.get("/repos/{name:path}", response_class=HTMLResponse)
    def repo_page(request: Request, name: str) -> HTMLResponse:
        return dashboard(request, name[:200])

    @router.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str) -> HTMLResponse:
        if not run_id.isdigit() or len(run_id) > 18:
            return page(
                request, "missing.html", 404, title="Not found", what=f"no run {run_id[:40]!r}"
            )
        try:
            detail = read.run_detail(int(run_id))
        except NotFoundError as exc:
            return page(request, "missing.html", 404, title="Not found", what=str(exc))
        attempts = _by_attempt(_views(detail))
        return page(
            request,
            "run.html",
            title=f"{detail.label} {detail.state.value}",
            run=detail,
            attempts=attempts,
            latest=max(attempts) if attempts else 0,
            multi_cell=detail.cells != [""],
            finished=detail.state.finished,
        )

    def _views(detail: RunDetail) -> list[StepView]:
        latest = max((s.attempt for s in detail.steps), default=0)
        views = []
        for s in detail.steps:
            is_open = s.attempt == latest and s.state in OPEN_STATES
            total, lines = 0, []
            record = step(s.id) if is_open else None
            if record is not None and record.log_path and Path(record.log_path).is_file():
                try:
                    index = indexes.get(Path(record.log_path))
                    total = index.end.n
                    lines = read_records(index, max(0, total - TAIL_LINES), TAIL_LINES)
                except OSError:
                    pass  # the page still shows; the log's own link says what is wrong
            views.append(StepView(s, is_open, total, lines))
        return views

    @router.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204, headers={"Cache-Control": "public, max-age=86400"})

    @router.get("/static/{name}")
    def static(request: Request, name: str) -> Response:
        asset = assets.get(name)
        if asset is None:
            return Response("no such file", status_code=404, media_type="text/plain")
        etag = f'"{asset.etag}"'
        headers = {
            "ETag": etag,
            # Pages name the files with ?v=<their hash>: a new version is a new URL.
            "Cache-Control": "public, max-age=31536000, immutable"
            if request.query_params.get("v") == version
            else "no-cache",
            "X-Content-Type-Options": "nosniff",
        }
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media, headers=headers)

    return router


def _by_attempt(views: list[StepView]) -> dict[int, dict[str, list[StepView]]]:
    """attempt -> cell -> steps, in the order the read model gives them."""
    out: dict[int, dict[str, list[StepView]]] = {}
    for view in views:
        out.setdefault(view.step.attempt, {}).setdefault(view.step.cell, []).append(view)
    return out


def session_of(auth) -> Callable[[Request], tuple[bool, bool]]:
    """(actions possible, signed in) from ciwatch.web.auth.WebAuth."""
    return lambda request: (auth.actions, auth.signed_in(request))
