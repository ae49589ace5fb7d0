"""The command line's use of the daemon's HTTP API: finding the running
daemon, the operator's token, and following a run's logs over the API.

`runs`, `status`, `logs --follow` go through the API when a daemon answers
at the URL it recorded (STATE/daemon.url) or at $CIWATCH_URL; `cancel`,
`retry`, `trigger` too when a token is at hand (`web.token_file` readable,
or $CIWATCH_TOKEN). Otherwise they work as before: on the store, or over the
control socket.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

from ciwatch.apiclient import ApiClient, SseEvent
from ciwatch.config import Config
from ciwatch.errors import ConfigError
from ciwatch.forgewiring import read_credential
from ciwatch.hookinstall import default_url_file, read_daemon_url
from ciwatch.logread import LineKind, LogLine, render
from ciwatch.model import RunState, StepState, ref_display

URL_ENV = "CIWATCH_URL"
TOKEN_ENV = "CIWATCH_TOKEN"
POLL = 0.5


def web_token(config: Config, base: Path, environ: Mapping[str, str]) -> str | None:
    """The operator's token for the web actions (None: the web is read-only)."""
    w = config.web
    return read_credential(
        w.token_file, w.token_credential, base=base, environ=environ, key="web.token"
    )


def daemon_api(app, *, actions: bool = False) -> ApiClient | None:
    """The running daemon's API, or None: no daemon answers, or (`actions`) no
    token is at hand, so the caller uses the store or the control socket.
    With $CIWATCH_URL set, that daemon is used and its errors are the answer."""
    explicit = app.environ.get(URL_ENV)
    token = app.environ.get(TOKEN_ENV)
    if not token:
        try:
            token = web_token(app.config, app.base, app.environ)
        except ConfigError:
            token = None  # not readable by this user: the control socket still is
    if explicit:
        return ApiClient(explicit, token)
    if actions and not token:
        return None
    url = read_daemon_url(default_url_file(app.state_dir))
    if not url:
        return None
    client = ApiClient(url, token)
    return client if client.alive() else None


def find_run_id(client: ApiClient, spec: str) -> int:
    """A run id from "17" or "app#3"."""
    if "#" in spec:
        repo, _, number = spec.rpartition("#")
        return int(client.get(f"/api/repos/{quote(repo, safe='')}/runs/{int(number)}")["id"])
    return int(spec)


def records(ev: SseEvent) -> list[dict]:
    """The log records an event of the stream carries: `lines` holds a JSON
    list of them, a plain message one."""
    if ev.event not in ("lines", "message"):
        return []
    try:
        doc = json.loads(ev.data)
    except ValueError:
        return [{"kind": "output", "text": ev.data}]
    items = doc if isinstance(doc, list) else [doc]
    return [r for r in items if isinstance(r, dict)]


def _text(value) -> str:
    return ref_display(str(value)) if value is not None else "-"


def _header(s: dict) -> str:
    cell = f" [{_text(s['cell'])}]" if s.get("cell") else ""
    state = _text(s.get("state"))
    if s.get("reason") and s.get("state") not in (StepState.SUCCESS, StepState.RUNNING):
        state += f": {_text(s['reason'])}"
    return f"── {_text(s.get('name'))}{cell} ({state}) ──"


def _selected(detail: dict, step: str | None) -> list[dict]:
    steps = detail.get("steps") or []
    newest = max((s["attempt"] for s in steps), default=0)
    steps = [s for s in steps if s["attempt"] == newest]
    if step is None:
        return steps
    return [s for s in steps if s["name"] == step or str(s["index"]) == step]


def follow_logs(
    client: ApiClient, run_id: int, *, step: str | None, out: TextIO, poll: float = POLL
) -> str:
    """Print the run's step logs as they are written, step after step, until
    the run has finished; returns the run's final state."""
    shown: set[int] = set()
    while True:
        detail = client.get(f"/api/runs/{run_id}")
        finished = detail["state"] not in (RunState.QUEUED, RunState.RUNNING)
        for s in _selected(detail, step):
            if s["id"] in shown or s["state"] == StepState.PENDING:
                continue
            out.write(_header(s) + "\n")
            if s.get("started_at") is not None:
                for ev in client.events(f"/api/steps/{s['id']}/log/stream"):
                    if ev.event == "end":
                        break
                    for rec in records(ev):
                        kind = (
                            LineKind.NOTE if rec.get("kind") == LineKind.NOTE else LineKind.OUTPUT
                        )
                        raw = str(rec.get("text", "")).encode("utf-8", "surrogateescape")
                        out.write(render(LogLine(0.0, kind, raw)) + "\n")
                    out.flush()
            shown.add(s["id"])
        if finished:  # every step of that snapshot was final, and is shown
            break
        time.sleep(poll)
    if not shown and step is not None:
        out.write(f"{_text(detail['label'])}: no step {step!r}\n")
    reason = f": {_text(detail['reason'])}" if detail.get("reason") else ""
    out.write(f"{_text(detail['label'])}: {detail['state']}{reason}\n")
    return detail["state"]
