"""`ciwatch runs` and `ciwatch logs`: the history, from the running daemon's
API when one answers, else from the store.

`runs --json` prints ``{"runs": [RUN, ...]}`` with RUN as GET /api/runs
gives it (docs/api.md), whichever way it was read.
"""

from __future__ import annotations

import json
import sys
import time

import click

from ciwatch.apiclient import ApiError
from ciwatch.cli import _app, _find_run, config_option, json_option
from ciwatch.commands.viaapi import daemon_api, find_run_id, follow_logs
from ciwatch.console import fmt_duration
from ciwatch.errors import NotFoundError
from ciwatch.model import RunState, ref_display
from ciwatch.store.queries import RunFilter
from ciwatch.web.apimodels import Trigger
from ciwatch.web.readmodel import MAX_PAGE, ReadModel


def _text(value) -> str:
    return ref_display(str(value)) if value is not None else "-"


def _ref(branch: str | None) -> str | None:
    if branch is None:
        return None
    return branch if branch.startswith("refs/") else f"refs/heads/{branch}"


def api_runs(api, filters: dict, limit: int) -> list[dict]:
    out: list[dict] = []
    before = None
    while len(out) < limit:
        params = {**filters, "before": before, "limit": min(MAX_PAGE, limit - len(out))}
        page = api.get("/api/runs", params)
        out += page["runs"]
        before = page.get("next")
        if before is None:
            break
    return out


def store_runs(store, filters: dict, limit: int) -> list[dict]:
    read = ReadModel(store, clock=time.time)
    where = RunFilter(
        repo=filters["repo"],
        ref=_ref(filters["branch"]),
        state=RunState(filters["state"]) if filters["state"] else None,
        source=filters["trigger"],
    )
    out: list[dict] = []
    before = None
    while len(out) < limit:
        page = read.runs(where, before=before, limit=min(MAX_PAGE, limit - len(out)))
        out += [r.model_dump(mode="json") for r in page.runs]
        before = page.next
        if before is None:
            break
    return out


@click.command()
@click.option("--repo", help="Only this repository's runs.")
@click.option("--branch", help="Only this branch's runs (a name, or a full ref).")
@click.option(
    "--state", type=click.Choice([s.value for s in RunState]), help="Only runs in this state."
)
@click.option(
    "--trigger",
    type=click.Choice([t.value for t in Trigger]),
    help="Only runs triggered by this source.",
)
@click.option(
    "--limit", default=20, show_default=True, type=click.IntRange(1), help="How many, newest first."
)
@json_option
@config_option
def runs(repo, branch, state, trigger, limit, as_json, config_path):
    """List runs, newest first.

    \b
    Examples:
      ciwatch runs --repo app --branch main
      ciwatch runs --state failure --trigger cron --limit 100
    """
    app = _app(config_path)
    filters = {"repo": repo, "branch": branch, "state": state, "trigger": trigger}
    api = daemon_api(app)
    rows = (
        api_runs(api, filters, limit) if api is not None else store_runs(app.store, filters, limit)
    )
    if as_json:
        click.echo(json.dumps({"runs": rows}, indent=2))
        return
    if not rows:
        filtered = any(v is not None for v in filters.values())
        click.echo("no runs match" if filtered else "no runs yet; try: ciwatch run .")
        return
    click.echo(f"{'id':>5}  {'run':<20} {'state':<9} {'sha':<10} {'time':>7}  {'trigger':<8} ref")
    for r in rows:
        took = fmt_duration(r["duration"]) if r.get("duration") is not None else "-"
        subject = f"  {_text(r['subject'])[:60]}" if r.get("subject") else ""
        click.echo(
            f"{r['id']:>5}  {_text(r['label']):<20} {_text(r['state']):<9}"
            f" {_text(r['short_sha']):<10} {took:>7}  {_text(r['source']):<8}"
            f" {_text(r['ref_name'])}{subject}"
        )


@click.command()
@click.argument("run_spec", metavar="RUN")
@click.option("--step", "step", help="Only this step (name or index).")
@click.option(
    "--follow", "-f", is_flag=True, help="Keep printing as the run goes on, until it ends."
)
@config_option
def logs(run_spec, step, follow, config_path):
    """Show the logs of RUN (a run id, or REPO#NUMBER), step by step. With
    --follow, from the running daemon's API when one answers."""
    from ciwatch.logview import show_logs

    app = _app(config_path)
    api = daemon_api(app) if follow else None
    if api is not None:
        try:
            run_id = find_run_id(api, run_spec)
        except ValueError:
            raise click.BadParameter(
                f"{run_spec!r}: give a run id (17) or REPO#NUMBER (app#3)", param_hint="RUN"
            ) from None
        except NotFoundError as exc:
            raise click.ClickException(str(exc)) from None
        try:
            follow_logs(api, run_id, step=step, out=sys.stdout)
        except NotFoundError as exc:
            raise click.ClickException(str(exc)) from None
        except ApiError as exc:
            if exc.status != 410:  # 410: the logs were removed by retention
                raise
            click.echo(f"{run_spec}: {exc.detail}")
        return
    run_ = _find_run(app, run_spec)
    show_logs(app.store, run_, step=step, follow=follow, out=sys.stdout)


COMMANDS = [runs, logs]
