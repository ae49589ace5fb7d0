"""`ciwatch worker`: execute the one run whose id arrives on standard input.

Started ahead of need by the daemon's dispatcher: everything is imported and
the configuration read before the process blocks on its input. The
configuration is the one the daemon accepted, passed in the environment
(`worker_env`), not whatever the file holds now: an edit that was not reloaded,
or that the reload refused, never reaches a run. Without it (a worker started
by hand) the `-c` file is read. The run is executed by the same Runner as
`ciwatch run`, under a lease in the store.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from ciwatch import pipeline
from ciwatch.app import App
from ciwatch.config import Config
from ciwatch.errors import CiwatchError
from ciwatch.executors.base import CancelToken
from ciwatch.logsetup import MaskSecrets, setup_logging
from ciwatch.model import RunState

LEASE_ENV = "CIWATCH_LEASE_SECONDS"  # set by the daemon: its `daemon.lease`
CONFIG_ENV = "CIWATCH_WORKER_CONFIG"  # the daemon's accepted configuration, as JSON
BASE_ENV = "CIWATCH_WORKER_CONFIG_BASE"  # what relative paths in it are relative to


def worker_env(config: Config, base: Path) -> dict[str, str]:
    """The environment entries that give workers the daemon's configuration."""
    return {CONFIG_ENV: config.model_dump_json(), BASE_ENV: str(base)}


def load_app(config_path: str | None, environ: Mapping[str, str]) -> App:
    text = environ.get(CONFIG_ENV)
    if not text:
        return App.load(config_path, environ)
    config = Config.model_validate_json(text)
    base = Path(environ.get(BASE_ENV) or Path.cwd())
    path = Path(config_path).resolve() if config_path else None
    return App(config, base, config.state_path(environ, base), dict(environ), path)


def lease_seconds(app: App, environ: Mapping[str, str], log: logging.Logger) -> float:
    raw = environ.get(LEASE_ENV)
    if raw:
        try:
            value = float(raw)
            if value > 0:
                return value
        except ValueError:
            pass
        log.warning("%s=%r is not a positive number of seconds; using the config", LEASE_ENV, raw)
    return float(app.config.daemon.lease)


def main(
    config_path: str | None,
    *,
    stdin: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """0 when the run was executed (whatever its result) or there was none; 1 on
    an internal error. Reads one line: the run id."""
    environ = dict(os.environ if environ is None else environ)
    handler = setup_logging(logging.INFO, environ, pid=True)
    log = logging.getLogger("ciwatch.worker")
    try:
        app = load_app(config_path, environ)
    except (CiwatchError, ValueError) as exc:  # ValueError: pydantic's, for the JSON
        log.error("%s", exc)
        return 1
    # Build the pipeline models now, while idle, not during the run (they are
    # built on first use; ~13 ms on the push-to-step path otherwise).
    pipeline.parse(b"steps: [{run: 'true'}]\n", "warm-up.yml")
    line = (stdin or sys.stdin).readline()
    if not line.strip():
        return 0  # a spare told to go: nothing to do
    try:
        run_id = int(line.strip())
    except ValueError:
        log.error("expected a run id on standard input, got %r", line[:40])
        return 1
    try:
        run = app.store.get_run(run_id)
        if run.state is not RunState.QUEUED:
            log.info("%s: %s, not queued; nothing to do", run.label, run.state.value)
            return 0
        repo = next((r for r in app.config.repos if r.name == run.repo), None)
        runner = app.runner(pipeline_path=repo.pipeline if repo else ".ciwatch.yml")
        runner.settings = replace(runner.settings, lease_seconds=lease_seconds(app, environ, log))
        handler.addFilter(MaskSecrets(runner.masker))
        cancel = CancelToken()
        # A stop of the whole service reaches the worker too: the run goes back
        # to the queue instead of ending as a failure.
        signal.signal(
            signal.SIGTERM,
            lambda *_: cancel.cancel("the worker was stopped (SIGTERM)", requeue=True),
        )
        worker = f"{socket.gethostname()}:{os.getpid()}"
        log.info("%s: starting (run %d, %s) on %s", run.label, run.id, run.sha[:12], worker)
        try:
            final = runner.execute(run.id, worker=worker, cancel=cancel)
        except CiwatchError as exc:
            # Claimed by another worker or canceled since it was read: not ours.
            log.info("%s: not started: %s", run.label, exc)
            return 0
        said = f": {final.reason}" if final.reason else ""
        log.info("%s: %s%s", final.label, final.state.value, said)
        return 0
    except CiwatchError as exc:
        log.error("run %d: %s", run_id, exc)
        return 1
    except Exception:  # the process boundary: say what broke, exit non-zero
        log.exception("run %d: internal error", run_id)
        return 1
    finally:
        app.close()


if __name__ == "__main__":
    # The daemon starts workers as `python -m ciwatch.worker -c CONFIG`, not through
    # the CLI, so that a worker imports only what a run needs (no web, no forges).
    import argparse

    parser = argparse.ArgumentParser(prog="ciwatch worker")
    parser.add_argument(
        "-c", "--config", dest="config_path", default=os.environ.get("CIWATCH_CONFIG")
    )
    sys.exit(main(parser.parse_args().config_path))
