"""`ciwatch serve`: run the daemon in the foreground (systemd runs it so)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import click

from ciwatch.errors import CiwatchError, ConfigError
from ciwatch.masking import Masker


class _MaskSecrets(logging.Filter):
    """Daemon log lines pass through the same masking as step logs."""

    def __init__(self, masker: Masker) -> None:
        super().__init__()
        self.masker = masker

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.masker.mask_text(record.getMessage())
        record.args = None
        return True


def setup_logging(level: str, environ) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    # journald stamps each line itself; elsewhere, say when.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger("ciwatch")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    return handler


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
    mask = _MaskSecrets(Masker(daemon.secrets.values()))
    handler.addFilter(mask)
    daemon.recent_errors.addFilter(mask)
    signal.signal(signal.SIGTERM, lambda *_: daemon.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: daemon.stopping.set())
    signal.signal(signal.SIGHUP, lambda *_: daemon.reload_asked.set())
    daemon.serve_forever()


COMMANDS = [serve]
