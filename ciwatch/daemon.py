"""`ciwatch serve`: the composition root. Config in, objects wired, signals handled.

Nothing below this module reads the configuration; everything gets plain
values and collaborators from here.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from ciwatch.commands.gc import retention_policy
from ciwatch.config import Config, read_config, read_secrets
from ciwatch.control import ControlServer
from ciwatch.daemonops import Operations
from ciwatch.diskspace import DiskCheck, SpaceRule
from ciwatch.dispatch import LocalDispatcher
from ciwatch.errors import CiwatchError
from ciwatch.executors.cgroups import enter_leaf
from ciwatch.executors.engine import check_engine, find_engine, remove_leftovers, scope_of
from ciwatch.executors.sandbox import check_sandbox
from ciwatch.faults import fault_from
from ciwatch.forgewiring import forge_clients, hook_forges, horizons, repo_forges
from ciwatch.git import Git
from ciwatch.hookinstall import default_spool, default_url_file, write_daemon_url
from ciwatch.intake import Intake
from ciwatch.logsetup import RecentErrors
from ciwatch.model import Repo
from ciwatch.outbox import Outbox
from ciwatch.recovery import recover
from ciwatch.reporting import Reporter
from ciwatch.resolve import Resolver
from ciwatch.retention import Retention
from ciwatch.scheduler import Scheduler
from ciwatch.sdnotify import NOTIFY_ENV, Notifier
from ciwatch.sources.barewatch import BareWatch
from ciwatch.sources.cron import CronSource
from ciwatch.sources.hookspool import HookSpool
from ciwatch.sources.poller import Poller, PollTarget
from ciwatch.statelock import hold_lock
from ciwatch.store import Store
from ciwatch.web.server import WebServer, split_listen
from ciwatch.webapp import build_app
from ciwatch.worker import LEASE_ENV, worker_env
from ciwatch.workspace import Mirrors


@dataclass
class Wiring:
    """What a config turns into, for one generation of the daemon (reload swaps it)."""

    config: Config
    base: Path
    repos: dict[str, Repo]


class Daemon:
    def __init__(
        self,
        config_path: Path | None,
        *,
        environ: Mapping[str, str] | None = None,
        log: logging.Logger | None = None,
        worker_argv: list[str] | None = None,
    ) -> None:
        self.config_path = config_path.resolve() if config_path else None
        self.environ = dict(os.environ if environ is None else environ)
        self.log = log or logging.getLogger("ciwatch.daemon")
        self.worker_argv = worker_argv
        self.stopping = threading.Event()
        self.reload_asked = threading.Event()
        self.notifier = Notifier.from_environ(self.environ)
        self.started_at = time.time()
        self.outbox: Outbox | None = None
        self.recent_errors = RecentErrors()
        logging.getLogger("ciwatch").addHandler(self.recent_errors)

    # -- start ---------------------------------------------------------------

    def start(self) -> None:
        config, base = read_config(self.config_path)
        self.secrets = read_secrets(config, base)  # refuse to start with an unreadable secret
        self.state_dir = config.state_path(self.environ, base)
        if config.executor.kind == "sandbox":
            check_sandbox(config.executor.bwrap)  # a clear error now, not at the first run
        if config.executor.kind == "container":
            engine = find_engine(config.executor.engine, self.environ)
            check_engine(engine)  # a clear error now, not at the first run
            for name in remove_leftovers(engine, scope_of(self.state_dir)):
                self.log.info("removed container %s, left by a ciwatch process that died", name)
        self.lock_fd = hold_lock(self.state_dir)
        leaf = enter_leaf()  # cgroup v2 under systemd: step cgroups go beside this leaf
        if leaf is not None:
            self.log.info("moved into cgroup %s; steps get cgroups beside it", leaf)
        self.store = Store.open(self.state_dir / "ciwatch.db")
        self.mirrors = Mirrors(self.state_dir)
        self.git = Git(self.state_dir / "git-home")
        (self.state_dir / "git-home").mkdir(exist_ok=True)
        self.wiring = self._wire(config, base)

        for line in recover(self.store, max_attempts=config.daemon.max_attempts, log=self.log):
            self.log.info("recovery: %s", line)

        argv = self.worker_argv or [sys.executable, "-m", "ciwatch.worker"]
        if self.config_path:
            argv = [*argv, "-c", str(self.config_path)]
        env = {k: v for k, v in self.environ.items() if k not in NOTIFY_ENV}
        env.update(self._worker_env(config, base))
        if config.state_dir is None:
            env.setdefault("STATE_DIRECTORY", str(self.state_dir))
        self.dispatcher = LocalDispatcher(
            argv,
            spares=config.daemon.spare_workers,
            env=env,
            on_done=lambda run_id, rc: self._wake(),
            log=self.log,
        )
        self.resolver = self._resolver(config)
        self.scheduler = Scheduler(
            self.store,
            self.dispatcher,
            self.resolver,
            max_running=config.concurrency,
            repo_limits=self._repo_limits(config),
            log=self.log,
            disk_check=self._disk_check(config),
        )
        self.intake = Intake(self.store, self._wake, self.log, fault=fault_from(self.environ))
        self.ops = Operations(self)

        self.aps = BackgroundScheduler(timezone="UTC")
        self.aps.start()
        # Retention: now (recovery is done) and hourly, on the scheduler's threads.
        self.aps.add_job(
            self._retention,
            "interval",
            hours=1,
            next_run_time=datetime.now(UTC),
            id="retention",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,  # a pass that starts late still runs
        )
        self.spool_dir = default_spool(self.state_dir)
        self.spool = HookSpool(self.spool_dir, self.intake, self._known, log=self.log)
        self.watch = BareWatch(self.intake, self.store, self.git, log=self.log)
        self.poller = Poller(
            self.intake,
            self.store,
            self.git,
            self.aps,
            max_concurrent=config.daemon.max_concurrent_polls,
            rng=random.Random(),
            log=self.log,
        )
        self.cron = CronSource(self.intake, self.aps, self.ops.resolve_head, log=self.log)
        self._apply_sources(config)
        self.spool.start()
        self.watch.start()
        self.poller.start()
        self.cron.start()
        self.scheduler.start()
        self._start_forges(config, base)
        self.control = ControlServer(self.state_dir / "control.sock", self.ops.handlers(), self.log)
        self.control.start()
        self._write_url(config)
        self.notifier.ready(status=self.ops.status_line())
        self.log.info(
            "ciwatch serving %d repositories from %s", len(self.wiring.repos), self.state_dir
        )

    def _wire(self, config: Config, base: Path) -> Wiring:
        repos = {}
        for r in config.repos:
            url = str((base / r.path).resolve()) if r.path else r.url
            repos[r.name] = self.store.ensure_repo(r.name, url, r.default_branch)
        return Wiring(config, base, repos)

    def _start_forges(self, config: Config, base: Path) -> None:
        """Statuses out (the reporting sweep feeds the outbox), webhooks in."""
        self.reporter = Reporter(
            self.store, repo_forges(config), self._public_url(config), log=self.log
        )
        self.outbox = Outbox(
            self.store,
            forge_clients(config, base, self.environ),
            horizons=horizons(config),
            before_pass=self.reporter.sweep,
            log=self.log,
        )
        self.outbox.start()
        self.hook_forges = hook_forges(config, base, self.environ)
        host, port = split_listen(config.listen)
        self.web = WebServer(build_app(self), host, port, self.log)
        self.web.start()

    @staticmethod
    def _public_url(config: Config) -> str:
        return (config.public_url or f"http://{config.listen}").rstrip("/")

    def _resolver(self, config: Config) -> Resolver:
        return Resolver(
            self.store,
            self.mirrors,
            limits=config.limits.pipeline_limits(),
            pipeline_max_bytes=config.limits.pipeline_max_bytes,
            pipeline_paths={r.name: r.pipeline for r in config.repos},
            log=self.log,
        )

    @staticmethod
    def _worker_env(config: Config, base: Path) -> dict[str, str]:
        """Workers run with the configuration this daemon accepted, not the file's
        current text (an edit not reloaded, or refused, never reaches a run)."""
        return {**worker_env(config, base), LEASE_ENV: str(config.daemon.lease)}

    def _wake(self) -> None:
        """A new run: the scheduler may start it, the outbox reports it pending."""
        self.scheduler.wake()
        if self.outbox is not None:  # started after the intake
            self.outbox.wake()

    def _retention(self) -> None:
        """One retention pass; a failure is logged, never raised (the daemon goes on)."""
        try:
            Retention(
                self.store,
                self.state_dir,
                retention_policy(self.wiring.config),
                now=time.time,
                log=self.log,
                stopping=self.stopping.is_set,
            ).run()
        except Exception as exc:  # the job boundary
            if self.stopping.is_set():
                self.log.debug("retention pass cut short by the stop: %s", exc)
            else:
                self.log.exception("retention pass failed")

    def _known(self, name: str) -> bool:
        return name in self.wiring.repos

    def _disk_check(self, config: Config) -> DiskCheck:
        """Runs wait while the workspaces' or the state's filesystem is short of space."""
        ws, state = config.daemon.min_free_space, config.daemon.min_free_state_space
        rules = (
            SpaceRule(self.state_dir / "workspaces", ws.size, ws.percent),
            SpaceRule(self.state_dir, state.size, state.percent),  # the database
            SpaceRule(self.state_dir / "runs", state.size, state.percent),  # the logs
        )
        return DiskCheck(rules, log=self.log)

    @staticmethod
    def _repo_limits(config: Config) -> dict[str, int]:
        return {r.name: r.concurrency for r in config.repos if r.concurrency}

    def _apply_sources(self, config: Config) -> None:
        w = self.wiring
        self.watched = [r.name for r in config.repos if r.path and r.watch]
        self.schedules = [(w.repos[s.repo], s.cron, s.branch) for s in config.schedules]
        local = [
            (w.repos[r.name], Path(w.repos[r.name].url)) for r in config.repos if r.path and r.watch
        ]
        self.watch.set_repos(local)
        self.poller.set_repos(
            [
                PollTarget(
                    w.repos[r.name],
                    w.repos[r.name].url,
                    r.poll_interval,
                    r.branches,
                    r.pull_requests,
                )
                for r in config.repos
                if r.url or r.poll
            ]
        )
        self.cron.set_schedules([(w.repos[s.repo], s.cron, s.branch) for s in config.schedules])

    def _write_url(self, config: Config) -> None:
        url = config.public_url or self.web.url
        write_daemon_url(default_url_file(self.state_dir), os.getpid(), url)

    # -- run -----------------------------------------------------------------

    def serve_forever(self, tick: float = 1.0) -> None:
        """Until stop is asked: reload on request, recover lost attempts, ping systemd."""
        last_recovery = time.monotonic()
        shown = ""
        while not self.stopping.wait(tick):
            if self.reload_asked.is_set():
                self.reload_asked.clear()
                self.reload()
            if time.monotonic() - last_recovery >= 5:
                last_recovery = time.monotonic()
                try:
                    for line in recover(
                        self.store,
                        max_attempts=self.wiring.config.daemon.max_attempts,
                        log=self.log,
                    ):
                        self.log.warning("recovery: %s", line)
                        self.scheduler.wake()
                except CiwatchError as exc:
                    self.log.error("recovery failed: %s", exc)
            self.notifier.watchdog()
            line = self.ops.status_line()
            if line != shown:
                shown = line
                self.notifier.status(line)
        self.stop()

    def reload(self) -> str | None:
        """Re-read the config; a bad one is refused (the problems are returned)
        and the running one kept."""
        self.notifier.reloading()
        try:
            config, base = read_config(self.config_path)
            self.secrets = read_secrets(config, base)
            if config.state_path(self.environ, base) != self.state_dir:
                raise CiwatchError("state_dir cannot change while running; restart instead")
        except CiwatchError as exc:
            self.log.error("reload refused, keeping the running configuration: %s", exc)
            self.notifier.ready()
            return str(exc)
        self.wiring = self._wire(config, base)
        self._apply_sources(config)
        self.scheduler.set_limits(config.concurrency, self._repo_limits(config))
        self.scheduler.disk_check = self._disk_check(config)
        self.scheduler.resolver = self.resolver = self._resolver(config)
        self.reporter.forges = repo_forges(config)
        self.outbox.set_clients(forge_clients(config, base, self.environ), horizons(config))
        self.hook_forges.clear()
        self.hook_forges.update(hook_forges(config, base, self.environ))
        self.dispatcher.update_env(self._worker_env(config, base))
        self.log.info("configuration reloaded: %d repositories", len(self.wiring.repos))
        self.notifier.ready()
        return None

    def stop(self) -> None:
        """Stop intake, let running steps finish within the grace, record the rest
        as interrupted (they run again at the next start)."""
        self.notifier.stopping()
        self.log.info("stopping: intake closed")
        for part in (self.web, self.control, self.spool, self.watch, self.poller, self.cron):
            try:
                part.stop()
            except Exception:  # a stop boundary: the others must still stop
                self.log.exception("stopping %s failed", type(part).__name__)
        self.aps.shutdown(wait=False)
        self.scheduler.drain()
        self.scheduler.stop()
        left = self.dispatcher.shutdown(self.wiring.config.daemon.shutdown_grace, self.store)
        if left:
            self.log.warning("left running at exit: %s", left)
        self.outbox.stop()  # what it could not send yet stays in the store for the next start
        try:
            default_url_file(self.state_dir).unlink()
        except FileNotFoundError:
            pass
        self.store.close()
        os.close(self.lock_fd)
        self.log.info("stopped")
