"""`ciwatch why`: explain what happened to a push."""

from __future__ import annotations

import click

from ciwatch.app import App
from ciwatch.why import explain


@click.command()
@click.argument("repo")
@click.argument("what", metavar="REF|SHA")
@click.option(
    "-c",
    "--config",
    "config_path",
    envvar="CIWATCH_CONFIG",
    type=click.Path(dir_okay=False),
    help="Config file (default: $CIWATCH_CONFIG).",
)
def why(repo, what, config_path):
    """Tell what happened to a push of REF (a branch, tag or refs/… name) or a
    commit SHA (or a prefix) in REPO: which sources saw it, whether it was a
    duplicate, its runs, what they wait on, which `when` filters skipped what.

    \b
    Examples:
      ciwatch why app main
      ciwatch why app 1a2b3c4
    """
    app = App.load(config_path)
    for line in explain(app.store, app.state_dir, repo, what):
        click.echo(line)


COMMANDS = [why]
