"""The daemon's `status` answer (the document ``ciwatch.commands.control``
describes) as lines for a person. Every field may be missing or of the wrong
type: what there is gets printed, and text from the daemon is made safe for a
terminal first."""

from __future__ import annotations

import time

from ciwatch.console import fmt_duration
from ciwatch.model import ref_display

__all__ = ["render_status", "safe_text"]


def safe_text(value) -> str:
    """Daemon-provided text made safe for a terminal (no escapes, no newlines)."""
    return ref_display(str(value)) if value is not None else "-"


def _ago(when, now: float) -> str:
    return f"{fmt_duration(max(0.0, now - when))} ago" if isinstance(when, int | float) else "-"


def _sources(raw) -> list[dict]:
    """SOURCE entries; a {"poll": [...], "watch": ["app"]} mapping is flattened."""
    if isinstance(raw, list):
        return [s for s in raw if isinstance(s, dict)]
    out: list[dict] = []
    if isinstance(raw, dict):
        for kind, items in raw.items():
            for item in items if isinstance(items, list) else [items]:
                out.append(
                    {"kind": kind, **item}
                    if isinstance(item, dict)
                    else {"kind": kind, "repo": item}
                )
    return out


def _count(value, listed: list) -> int:
    """A count the scheduler gave (a number or a list), else what is listed."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return len(value) if isinstance(value, list) else len(listed)


def render_status(st: dict, now: float) -> list[str]:
    """The status answer as lines for a person."""
    sched = st.get("scheduler") if isinstance(st.get("scheduler"), dict) else {}
    head = f"ciwatch daemon, pid {safe_text(st.get('pid'))}"
    if st.get("version"):
        head += f", version {safe_text(st['version'])}"
    if isinstance(st.get("started_at"), int | float):
        head += f", up {fmt_duration(max(0.0, now - st['started_at']))}"
    lines = [head]
    if st.get("state_dir"):
        lines.append(f"state directory: {safe_text(st['state_dir'])}")
    if st.get("web"):
        lines.append(f"web: {safe_text(st['web'])} (webhooks at /hooks/FORGE)")
    running, queued = st.get("running") or [], st.get("queued") or []
    mode = "paused" if sched.get("paused") else "draining" if sched.get("draining") else "running"
    slots = f" of {sched['max_running']}" if isinstance(sched.get("max_running"), int) else ""
    lines.append(
        f"scheduler: {mode}; {_count(sched.get('running'), running)}{slots} running,"
        f" {_count(sched.get('queued'), queued)} queued"
    )
    for title, runs in (("running", running), ("queued", queued)):
        if not runs:
            continue
        lines.append(f"{title}:")
        for r in runs:
            r = r if isinstance(r, dict) else {"label": r}
            sha = safe_text(r.get("sha"))[:10]
            started = r.get("started_at")
            if title == "running" and isinstance(started, int | float):
                extra = f"for {fmt_duration(max(0.0, now - started))}"
            else:
                extra = safe_text(r.get("waiting")) if r.get("waiting") else ""
            if isinstance(r.get("attempt"), int) and r["attempt"] > 1:
                extra += f" (attempt {r['attempt']})"
            ref = safe_text(r.get("ref")) if r.get("ref") else ""
            lines.append(
                f"  {safe_text(r.get('label')):<16} run {safe_text(r.get('id')):<6}"
                f" {ref:<24} {sha:<10}  {extra}".rstrip()
            )
    sources = _sources(st.get("sources"))
    if sources:
        lines.append("sources:")
        for s in sources:
            name = f"{safe_text(s.get('kind'))} {safe_text(s.get('repo')) if s.get('repo') else ''}"
            if s.get("last_error"):
                state = f"failing ({s.get('failures') or 1}x): {safe_text(s['last_error'])}"
            elif s.get("last_ok") is not None:
                state = f"ok, {_ago(s.get('last_ok'), now)}"
            else:
                state = "ok"
            lines.append(f"  {name.strip():<22} {state}")
    outbox = st.get("outbox") if isinstance(st.get("outbox"), dict) else {}
    if outbox.get("backlog") or outbox.get("failing"):
        failing = ", ".join(safe_text(f) for f in outbox.get("failing") or []) or "none"
        backlog = safe_text(outbox.get("backlog") or 0)
        lines.append(f"statuses: {backlog} waiting to be sent; failing forges: {failing}")
    errors = [e for e in st.get("errors") or [] if isinstance(e, dict)]
    if errors:
        lines.append("recent errors:")
        for e in errors:
            at = e.get("at")
            stamp = (
                time.strftime("%m-%d %H:%M:%S", time.localtime(at))
                if isinstance(at, int | float)
                else "-"
            )
            where = f"{safe_text(e['where'])}: " if e.get("where") else ""
            lines.append(f"  {stamp}  {where}{safe_text(e.get('message'))}")
    return lines
