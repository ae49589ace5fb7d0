"""`ciwatch gc`: one retention pass now, printing what it removes.

The daemon makes the same pass at start and every hour (ciwatch.retention);
`gc` may run beside it: both ask the store at the moment of removal, and
their passes take turns on STATE/retention.lock.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import click

from ciwatch.cli import EXIT_COULD_NOT_RUN, _app, config_option
from ciwatch.config import Config
from ciwatch.logsetup import setup_logging
from ciwatch.retention import Retention
from ciwatch.retentionpolicy import RetentionPolicy


def retention_policy(config: Config) -> RetentionPolicy:
    """The config's `retention:` section, with the configured repositories."""
    r = config.retention
    return RetentionPolicy(
        runs=r.runs,
        log_days=r.log_days,
        workspace_days=r.workspace_days,
        rejected_days=r.rejected_days,
        repos=frozenset(repo.name for repo in config.repos),
    )


@click.command()
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@config_option
def gc(dry_run, config_path):
    """Remove what the `retention:` settings no longer keep: old runs with their
    logs and artifacts, logs of runs older than log_days, kept workspaces older
    than workspace_days, orphaned directories, cached checkouts of repositories
    no longer configured, old rejected spool files. Never anything of a queued
    or running run.

    \b
    Examples:
      ciwatch gc --dry-run -c /etc/ciwatch/config.yaml
      ciwatch gc
    """
    app = _app(config_path)
    setup_logging("warning", os.environ)  # what cannot be removed: on stderr

    def echo(text: str) -> None:
        click.echo(("would remove " if dry_run else "removed ") + text)

    retention = Retention(
        app.store,
        app.state_dir,
        retention_policy(app.config),
        now=time.time,
        log=logging.getLogger("ciwatch.gc"),
        dry_run=dry_run,
        on_item=echo,
    )
    report = retention.run(wait=False)
    if report.skipped:
        click.echo("waiting for the retention pass already running (the daemon's) to end")
        report = retention.run(wait=True)
    click.echo(("gc (dry run): " if dry_run else "gc: ") + report.summary())
    if report.problems:
        click.echo(f"gc: {len(report.problems)} things could not be removed (see above)", err=True)
        sys.exit(EXIT_COULD_NOT_RUN)


COMMANDS = [gc]
