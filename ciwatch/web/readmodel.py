"""What the dashboard and the API show, built from the store: runs, a run
with its event, attempts and steps, repositories with their branches, the
queue. The HTML pages use the same model as the JSON API."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ciwatch.errors import NotFoundError
from ciwatch.model import Run, RunState, StepRecord, ref_bytes, ref_display, short_ref
from ciwatch.store.queries import RunFilter, RunListing
from ciwatch.web.apimodels import (
    ArtifactOut,
    AttemptOut,
    BranchOut,
    EventOut,
    RepoOut,
    RunDetail,
    RunOut,
    RunPage,
    SightingOut,
    StepOut,
)

MAX_PAGE = 200
BRANCHES_PER_REPO = 100


def text(value: str) -> str:
    """Valid UTF-8 for JSON: bytes that are not (kept in refs as surrogates) become U+FFFD."""
    return ref_bytes(value).decode("utf-8", "replace")


def run_url(run_id: int) -> str:
    return f"/runs/{run_id}"


def step_log_url(step_id: int) -> str:
    return f"/api/steps/{step_id}/log"


def badge_url(repo: str) -> str:
    return f"/badge/{repo}.svg"


def _ref_name(run: Run, pr_number: int | None) -> str:
    if pr_number is not None:
        return f"PR #{pr_number}"
    branch, tag = short_ref(run.ref)
    return ref_display(branch or tag or run.ref)


def _elapsed(start: float | None, end: float | None, now: float, live: bool) -> float | None:
    if start is None:
        return None
    if end is not None:
        return max(0.0, end - start)
    return max(0.0, now - start) if live else None


def step_out(s: StepRecord) -> StepOut:
    r = s.result
    return StepOut(
        id=s.id,
        run_id=s.run_id,
        attempt=s.attempt,
        cell=s.cell,
        index=s.index,
        name=s.name,
        state=s.state,
        exit_code=r.exit_code,
        reason=text(r.reason),
        failure=r.failure.value if r.failure else None,
        started_at=r.started_at,
        finished_at=r.finished_at,
        duration=r.duration,
        cpu_seconds=r.cpu_seconds,
        max_rss_kib=r.max_rss_kib,
        log_bytes=r.log_bytes,
        log_truncated=r.log_truncated,
        log_url=step_log_url(s.id),
    )


class ReadModel:
    """Store rows -> API models. `why(run)` gives the lines `ciwatch why`
    prints for a run (composed by the caller: it reads logs as well)."""

    def __init__(
        self,
        store,
        *,
        clock: Callable[[], float],
        why: Callable[[Run], Sequence[str]] = lambda run: (),
    ) -> None:
        self.store = store
        self.clock = clock
        self.why = why

    def run_out(self, listing: RunListing, now: float | None = None) -> RunOut:
        run = listing.run
        now = self.clock() if now is None else now
        branch, tag = short_ref(run.ref)
        queued = run.state is RunState.QUEUED
        return RunOut(
            id=run.id,
            repo=run.repo,
            number=run.number,
            label=run.label,
            state=run.state,
            kind=run.kind,
            ref=text(run.ref),
            ref_name=_ref_name(run, listing.pr_number),
            branch=text(branch) if branch is not None else None,
            tag=text(tag) if tag is not None else None,
            pr_number=listing.pr_number,
            sha=run.sha,
            short_sha=run.sha[:10],
            subject=listing.subject,
            author=listing.author,
            source=run.source,
            trusted=run.trusted,
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            queue_wait=_elapsed(run.created_at, run.started_at, now, queued),
            duration=_elapsed(run.started_at, run.finished_at, now, run.state is RunState.RUNNING),
            attempt=run.attempts,
            reason=text(run.reason),
            wait_reason=text(run.wait_reason),
            cancel_requested=text(run.cancel_requested) if run.cancel_requested else None,
            url=run_url(run.id),
        )

    def runs(
        self, filters: RunFilter | None = None, *, before: int | None = None, limit: int = 50
    ) -> RunPage:
        """A page of runs, newest first; `next` continues after it."""
        limit = max(1, min(MAX_PAGE, limit))
        rows = self.store.page_runs(filters or RunFilter(), before=before, limit=limit + 1)
        now = self.clock()
        more = len(rows) > limit
        rows = rows[:limit]
        return RunPage(
            runs=[self.run_out(r, now) for r in rows],
            next=rows[-1].run.id if more else None,
        )

    def listing(self, run_id: int) -> RunListing:
        listing = self.store.run_listing(run_id)
        if listing is None:
            raise NotFoundError(f"no run {run_id}")
        return listing

    def run(self, run_id: int) -> RunOut:
        return self.run_out(self.listing(run_id))

    def run_by_number(self, repo: str, number: int) -> RunOut:
        listing = self.store.run_listing_by_number(repo, number)
        if listing is None:
            raise NotFoundError(f"no run {repo}#{number}")
        return self.run_out(listing)

    def run_detail(self, run_id: int) -> RunDetail:
        listing = self.listing(run_id)
        run = listing.run
        event = self.store.get_event(run.event_id)
        steps = self.store.all_steps(run_id)
        cells: list[str] = []
        for s in steps:
            if s.cell not in cells:
                cells.append(s.cell)
        return RunDetail(
            **self.run_out(listing).model_dump(),
            event=EventOut(
                kind=event.kind,
                ref=text(event.ref),
                sha=event.sha,
                before=event.before,
                source=event.source,
                trusted=event.trusted,
                pr_number=event.pr_number,
                sightings=[
                    SightingOut(source=s.source, at=s.seen_at)
                    for s in self.store.sightings(run.event_id)
                ],
            ),
            attempts=[
                AttemptOut(
                    number=a.number,
                    state=a.state,
                    worker=a.worker,
                    started_at=a.started_at,
                    finished_at=a.finished_at,
                    reason=text(a.reason),
                )
                for a in self.store.attempts(run_id)
            ],
            cells=cells or [""],
            steps=[step_out(s) for s in steps],
            why=[text(line).strip() for line in self.why(run)],
            artifacts=[ArtifactOut(name=a.path, size=a.size) for a in self.store.artifacts(run_id)],
        )

    def steps(self, run_id: int) -> list[StepOut]:
        self.listing(run_id)  # a 404 for a run that does not exist, not []
        return [step_out(s) for s in self.store.all_steps(run_id)]

    def repos(self) -> list[RepoOut]:
        out = []
        now = self.clock()
        for repo in self.store.list_repos():
            heads = self.store.latest_per_branch(repo.id, BRANCHES_PER_REPO)
            # Default branch first, then the most recently built.
            heads.sort(key=lambda h: (h[0] != repo.default_branch, -h[1].run.id))
            out.append(
                RepoOut(
                    name=repo.name,
                    default_branch=repo.default_branch,
                    branches=[
                        BranchOut(branch=text(b), run=self.run_out(listing, now))
                        for b, listing in heads
                    ],
                    badge_url=badge_url(repo.name),
                )
            )
        return out

    def queue(self, limit: int = MAX_PAGE) -> list[RunOut]:
        now = self.clock()
        return [self.run_out(r, now) for r in self.store.queue_listing(limit)]
