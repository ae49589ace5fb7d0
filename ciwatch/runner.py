"""One attempt of one run: workspace -> pipeline file -> plan -> steps -> result.

The daemon and `ciwatch run` both call `Runner.execute`; nothing else runs a
pipeline. Whatever happens inside, the attempt and the run end in a final
state: a run never stays `running` because of something raised here.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ciwatch import pipeline
from ciwatch.diskspace import SpaceRule, human_size, measure
from ciwatch.errors import CiwatchError, GitError, PipelineError, WorkspaceError
from ciwatch.executors.base import CancelToken, Executor
from ciwatch.logs import StepLog
from ciwatch.masking import Masker
from ciwatch.model import Attempt, CancelMode, EventKind, Run, RunState, short_ref
from ciwatch.observer import RunObserver
from ciwatch.pipeline.plan import CompiledPipeline, EventContext, Limits
from ciwatch.stepgraph import run_graph
from ciwatch.steprun import StepRunner
from ciwatch.workspace import workspace_dir
from ciwatch.wscache import checkout_strategy

_ORDER = {RunState.SUCCESS: 0, RunState.FAILURE: 1, RunState.ERROR: 2, RunState.CANCELED: 3}


@dataclass(frozen=True)
class RunnerSettings:
    limits: Limits = field(default_factory=Limits)
    log_cap: int = 16 << 20
    pipeline_path: str = ".ciwatch.yml"
    pipeline_max_bytes: int = 1 << 20
    grace: float = 10.0
    keep_failed: bool = True
    keep_all: bool = False
    lease_seconds: float = 60.0
    workspace_strategy: str = "fresh"  # or "cached": a reused tree made indistinguishable
    # A failed run's workspace is kept only while its filesystem keeps this much
    # free (bytes, percent): a run that filled the disk must not keep it full.
    keep_min_free: tuple[int, float] = (0, 0.0)
    pass_env: tuple[str, ...] = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


class _LeaseKeeper:
    """Renews the attempt's lease and obeys stop requests stored for the run.

    A lost lease (another worker took the run over) cancels the attempt. A stop
    request is read every `tick` seconds: how fast a cancel or supersede lands.
    """

    def __init__(
        self,
        store,
        run_id: int,
        attempt_id: int,
        seconds: float,
        cancel: CancelToken,
        tick: float = 0.5,
    ) -> None:
        self._stop = threading.Event()
        self._args = (store, run_id, attempt_id, seconds, cancel, min(tick, seconds / 3))
        self._thread = threading.Thread(target=self._loop, name="lease", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        store, run_id, attempt_id, seconds, cancel, tick = self._args
        renewed = time.monotonic()
        while not self._stop.wait(tick):
            if time.monotonic() - renewed >= seconds / 3:
                renewed = time.monotonic()
                if not store.renew_lease(attempt_id, seconds):
                    cancel.cancel("lease lost: another worker took this run over")
                    return
            request = store.cancel_request(run_id)
            if request is not None and not cancel.canceled:
                reason, mode = request
                cancel.cancel(
                    reason,
                    soft=mode is CancelMode.SUPERSEDE,
                    requeue=mode is CancelMode.INTERRUPT,
                )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Runner:
    def __init__(
        self,
        *,
        store,
        mirrors,
        executor: Executor,
        state_dir: Path,
        settings: RunnerSettings,
        secrets: Mapping[str, str],
        host_env: Mapping[str, str],
        clock: Callable[[], float] = time.time,
        observer: RunObserver | None = None,
        log: logging.Logger | None = None,
        fault: Callable[[str], None] = lambda point: None,
    ) -> None:
        self.store = store
        self.mirrors = mirrors
        self.executor = executor
        self.state_dir = state_dir
        self.settings = settings
        self.secrets = dict(secrets)
        self.host_env = dict(host_env)
        self.clock = clock
        self.observer = observer or RunObserver()
        self.log = log or logging.getLogger("ciwatch.runner")
        self.masker = Masker(self.secrets.values())
        self.checkouts = checkout_strategy(settings.workspace_strategy, state_dir)
        self.fault = fault  # crash-test hook: the composition root may make it exit

    def attempt_dir(self, run_id: int, attempt: int) -> Path:
        return self.state_dir / "runs" / str(run_id) / f"a{attempt}"

    def execute(
        self,
        run_id: int,
        *,
        worker: str,
        cancel: CancelToken | None = None,
        only_steps: frozenset[str] | None = None,
        attempt: Attempt | None = None,
    ) -> Run:
        """Claim the run, execute one attempt, record the result; returns the final run.

        `only_steps` (from `ciwatch run --step`) skips every other step. `attempt`:
        the run was claimed already (`ciwatch run` claims as it creates the run).
        """
        cancel = cancel or CancelToken()
        if attempt is None:
            attempt = self.store.start_attempt(run_id, worker, self.settings.lease_seconds)
        if attempt is None:
            raise CiwatchError(f"run {run_id} is not queued (already claimed or finished)")
        self.fault("after-claim")
        run = self.store.get_run(run_id)
        self.observer.run_started(run, attempt.number)
        keeper = _LeaseKeeper(self.store, run.id, attempt.id, self.settings.lease_seconds, cancel)
        adir = self.attempt_dir(run.id, attempt.number)
        setup = None
        try:
            adir.mkdir(parents=True, exist_ok=True)
            setup = self.open_log(adir / "setup.log")
            if attempt.number > 1:
                self._note(run, setup, f"attempt {attempt.number} (earlier attempts were lost)")
            state, reason = self._attempt(run, attempt.number, adir, setup, cancel, only_steps)
        except CiwatchError as exc:
            state, reason = RunState.ERROR, str(exc)
            self.log.error("%s: attempt %d: %s", run.label, attempt.number, exc)
        except Exception as exc:  # the attempt boundary: the run must still end
            state, reason = RunState.ERROR, f"internal error: {type(exc).__name__}: {exc}"
            self.log.exception("%s: attempt %d: internal error", run.label, attempt.number)
        finally:
            keeper.stop()
        if setup is not None:
            if state is RunState.ERROR and reason:
                setup.note(f"error: {reason}")
            setup.close()
        reason = self.masker.mask_text(reason)
        if state is RunState.CANCELED and cancel.requeue:
            # Interrupted (the daemon is stopping): the next start runs it again.
            self.store.requeue(run.id, f"interrupted: {reason}")
            self.log.info("%s: attempt %d interrupted; queued again", run.label, attempt.number)
        # Ends the attempt too, and refuses if another worker took the run over.
        elif not self.store.finish_run(run.id, state, reason, attempt_id=attempt.id):
            self.log.warning(
                "%s: attempt %d was superseded; its result is dropped", run.label, attempt.number
            )
        self.fault("after-run-finished")
        final = self.store.get_run(run.id)
        self.observer.run_finished(final, final.state, final.reason)
        return final

    def open_log(self, path: Path, on_output=None, on_note=None) -> StepLog:
        return StepLog(
            path,
            self.masker,
            self.settings.log_cap,
            self.clock,
            on_output=on_output,
            on_note=on_note,
        )

    def _short_of_space(self, path: Path) -> str:
        """Why a failed run's workspace cannot be kept ("" when it can)."""
        rule = SpaceRule(path, *self.settings.keep_min_free)
        if not (rule.min_bytes or rule.min_percent):
            return ""
        try:
            space = measure(path)
        except OSError:
            return ""
        need = rule.required(space.total)
        if space.free >= need:
            return ""
        return f"{human_size(space.free)} free on its filesystem, {human_size(need)} required"

    def _note(self, run: Run, setup, text: str) -> None:
        setup.note(text)
        self.observer.note(run, self.masker.mask_text(text))

    def _attempt(self, run: Run, attempt: int, adir: Path, setup, cancel: CancelToken, only_steps):
        repo = self.store.get_repo(run.repo)
        mirror = self.mirrors.mirror(repo.id, repo.url)
        try:
            mirror.ensure(run.sha, run.ref)
        except GitError as exc:
            return RunState.ERROR, f"could not fetch {run.sha[:12]}: {exc}"
        compiled = self._compile(run, repo, mirror, setup)
        if isinstance(compiled, tuple):
            return compiled
        if compiled.skip_reason:
            self._note(run, setup, f"skipped: {compiled.skip_reason}")
            return RunState.SKIPPED, compiled.skip_reason
        if only_steps:
            compiled = _select_steps(compiled, only_steps)
            if isinstance(compiled, str):
                return RunState.ERROR, compiled
        worst: tuple[RunState, str] = (RunState.SUCCESS, "")
        for ci, plan in enumerate(compiled.plans):
            if plan.label:
                self._note(run, setup, f"matrix cell {plan.label}")
            state, reason = self._run_plan(run, attempt, adir, ci, plan, mirror, setup, cancel)
            if _ORDER[state] > _ORDER[worst[0]]:
                worst = (state, f"[{plan.label}] {reason}" if plan.label else reason)
        return worst

    def _compile(self, run: Run, repo, mirror, setup) -> CompiledPipeline | tuple[RunState, str]:
        path = self.settings.pipeline_path
        try:
            data = mirror.read_blob(run.sha, path, self.settings.pipeline_max_bytes)
        except GitError as exc:
            return RunState.ERROR, str(exc)
        try:
            spec = pipeline.parse(
                data, path, self.settings.limits, max_bytes=self.settings.pipeline_max_bytes
            )
        except PipelineError as exc:
            for d in exc.diagnostics:
                self._note(run, setup, str(d))
            return RunState.ERROR, f"invalid pipeline: {exc.short()}"
        changed = None
        if run.kind in (EventKind.PUSH, EventKind.PULL_REQUEST):
            try:
                changed = mirror.changed_paths(run.before, run.sha, repo.default_branch)
            except GitError as exc:
                self._note(run, setup, f"changed paths unknown ({exc}); path filters match")
        meta = dict(self.store.get_event(run.event_id).meta)
        compiled = pipeline.compile(spec, event_context(run, changed, meta), self.settings.limits)
        for w in compiled.warnings:
            self._note(run, setup, str(w))
        return compiled

    def _run_plan(self, run, attempt, adir, ci, plan, mirror, setup, cancel):
        repo = self.store.get_repo(run.repo)
        dest = workspace_dir(self.state_dir, repo.id, run.number, attempt) / f"cell{ci}"
        try:
            ws = self.checkouts.acquire(mirror, run.sha, dest)
        except (GitError, WorkspaceError) as exc:
            return RunState.ERROR, f"checkout failed: {exc}"
        steps = StepRunner(self, run, attempt, adir, ci, plan, ws, cancel)
        outcome = run_graph(
            plan,
            run_step=steps.run,
            skip_step=steps.skip,
            max_parallel=self.settings.limits.max_parallel,
            is_canceled=lambda: cancel.canceled,
        )
        keep = self.settings.keep_all or (
            self.settings.keep_failed and outcome.state is not RunState.SUCCESS
        )
        # Every step process is gone by now (each step's supervisor reaped its
        # tree), so a cached tree is not written to after it is handed back.
        short = keep and self._short_of_space(dest)
        if short:
            self._note(run, setup, f"workspace not kept: {short}")
        if keep and not short:
            self._note(run, setup, f"workspace kept: {ws.keep()}")
        else:
            ws.remove()
            shutil.rmtree(dest, ignore_errors=True)
        shutil.rmtree(steps.script_dir, ignore_errors=True)
        if outcome.state is RunState.CANCELED and cancel.reason:
            return outcome.state, cancel.reason
        return outcome.state, outcome.reason


def event_context(
    run: Run, changed_paths: tuple[str, ...] | None = None, meta: Mapping[str, str] | None = None
) -> EventContext:
    """What a run's pipeline is compiled against (also read by the scheduler).
    For a pull request, `branch` is its target branch (the event's base_branch)."""
    branch, tag = short_ref(run.ref)
    if run.kind is EventKind.PULL_REQUEST:
        branch = (meta or {}).get("base_branch") or None
    return EventContext(
        kind=run.kind,
        ref=run.ref,
        sha=run.sha,
        branch=branch,
        tag=tag,
        changed_paths=changed_paths,
        repo=run.repo,
    )


def _select_steps(compiled: CompiledPipeline, only: frozenset[str]) -> CompiledPipeline | str:
    """Skip every step not named with --step; an unknown name is an error."""
    names = {s.name for p in compiled.plans for s in p.steps}
    unknown = sorted(only - names)
    if unknown:
        listed = ", ".join(sorted(names))
        return f"no step named {', '.join(map(repr, unknown))}; the steps are: {listed}"
    plans = tuple(
        replace(
            p,
            steps=tuple(
                s
                if s.name in only or s.skip_reason
                else replace(s, skip_reason="not selected (--step)")
                for s in p.steps
            ),
        )
        for p in compiled.plans
    )
    return replace(compiled, plans=plans)
