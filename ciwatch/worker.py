"""`ciwatch worker`: execute the runs whose ids arrive on standard input, one at a time.

Started ahead of need by the daemon's dispatcher: everything is imported, the
configuration read and a small pipeline parsed before the process blocks on
its input. After a run it reports `done RUN STATUS` on standard output and
waits for the next; it retires (`bye REASON`, then exits when its input
closes) after `daemon.worker_max_runs` runs, `worker_max_idle` without one, a
resident size over `worker_max_rss`, an internal error, or a run that left a
thread or a file descriptor behind. What a run changed in the process (cwd,
environment, umask, signal handlers, logging) is put back before the next. The
configuration is the one the daemon accepted, passed in the environment
(`worker_env`), not whatever the file holds now: an edit that was not reloaded,
or that the reload refused, never reaches a run. Without it (a worker started
by hand) the `-c` file is read. The run is executed by the same Runner as
`ciwatch run`, under a lease in the store.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from ciwatch import pipeline
from ciwatch.app import App
from ciwatch.config import Config
from ciwatch.errors import CiwatchError
from ciwatch.executors.base import CancelToken
from ciwatch.logsetup import MaskSecrets, setup_logging
from ciwatch.model import EventKind, RunState
from ciwatch.pipeline.plan import EventContext, Limits
from ciwatch.workerstate import ProcessState, rss_bytes

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


@dataclass(frozen=True)
class Bounds:
    """When a worker retires instead of taking another run."""

    max_runs: int = 100
    max_idle: float = 3600.0  # seconds without a run
    max_rss: int = 256 << 20  # bytes of resident memory after a run

    @classmethod
    def of(cls, app: App) -> Bounds:
        d = app.config.daemon
        return cls(d.worker_max_runs, d.worker_max_idle, d.worker_max_rss)


class Channel:
    """The worker's line protocol with its dispatcher: run ids in; `ready`,
    `done RUN STATUS` and `bye REASON` out."""

    def __init__(self, in_fd: int, out_fd: int) -> None:
        self.in_fd, self.out_fd = in_fd, out_fd
        self._buf = b""

    @classmethod
    def from_stdio(cls) -> Channel:
        """Take standard input and output for the protocol and put /dev/null in
        their place: nothing a step starts can read a run id or write a reply
        (the copies are close-on-exec)."""
        channel = cls(os.dup(0), os.dup(1))
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        return channel

    def read_line(self, timeout: float | None) -> str | None:
        """The next line; None at end of input; "" as soon as `timeout` passes."""
        while b"\n" not in self._buf:
            ready, _, _ = select.select([self.in_fd], [], [], timeout)
            if not ready:
                return ""
            chunk = os.read(self.in_fd, 4096)
            if not chunk:
                return None if not self._buf else self._take(len(self._buf))
            self._buf += chunk
        return self._take(self._buf.index(b"\n") + 1)

    def _take(self, n: int) -> str:
        line, self._buf = self._buf[:n], self._buf[n:]
        return line.decode(errors="replace").rstrip("\n") + "\n"

    def send(self, text: str) -> None:
        try:
            os.write(self.out_fd, f"{text}\n".encode())
        except OSError:
            pass  # the dispatcher is gone; reading our input will end too


def main(
    config_path: str | None,
    *,
    environ: Mapping[str, str] | None = None,
    channel: Channel | None = None,
) -> int:
    """Execute the runs whose ids arrive one per line, one at a time, until the
    input ends. 0 when every run was executed (whatever its result); 1 on an
    internal error, after which the worker takes no more runs."""
    environ = dict(os.environ if environ is None else environ)
    handler = setup_logging(logging.INFO, environ, pid=True)
    log = logging.getLogger("ciwatch.worker")
    try:
        app = load_app(config_path, environ)
        app.store.list_repos()  # opened now (and its files), not during the first run
    except (CiwatchError, ValueError) as exc:  # ValueError: pydantic's, for the JSON
        log.error("%s", exc)
        return 1
    try:
        warm_up()
        return _serve(app, channel or Channel.from_stdio(), environ, handler, log)
    finally:
        app.close()


def warm_up() -> None:
    """Pay, while idle, what the first run would: the pipeline models are built
    on first use (~13 ms on the push-to-step path otherwise)."""
    spec = pipeline.parse(b"steps: [{run: 'true'}]\n", "warm-up.yml")
    ctx = EventContext(kind=EventKind.PUSH, ref="refs/heads/w", sha="0" * 40, branch="w")
    pipeline.compile(spec, ctx, Limits())


def _serve(app: App, channel: Channel, environ, handler, log: logging.Logger) -> int:
    bounds = Bounds.of(app)
    status, runs, leaving = 0, 0, ""
    channel.send("ready")
    while True:
        # Once it said bye, the worker waits for its input to close: a run id
        # sent before the dispatcher read the bye is still executed.
        line = channel.read_line(None if leaving else bounds.max_idle)
        if line is None:
            return status
        if line == "":
            leaving = f"idle for {bounds.max_idle:g} s"
            log.info("retiring: %s", leaving)
            channel.send(f"bye {leaving}")
            continue
        if not line.strip():
            return status  # told to go
        try:
            run_id = int(line.strip())
        except ValueError:
            log.error("expected a run id on standard input, got %r", line.strip()[:40])
            status, leaving = 1, leaving or "bad input"
            channel.send(f"bye {leaving}")
            continue
        before = ProcessState.capture()
        rc = run_one(app, run_id, environ, handler, log)
        runs += 1
        changed = before.restore()
        if changed:
            log.warning("run %d changed the worker's %s; put back", run_id, ", ".join(changed))
        status = max(status, rc)
        if not leaving:
            leaving = _why_retire(rc, runs, bounds, before)
            if leaving:
                log.info("retiring after %d runs: %s", runs, leaving)
                channel.send(f"bye {leaving}")
        channel.send(f"done {run_id} {rc}")


def _why_retire(rc: int, runs: int, bounds: Bounds, before: ProcessState) -> str:
    if rc != 0:
        return "an internal error"
    leaks = before.leaks()
    if leaks:
        return "the run left " + ", ".join(leaks)
    if runs >= bounds.max_runs:
        return f"{runs} runs"
    rss = rss_bytes()
    if rss > bounds.max_rss:
        return f"{rss >> 20} MiB resident, over {bounds.max_rss >> 20} MiB"
    return ""


def run_one(app: App, run_id: int, environ, handler, log: logging.Logger) -> int:
    """Execute one run: 0 when it was executed (whatever its result) or was not
    ours to run; 1 on an internal error."""
    label = f"run {run_id}"  # the repo and its number once the run is read
    try:
        run = app.store.get_run(run_id)
        label = f"{run.label} (run {run_id})"
        if run.state is not RunState.QUEUED:
            log.info("%s: %s, not queued; nothing to do", run.label, run.state.value)
            return 0
        repo = next((r for r in app.config.repos if r.name == run.repo), None)
        runner = app.runner(pipeline_path=repo.pipeline if repo else ".ciwatch.yml")
        runner.settings = replace(runner.settings, lease_seconds=lease_seconds(app, environ, log))
        mask = MaskSecrets(runner.masker)
        cancel = CancelToken()
        # A stop of the whole service reaches the worker too: the run goes back
        # to the queue instead of ending as a failure. Between runs SIGTERM ends
        # the worker, which holds nothing then.
        on_term = signal.signal(
            signal.SIGTERM,
            lambda *_: cancel.cancel("the worker was stopped (SIGTERM)", requeue=True),
        )
        handler.addFilter(mask)
        worker = f"{socket.gethostname()}:{os.getpid()}"
        log.info("%s: starting (run %d, %s) on %s", run.label, run.id, run.sha[:12], worker)
        try:
            final = runner.execute(run.id, worker=worker, cancel=cancel)
            said = f": {final.reason}" if final.reason else ""
            log.info("%s: %s%s", final.label, final.state.value, said)
        except CiwatchError as exc:
            # Claimed by another worker or canceled since it was read: not ours.
            log.info("%s: not started: %s", run.label, exc)
        finally:
            signal.signal(signal.SIGTERM, on_term)
            handler.removeFilter(mask)
        return 0
    except CiwatchError as exc:
        log.error("%s: %s", label, exc)
        return 1
    except Exception:  # the run's boundary: say what broke, take no more runs
        log.exception("%s: internal error", label)
        return 1


if __name__ == "__main__":
    # The daemon starts workers as `python -m ciwatch.worker -c CONFIG`, not through
    # the CLI, so that a worker imports only what a run needs (no web, no forges).
    import argparse

    parser = argparse.ArgumentParser(prog="ciwatch worker")
    parser.add_argument(
        "-c", "--config", dest="config_path", default=os.environ.get("CIWATCH_CONFIG")
    )
    sys.exit(main(parser.parse_args().config_path))
