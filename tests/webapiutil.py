"""The JSON API over a real uvicorn on 127.0.0.1, on a real SQLite store
filled through the store's own operations (events, attempts, steps, ends)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ciwatch.errors import CiwatchError
from ciwatch.model import CancelMode, Event, EventKind, Run, RunState, StepResult, StepState
from ciwatch.store import Store
from ciwatch.web.api import actions_router, runs_router
from ciwatch.web.auth import WebAuth
from ciwatch.web.metrics import Collector, metrics_router
from ciwatch.web.readmodel import ReadModel
from ciwatch.web.server import WebServer, create_app


def add_run(
    store: Store,
    repo: str,
    *,
    ref: str = "refs/heads/main",
    sha: str | None = None,
    source: str = "hook",
    kind: EventKind | None = None,
    state: RunState = RunState.SUCCESS,
    steps: tuple[str, ...] = ("build",),
    subject: str | None = None,
    pr_number: int | None = None,
) -> Run:
    """One run as a worker would leave it: queued, claimed, steps, ended."""
    if kind is None:
        kind = EventKind.TAG if ref.startswith("refs/tags/") else EventKind.PUSH
        kind = EventKind.PULL_REQUEST if pr_number is not None else kind
    sha = sha or f"{time.monotonic_ns():040x}"[-40:]
    ev = Event(repo=repo, kind=kind, ref=ref, sha=sha, source=source, pr_number=pr_number)
    run, _ = store.submit(ev)
    if subject is not None:
        store.set_commit_info([(run.id, subject, "Ada")])
    if state is RunState.QUEUED:
        return store.get_run(run.id)
    attempt = store.start_attempt(run.id, "test:1", 60)
    for i, name in enumerate(steps):
        sid = store.start_step(run.id, attempt.number, "", i, name, "")
        ok = state is RunState.SUCCESS or i < len(steps) - 1
        store.finish_step(
            sid,
            StepResult(
                StepState.SUCCESS if ok else StepState.FAILURE,
                exit_code=0 if ok else 2,
                reason="" if ok else "exit code 2",
                started_at=time.time(),
                finished_at=time.time(),
            ),
        )
    if state is not RunState.RUNNING:
        store.finish_run(run.id, state, "" if state is RunState.SUCCESS else f"{state.value}!")
    return store.get_run(run.id)


class StoreActions:
    """The API's actions done on the store directly (what the daemon's
    Operations do, minus fetching): records every call."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: list[tuple] = []

    def trigger(self, repo: str, branch: str | None) -> Run:
        self.calls.append(("trigger", repo, branch))
        self.store.get_repo(repo)  # NotFoundError
        ref = f"refs/heads/{branch or 'main'}"
        ev = Event(repo=repo, kind=EventKind.MANUAL, ref=ref, sha="a" * 40, source="manual")
        run, new = self.store.submit(ev)
        return run if new else self.store.create_run(run.event_id)

    def cancel(self, run_id: int) -> Run:
        self.calls.append(("cancel", run_id))
        run = self.store.get_run(run_id)
        if not self.store.request_cancel(run_id, "canceled by a user", CancelMode.CANCEL):
            raise CiwatchError(f"{run.label} has already finished ({run.state.value})")
        return run

    def retry(self, run_id: int) -> Run:
        self.calls.append(("retry", run_id))
        return self.store.create_run(self.store.get_run(run_id).event_id)


class ApiServer:
    """create_app with the API routers, served on 127.0.0.1:<free port>."""

    def __init__(
        self,
        store: Store,
        *,
        token: str | None = None,
        public_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.token = token
        self.actions = StoreActions(store)
        read = ReadModel(store, clock=clock, why=lambda run: [f"  run {run.label}: {run.state}"])
        self.auth = WebAuth(lambda: self.token, clock=clock, public_url=public_url)
        app = create_app(
            runs_router(read, status=lambda: {"ok": True}, sources=lambda: []),
            actions_router(read, self.auth, self.actions),
            metrics_router(Collector(store)),
        )
        self.server = WebServer(app, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> ApiServer:
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()


def open_store(tmp: Path) -> Store:
    store = Store.open(tmp / "ciwatch.db")
    for name in ("app", "lib"):
        store.ensure_repo(name, f"/srv/git/{name}.git")
    return store
