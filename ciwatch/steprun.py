"""One step of one plan: environment, secrets, retries, log, artifacts, record.

Split from the runner so that each keeps one job: the runner owns the
attempt, this owns a step's life from its store row to its final result.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ciwatch.artifacts import collect
from ciwatch.executors.base import CancelToken, StepSpec
from ciwatch.model import FailureKind, Run, StepResult, StepState
from ciwatch.pipeline import globs
from ciwatch.pipeline.plan import Plan, PlanStep, RetryOn
from ciwatch.stepenv import StepPlace, step_env


def retryable(result: StepResult, step: PlanStep) -> bool:
    if result.state is StepState.ERROR:
        return RetryOn.INFRA in step.retry.on
    if result.state is StepState.FAILURE:
        return RetryOn.FAILURE in step.retry.on
    return False


class StepRunner:
    def __init__(
        self,
        runner,
        run: Run,
        attempt: int,
        adir: Path,
        cell: int,
        plan: Plan,
        ws,
        cancel: CancelToken,
    ) -> None:
        self.r = runner
        self.run_ = run
        self.attempt = attempt
        self.adir = adir
        self.cell = cell
        self.plan = plan
        self.ws = ws
        self.cancel = cancel
        self.script_dir = adir / f"scripts{cell}"
        self.script_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def log_path(self, step: PlanStep) -> Path:
        # Named by position only: step names never become paths.
        return self.adir / f"{self.cell}-{step.index}.log"

    def skip(self, step: PlanStep, state: StepState, reason: str) -> StepResult:
        result = StepResult(state=state, reason=reason)
        self.r.store.skip_step(
            self.run_.id, self.attempt, self.plan.label, step.index, step.name, reason, state=state
        )
        self.r.observer.step_finished(self.run_, self.plan, step, result)
        return result

    def _secrets(self, step: PlanStep, log) -> dict[str, str] | str:
        """The step's secrets, or the reason it cannot have them."""
        if not step.secrets:
            return {}
        if not self.run_.trusted:
            log.note("secrets withheld: this run comes from an untrusted source")
            return {}
        missing = [n for n in step.secrets if n not in self.r.secrets]
        if missing:
            return f"secret(s) not defined in the daemon config: {', '.join(missing)}"
        return {n: self.r.secrets[n] for n in step.secrets}

    def run(self, step: PlanStep) -> StepResult:
        r = self.r
        path = self.log_path(step)
        step_id = r.store.start_step(
            self.run_.id, self.attempt, self.plan.label, step.index, step.name, str(path)
        )
        r.observer.step_started(self.run_, self.plan, step)
        log = r.open_log(
            path,
            on_output=lambda data: r.observer.output(self.run_, self.plan, step, data),
            on_note=lambda text: r.observer.step_note(self.run_, self.plan, step, text),
        )
        try:
            result = self._execute(step, log)
        finally:
            summary = log.close()
        result = replace(result, log_bytes=summary.bytes_stored, log_truncated=summary.truncated)
        if summary.error:  # the output is not all on disk: the record says so
            lost = f"log incomplete: {summary.error}"
            reason = f"{result.reason}; {lost}" if result.reason else lost
            result = replace(result, reason=reason, log_truncated=True)
        r.store.finish_step(step_id, result)
        r.observer.step_finished(self.run_, self.plan, step, result)
        return result

    def _execute(self, step: PlanStep, log) -> StepResult:
        r = self.r
        secrets = self._secrets(step, log)
        if isinstance(secrets, str):
            log.note(secrets)
            return StepResult(StepState.ERROR, failure=FailureKind.INFRA, reason=secrets)
        place = StepPlace(str(self.ws.path), str(self.ws.home), str(self.ws.tmp))
        env = step_env(
            run=self.run_,
            attempt=self.attempt,
            plan=self.plan,
            step=step,
            place=place,
            host_env=r.host_env,
            pass_env=r.settings.pass_env,
            secrets=secrets,
        )
        spec = StepSpec(
            step=step,
            workdir=self.ws.path,
            env=env,
            script_dir=self.script_dir,
            grace=r.settings.grace,
        )
        tries = 0
        while True:
            tries += 1
            result = r.executor.run(spec, log, self.cancel.for_step(step.interruptible))
            stop = self.cancel.canceled if step.interruptible else self.cancel.hard
            if tries <= step.retry.max and retryable(result, step) and not stop:
                why = result.reason or result.state.value
                log.note(f"{why}; retrying (try {tries + 1} of {step.retry.max + 1})")
                continue
            break
        result = replace(result, tries=tries)
        if not result.passed and step.allow_failure and result.state is not StepState.CANCELED:
            log.note(f"failure allowed: {result.reason}")
            result = replace(result, allowed_failure=True)
        if step.artifacts:
            self._collect(step, log)
        return result

    def _collect(self, step: PlanStep, log) -> None:
        dest = self.r.state_dir / "artifacts" / str(self.run_.id) / f"{self.cell}-{step.index}"
        got = collect(
            self.ws.path, step.artifacts, dest, lambda rel: globs.match_any(step.artifacts, rel)
        )
        for note in got.skipped:
            log.note(f"artifact skipped: {note}")
        for f in got.files:
            self.r.store.add_artifact(self.run_.id, None, f.path, f.size, str(f.stored))
        log.note(
            f"artifacts: {len(got.files)} file(s) collected"
            if got.files
            else "artifacts: no file matched"
        )
