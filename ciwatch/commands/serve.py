"""`ciwatch serve`: run the daemon in the foreground (systemd runs it so)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click

from ciwatch.errors import CiwatchError, ConfigError
from ciwatch.logsetup import MaskSecrets, setup_logging
from ciwatch.masking import Masker


@click.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    envvar="CIWATCH_CONFIG",
    type=click.Path(dir_okay=False),
    help="Config file (default: $CIWATCH_CONFIG, else built-in defaults).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def serve(config_path, log_level):
    """Run the daemon: watch every configured repository, build every push.

    SIGTERM stops intake, lets running steps finish within `daemon.shutdown_grace`
    and records the rest as interrupted (the next start runs them again); SIGHUP
    reloads the config (a bad one is refused and the running one kept).

    \b
    Example:
      ciwatch serve -c /etc/ciwatch/config.yaml
    """
    from ciwatch.daemon import Daemon

    handler = setup_logging(log_level, os.environ)
    daemon = Daemon(Path(config_path) if config_path else None)
    try:
        daemon.start()
    except ConfigError as exc:
        click.echo(f"ciwatch: {exc}", err=True)
        sys.exit(2)
    except CiwatchError as exc:
        click.echo(f"ciwatch: {exc}", err=True)
        sys.exit(1)
    mask = MaskSecrets(Masker(daemon.secrets.values()))
    handler.addFilter(mask)
    daemon.recent_errors.addFilter(mask)
    signal.signal(signal.SIGTERM, lambda *_: daemon.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: daemon.stopping.set())
    signal.signal(signal.SIGHUP, lambda *_: daemon.reload_asked.set())
    daemon.serve_forever()


COMMANDS = [serve]
