"""Commands that talk to the running daemon over ``STATE/control.sock``:
`status`, `drain`, `pause`, `resume`, `cancel`, `retry`, `trigger`, `reload`.

`status` goes through the daemon's HTTP API when it answers (GET /api/status
gives the same document), and `cancel`, `retry`, `trigger` too when the
operator's web token is at hand (ciwatch.commands.viaapi); the socket is the
way in otherwise.

Each sends one request ``{"cmd": NAME, ...}``; the daemon answers one JSON
object. Every answer has ``"ok"``; a refusal is ``{"ok": false, "error":
"text for the user"}`` (printed as ``ciwatch: text``, exit status 3). Times are
unix seconds (floats); shas are 40 hex digits; refs are fully qualified.

``status`` (no arguments)::

    {"ok": true, "pid": 1234, "version": "0.1.0", "started_at": 1767225600.0,
     "state_dir": "/var/lib/ciwatch",
     "scheduler": {"running": 1, "queued": 2, "max_running": 2,
                   "paused": false, "draining": false},
     "running": [RUN, ...],            # oldest first
     "queued": [RUN, ...],             # in the order they will start
     "sources": [SOURCE, ...],
     "errors": [ERROR, ...]}           # newest first, a few dozen at most

    RUN    = {"id": 17, "label": "app#3", "ref": "refs/heads/main", "sha": "...",
              "attempt": 1, "created_at": ..., "started_at": ... | null,
              "waiting": "waiting for app#2 in group app/main"}   # queued runs
    SOURCE = {"kind": "hook" | "watch" | "poll" | "cron", "repo": "lib" | null,
              "last_ok": ... | null, "last_error": "..." | null,
              "failures": 0, "next_poll": ... | null}
    ERROR  = {"at": ..., "where": "poll lib", "message": "..."}

``drain``, ``pause``, ``resume`` (no arguments) -> ``{"ok": true}``. Pause and
drain both stop starting queued runs (events are still recorded; running runs
go on); `drain --wait` then polls `status` until nothing runs. `resume` undoes
either; a restarted daemon starts neither paused nor draining.

``cancel`` ``{"run": "17" | "app#3"}`` -> ``{"ok": true, "run": 17, "label":
"app#3"}``; a run that already finished is ``{"ok": false, "error": ...}``.

``retry`` ``{"run": "17" | "app#3"}`` -> ``{"ok": true, "run": 18, "label":
"app#4", "ref": ..., "sha": ...}``: a new run of the same event; a run still
queued or running is ``{"ok": false, "error": ...}``.

``trigger`` ``{"repo": "app", "ref": "main" | "refs/tags/v1" | null}`` (null:
the repository's default branch) -> ``{"ok": true, "run": 18, "label": "app#4",
"ref": "refs/heads/main", "sha": "..."}``.

``reload`` -> ``{"ok": true}``, or ``{"ok": false, "error": "<every problem>"}``
when the new configuration is refused (the running one is kept).

Fields may be missing from an answer; the commands print what there is.
"""

from __future__ import annotations

import json
import re
import sys
import time

import click

from ciwatch.apiclient import ApiClient
from ciwatch.app import App
from ciwatch.cli import config_option, json_option
from ciwatch.commands.statusview import render_status, safe_text
from ciwatch.commands.viaapi import daemon_api, find_run_id
from ciwatch.control import DaemonNotRunning, socket_path
from ciwatch.controlclient import ControlClient

TIMEOUT = 10.0  # seconds for an answer; the daemon answers these at once
TRIGGER_TIMEOUT = 120.0  # a trigger fetches the repository to resolve the branch
DRAIN_POLL = 1.0
_RUN_SPEC = re.compile(r"^(\d+|[A-Za-z0-9][A-Za-z0-9._-]*#\d+)$")


class _Client(ControlClient):
    """Without a config, the socket looked for is ./.ciwatch's: say how to point elsewhere."""

    def __init__(self, path, timeout: float, hint: str) -> None:
        super().__init__(path, timeout)
        self.hint = hint

    def call(self, cmd: str, **args) -> dict:
        try:
            return super().call(cmd, **args)
        except DaemonNotRunning as exc:
            if not self.hint:
                raise
            raise DaemonNotRunning(f"{exc}; {self.hint}") from None


def _api(config_path: str | None, *, actions: bool = False) -> ApiClient | None:
    return daemon_api(App.load(config_path), actions=actions)


def _client(config_path: str | None, timeout: float = TIMEOUT) -> ControlClient:
    app = App.load(config_path)
    hint = ""
    if not config_path and not app.config.state_dir:
        hint = "if the daemon runs with a config file, name it with -c or CIWATCH_CONFIG"
    return _Client(socket_path(app.state_dir), timeout, hint)


@click.command()
@json_option
@config_option
def status(as_json, config_path):
    """Show what the daemon is doing: running and queued runs, sources, recent errors."""
    api = _api(config_path)
    answer = api.get("/api/status") if api else _client(config_path).call("status")
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    for line in render_status(answer, time.time()):
        click.echo(line)


@click.command()
@click.option("--wait", is_flag=True, help="Return only when no run is running any more.")
@click.option(
    "--timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="With --wait: give up after this long (exit status 1).",
)
@config_option
def drain(wait, timeout, config_path):
    """Start no more runs; running ones finish. For upgrades and reboots:

    \b
      ciwatch drain --wait && systemctl restart ciwatch

    Queued runs stay queued (in the database) and start after `ciwatch resume`
    or a restart of the daemon.
    """
    client = _client(config_path)
    client.call("drain")
    click.echo("draining: no new run starts; queued runs stay queued")
    if not wait:
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    shown: list[str] | None = None
    while True:
        running = [
            safe_text(r.get("label") if isinstance(r, dict) else r)
            for r in client.call("status").get("running") or []
        ]
        if not running:
            click.echo("drained: nothing is running")
            return
        if running != shown:
            click.echo(f"waiting for {len(running)} running: {', '.join(running)}")
            shown = running
        if deadline is not None and time.monotonic() >= deadline:
            click.echo(f"ciwatch: still running after {timeout:g}s: {', '.join(running)}", err=True)
            sys.exit(1)
        time.sleep(DRAIN_POLL)


@click.command()
@config_option
def pause(config_path):
    """Start no more runs until `ciwatch resume`; pushes are still recorded and queued."""
    _client(config_path).call("pause")
    click.echo("paused: no new run starts; running runs go on; events are still queued")


@click.command()
@config_option
def resume(config_path):
    """Start queued runs again after `pause` or `drain`."""
    _client(config_path).call("resume")
    click.echo("resumed")


@click.command()
@click.argument("run_spec", metavar="RUN")
@config_option
def cancel(run_spec, config_path):
    """Cancel RUN (a run id, or REPO#NUMBER): a queued run never starts, a running
    one has its steps stopped (SIGTERM, then SIGKILL after the grace)."""
    if not _RUN_SPEC.match(run_spec):
        raise click.BadParameter(
            f"{run_spec!r}: give a run id (17) or REPO#NUMBER (app#3)", param_hint="RUN"
        )
    api = _api(config_path, actions=True)
    if api is not None:
        run = api.post(f"/api/runs/{find_run_id(api, run_spec)}/cancel")["run"]
        answer = {"run": run["id"], "label": run["label"]}
    else:
        answer = _client(config_path).call("cancel", run=run_spec)
    label = safe_text(answer.get("label") or run_spec)
    click.echo(f"cancel requested for {label} (run {safe_text(answer.get('run'))})")


def _action_answer(run: dict) -> dict:
    """An API answer's run in the control socket's answer shape."""
    return {
        "ok": True,
        "run": run["id"],
        "label": run["label"],
        "ref": run["ref"],
        "sha": run["sha"],
    }


@click.command()
@click.argument("run_spec", metavar="RUN")
@json_option
@config_option
def retry(run_spec, as_json, config_path):
    """Run RUN (a run id, or REPO#NUMBER) again: a new run of the same commit
    and ref, with the same trust. RUN must have finished."""
    if not _RUN_SPEC.match(run_spec):
        raise click.BadParameter(
            f"{run_spec!r}: give a run id (17) or REPO#NUMBER (app#3)", param_hint="RUN"
        )
    api = _api(config_path, actions=True)
    if api is not None:
        answer = _action_answer(api.post(f"/api/runs/{find_run_id(api, run_spec)}/retry")["run"])
    else:
        answer = _client(config_path).call("retry", run=run_spec)
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    click.echo(
        f"queued {safe_text(answer.get('label'))} (run {safe_text(answer.get('run'))}),"
        f" again {safe_text(answer.get('ref'))} at {safe_text(answer.get('sha'))[:12]}"
    )


@click.command()
@click.argument("repo")
@click.argument("ref", required=False)
@json_option
@config_option
def trigger(repo, ref, as_json, config_path):
    """Queue a run of REPO at the current commit of REF (a branch, a tag as
    refs/tags/NAME, or any refs/… name; default: the repository's default branch).

    \b
    Examples:
      ciwatch trigger app
      ciwatch trigger app release/2.0
    """
    api = _api(config_path, actions=True)
    if api is not None:
        body = {"repo": repo, "branch": ref}
        answer = _action_answer(api.post("/api/trigger", body, timeout=TRIGGER_TIMEOUT)["run"])
    else:
        answer = _client(config_path, TRIGGER_TIMEOUT).call("trigger", repo=repo, ref=ref)
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    click.echo(
        f"queued {safe_text(answer.get('label'))} (run {safe_text(answer.get('run'))}):"
        f" {safe_text(answer.get('ref'))} at {safe_text(answer.get('sha'))[:12]}"
    )


@click.command()
@config_option
def reload(config_path):
    """Re-read the configuration (as `systemctl reload ciwatch` does); a bad one
    is refused with every problem listed and the running one is kept."""
    _client(config_path, TRIGGER_TIMEOUT).call("reload")
    click.echo("configuration reloaded")


COMMANDS = [status, drain, pause, resume, cancel, retry, trigger, reload]
