"""`ciwatch why REPO REF|SHA`: what happened to a push, from the records."""

from __future__ import annotations

import re
import time
from pathlib import Path

from ciwatch.logread import read_log
from ciwatch.model import Run, RunState, StepState, ref_display

_HEX = re.compile(r"^[0-9a-fA-F]{4,64}$")


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _secs(a: float | None, b: float | None) -> str:
    return f"{b - a:.2f}s" if a is not None and b is not None else "-"


def _setup_notes(state_dir: Path, run: Run) -> list[str]:
    path = state_dir / "runs" / str(run.id) / f"a{max(run.attempts, 1)}" / "setup.log"
    if not path.exists():
        return []
    return [line.data.decode("utf-8", "replace") for line in read_log(path)]


def run_lines(store, state_dir: Path, run: Run) -> list[str]:
    lines = [
        f"  run {run.label} (id {run.id}): {run.state.value}"
        + (f": {run.reason}" if run.reason else "")
    ]
    wait = _secs(run.created_at, run.started_at)
    took = _secs(run.started_at, run.finished_at)
    lines.append(
        f"    queued {_when(run.created_at)}, waited {wait}, ran {took}, attempts {run.attempts}"
    )
    if run.concurrency_group:
        lines.append(f"    concurrency group {run.concurrency_group!r} ({run.on_new_commit})")
    if run.state is RunState.QUEUED:
        lines.append(f"    waiting: {run.wait_reason or 'for the scheduler'}")
    if run.cancel_requested:
        lines.append(f"    stop asked: {run.cancel_requested} ({run.cancel_mode})")
    for note in _setup_notes(state_dir, run):
        lines.append(f"    {note}")
    for s in store.steps(run.id):
        if s.state is StepState.SKIPPED:
            lines.append(f"    step {s.name!r} skipped: {s.result.reason}")
        elif s.state not in (StepState.SUCCESS, StepState.PENDING, StepState.RUNNING):
            lines.append(f"    step {s.name!r} {s.state.value}: {s.result.reason}")
    return lines


def explain(store, state_dir: Path, repo: str, what: str) -> list[str]:
    """Lines telling what ciwatch knows about REF or SHA in `repo`."""
    store.get_repo(repo)  # NotFoundError names an unknown repository
    found = []
    if _HEX.match(what):
        found = store.find_events(repo, sha_prefix=what.lower())
    if not found:
        refs = [what] if what.startswith("refs/") else [f"refs/heads/{what}", f"refs/tags/{what}"]
        for ref in refs:
            found += store.find_events(repo, ref=ref, limit=5)
    if not found:
        return [
            f"{repo}: no event for {what!r}: no source has reported it.",
            "  Is the hook installed (ciwatch install-hook), or the repository watched or polled",
            "  (ciwatch status)? Does `branches:` in the config leave this ref out?",
        ]
    out = []
    for event_id, ev, received in found:
        before = f" (was {ev.before[:12]})" if ev.before else " (new ref)"
        head = f"{ev.kind.value} {ref_display(ev.ref)} {ev.sha[:12]}{before}"
        out.append(f"{head}, received {_when(received)}")
        sightings = store.sightings(event_id)
        seen = ", ".join(f"{s.source} (+{s.seen_at - received:.2f}s)" for s in sightings)
        out.append(f"  seen by: {seen}")
        if len(sightings) > 1:
            out.append(
                f"  {len(sightings) - 1} later sighting(s) were duplicates of the first: one run"
            )
        if not ev.trusted:
            out.append("  untrusted source: the run gets no secrets")
        runs = store.runs_for_event(event_id)
        if not runs:
            out.append("  no run was created")
        for run in runs:
            out += run_lines(store, state_dir, run)
    return out
