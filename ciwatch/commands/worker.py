"""`ciwatch worker`: the process the daemon starts ahead to execute one run."""

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
    """Execute the run whose id arrives on standard input (started by `ciwatch serve`).

    Exits 0 once the run was executed, whatever its result, or when standard
    input closes without a run id; 1 on an internal error.
    """
    # Imported before standard input is read: a spare waits fully loaded.
    from ciwatch.worker import main

    sys.exit(main(config_path))


COMMANDS = [worker]
