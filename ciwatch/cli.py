"""The `ciwatch` command line.

Exit codes: 0 passed, 1 failed, 2 usage error, 3 ciwatch could not run it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import asdict
from pathlib import Path

import click

from ciwatch import __version__
from ciwatch.app import App
from ciwatch.commands import register
from ciwatch.errors import CiwatchError, ConfigError, NotFoundError
from ciwatch.model import EventKind, Run, RunState

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_COULD_NOT_RUN = 0, 1, 2, 3

_EXIT_FOR = {
    RunState.SUCCESS: EXIT_OK,
    RunState.SKIPPED: EXIT_OK,
    RunState.FAILURE: EXIT_FAILED,
    RunState.CANCELED: EXIT_FAILED,
    RunState.ERROR: EXIT_COULD_NOT_RUN,
}

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    envvar="CIWATCH_CONFIG",
    type=click.Path(dir_okay=False),
    help="Config file (default: $CIWATCH_CONFIG, else built-in defaults with state in ./.ciwatch).",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document on stdout."
)


def _app(config_path: str | None) -> App:
    try:
        return App.load(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_USAGE)


def _find_run(app: App, spec: str) -> Run:
    """RUN is a run id (17) or REPO#NUMBER (app#3)."""
    try:
        if "#" in spec:
            repo, _, num = spec.rpartition("#")
            return app.store.find_run(repo, int(num))
        return app.store.get_run(int(spec))
    except ValueError:
        raise click.BadParameter(f"{spec!r}: give a run id (17) or REPO#NUMBER (app#3)") from None
    except NotFoundError as exc:
        raise click.ClickException(str(exc)) from None


class _Group(click.Group):
    """Turns ciwatch's own errors into a message and an exit status, not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"ciwatch: {exc}", err=True)
            ctx.exit(EXIT_USAGE)
        except CiwatchError as exc:
            click.echo(f"ciwatch: {exc}", err=True)
            ctx.exit(EXIT_COULD_NOT_RUN)


@click.group(
    cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="ciwatch")
def main() -> None:
    """ciwatch: a small self-hosted CI runner.

    A repository carries its pipeline in .ciwatch.yml; ciwatch checks the commit
    out in a fresh workspace, runs the steps and keeps every log and record.

    \b
    Try it:
      ciwatch demo                 make an example repository and run its pipeline
      ciwatch run .                run this repository's pipeline at HEAD
      ciwatch lint                 check .ciwatch.yml without running it
      ciwatch runs                 list recorded runs
      ciwatch logs 1 --step test   show a step's log
    """


@main.command()
@click.argument("path", default=".", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--ref", help="Ref to build: refs/heads/x, a branch or a tag name (default: HEAD's branch)."
)
@click.option("--sha", help="Commit to build (default: the ref's commit).")
@click.option(
    "--event",
    "event",
    type=click.Choice([k.value for k in EventKind]),
    help="Event kind `when` sees (default: push for a branch, tag for a tag).",
)
@click.option(
    "--step",
    "steps",
    multiple=True,
    metavar="NAME",
    help="Run only this step (repeatable); the others are skipped.",
)
@click.option(
    "--pipeline", default=".ciwatch.yml", show_default=True, help="Pipeline file in the repository."
)
@config_option
def run(path, ref, sha, event, steps, pipeline, config_path):
    """Run the pipeline of the repository at PATH, as the daemon would.

    The commit is checked out from a mirror into a fresh workspace: uncommitted
    changes are not part of the run. Exit status: 0 passed, 1 failed, 3 ciwatch
    could not run it (invalid pipeline, fetch failure).

    \b
    Examples:
      ciwatch run                      HEAD of the repository here
      ciwatch run ~/src/app --ref release/2.0
      ciwatch run . --event pull_request --step test
    """
    from ciwatch.console import ConsoleObserver
    from ciwatch.localrun import prepare_local_run

    app = _app(config_path)
    observer = ConsoleObserver()
    worker = f"cli:{os.getpid()}"
    try:
        runner = app.runner(observer, pipeline_path=pipeline)
        run_, attempt = prepare_local_run(
            app.store,
            runner.mirrors,
            Path(path),
            ref=ref,
            sha=sha,
            event=event,
            worker=worker,
            lease_seconds=runner.settings.lease_seconds,
        )
    except CiwatchError as exc:
        click.echo(f"ciwatch: {exc}", err=True)
        sys.exit(EXIT_COULD_NOT_RUN)
    from ciwatch.executors.base import CancelToken

    cancel = CancelToken()
    box: dict = {}

    def work() -> None:
        try:
            box["run"] = runner.execute(
                run_.id,
                worker=worker,
                cancel=cancel,
                only_steps=frozenset(steps) or None,
                attempt=attempt,
            )
        except BaseException as exc:  # the thread boundary: reported below
            box["error"] = exc

    t = threading.Thread(target=work, name="run")
    t.start()
    while t.is_alive():
        try:
            t.join(0.2)
        except KeyboardInterrupt:
            if cancel.canceled:
                click.echo(
                    "ciwatch: interrupted twice; waiting for the steps to be killed", err=True
                )
            cancel.cancel("interrupted")
            click.echo("ciwatch: interrupted; stopping the run (Ctrl-C again to insist)", err=True)
    app.close()
    if "error" in box:
        click.echo(f"ciwatch: {box['error']}", err=True)
        sys.exit(EXIT_COULD_NOT_RUN)
    sys.exit(_EXIT_FOR[box["run"].state])


@main.command()
@click.argument("file", default=".ciwatch.yml", type=click.Path(dir_okay=False))
@config_option
def lint(file, config_path):
    """Check a pipeline file and list every problem as file:line:col: field: message.

    With a config (-c or $CIWATCH_CONFIG), its limits apply as the daemon's do:
    timeouts and resources over the operator's maxima are warned about."""
    from ciwatch import pipeline
    from ciwatch.config import read_config
    from ciwatch.diskspace import human_size
    from ciwatch.pipeline.plan import Limits, Severity

    limits, max_bytes = Limits(), 1 << 20
    if config_path:
        try:
            config, _ = read_config(Path(config_path))
        except ConfigError as exc:
            click.echo(str(exc), err=True)
            sys.exit(EXIT_USAGE)
        limits, max_bytes = config.limits.pipeline_limits(), config.limits.pipeline_max_bytes

    p = Path(file)
    if p.is_symlink():
        click.echo(
            f"{file}: is a symbolic link; ciwatch reads the pipeline from the commit"
            " and does not follow links",
            err=True,
        )
        sys.exit(EXIT_FAILED)
    try:
        size = p.stat().st_size
        if size > max_bytes:
            click.echo(
                f"{file}: {size / 1e6:.1f} MB is over the {human_size(max_bytes)} limit for a"
                " pipeline file",
                err=True,
            )
            sys.exit(EXIT_FAILED)
        data = p.read_bytes()
    except OSError as exc:
        click.echo(f"{file}: cannot read: {exc.strerror}", err=True)
        sys.exit(EXIT_USAGE)
    diags = pipeline.lint(data, file, limits, max_bytes=max_bytes)
    for d in diags:
        click.echo(str(d))
    errors = sum(d.severity is Severity.ERROR for d in diags)
    if errors:
        click.echo(f"{errors} error(s)", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(f"{file}: ok" + (f" ({len(diags)} warning(s))" if diags else ""))


@main.command()
def schema():
    """Print the JSON Schema of .ciwatch.yml (for editors and validators)."""
    from ciwatch import pipeline

    click.echo(json.dumps(pipeline.json_schema(), indent=2))


@main.command()
@click.argument("run_spec", metavar="RUN")
@json_option
@config_option
def artifacts(run_spec, as_json, config_path):
    """List the artifacts RUN collected (files copied out of its workspace)."""
    app = _app(config_path)
    run_ = _find_run(app, run_spec)
    items = app.store.artifacts(run_.id)
    if as_json:
        click.echo(json.dumps({"run": run_.id, "artifacts": [asdict(a) for a in items]}, indent=2))
        return
    if not items:
        click.echo(f"{run_.label}: no artifacts")
    for a in items:
        click.echo(f"{a.size:>10}  {a.path}  ->  {a.stored_path}")


@main.group()
def config():
    """Check the configuration."""


@config.command("check")
@config_option
def config_check(config_path):
    """Validate the config file and read its secret files; list every problem."""
    from ciwatch.config import read_secrets

    app = _app(config_path)
    read_secrets(app.config, app.base)
    c = app.config
    click.echo(f"{config_path or 'built-in defaults'}: ok")
    click.echo(f"  state directory: {app.state_dir}")
    click.echo(
        f"  repositories: {len(c.repos)}, forges: {len(c.forges)}, secrets: {len(c.secrets)}"
    )


@main.command()
@click.option(
    "--dir",
    "where",
    default=".ciwatch/demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the demo keeps its repository, config and state.",
)
@click.option("--once", is_flag=True, help="Stop after the first run (exit status: its result).")
def demo(where, once):
    """Start the daemon on a demo repository, push a commit, watch it build.

    Creates a bare repository with the shipped example pipeline, installs the
    post-receive hook, starts the daemon, pushes a commit and shows the run
    turn green; then keeps watching until Ctrl-C.
    """
    from ciwatch.demo import run_demo

    sys.exit(run_demo(Path(where), once=once, out=sys.stdout))


register(main)

if __name__ == "__main__":  # pragma: no cover
    main()
