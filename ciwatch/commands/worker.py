"""`ciwatch worker`: the process the daemon starts ahead to execute runs, one at a time."""

from __future__ import annotations

import sys

import click


@click.command(hidden=True)
@click.option(
    "-c",
    "--config",
    "config_path",
    envvar="CIWATCH_CONFIG",
    type=click.Path(dir_okay=False),
    help="Config file (the daemon's).",
)
def worker(config_path):
    """Execute the runs whose ids arrive on standard input, one per line (started
    by `ciwatch serve`).

    Answers `done RUN STATUS` on standard output after each run. Exits when
    standard input closes: 0 when every run was executed, whatever its result;
    1 after an internal error.
    """
    # Imported before standard input is read: a spare waits fully loaded.
    from ciwatch.worker import main

    sys.exit(main(config_path))


COMMANDS = [worker]
