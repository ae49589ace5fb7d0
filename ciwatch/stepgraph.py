"""Run one plan's steps as a DAG: dependencies first, up to N at once.

Compile has made every dependency explicit (a step without `depends_on`
waits for the one before it), so here a step is ready when all it depends on
has finished. Whether a ready step runs depends on the run's status so far
and its `when.status` (`run_on`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from ciwatch.model import RunState, StepResult, StepState
from ciwatch.pipeline.plan import Plan, PlanStep


@dataclass(frozen=True)
class GraphOutcome:
    state: RunState
    results: dict[str, StepResult]
    reason: str = ""


def _not_run(step: PlanStep, failed: str | None, canceled: bool) -> tuple[StepState, str] | None:
    """Why a ready step does not run (and the state it gets), or None to run it."""
    if canceled:
        return StepState.CANCELED, "canceled before it started"
    if step.skip_reason:
        return StepState.SKIPPED, step.skip_reason
    status = "failure" if failed else "success"
    if status not in step.run_on:
        if failed:
            return StepState.SKIPPED, f"not run: step {failed!r} failed"
        return StepState.SKIPPED, "runs only after a failure"
    return None


def plan_state(results: dict[str, StepResult]) -> tuple[RunState, str]:
    """The state of a plan from its step results: canceled > error > failure > success."""
    worst: tuple[RunState, str] = (RunState.SUCCESS, "")
    order = {RunState.SUCCESS: 0, RunState.FAILURE: 1, RunState.ERROR: 2, RunState.CANCELED: 3}
    for name, r in results.items():
        if r.passed:
            continue
        state = {
            StepState.CANCELED: RunState.CANCELED,
            StepState.ERROR: RunState.ERROR,
        }.get(r.state, RunState.FAILURE)
        if order[state] > order[worst[0]]:
            worst = (state, f"step {name!r}: {r.reason or r.state.value}")
    return worst


def run_graph(
    plan: Plan,
    *,
    run_step: Callable[[PlanStep], StepResult],
    skip_step: Callable[[PlanStep, StepState, str], StepResult],
    max_parallel: int,
    is_canceled: Callable[[], bool],
) -> GraphOutcome:
    results: dict[str, StepResult] = {}
    pending = list(plan.steps)
    running: dict[Future[StepResult], PlanStep] = {}
    failed: str | None = None  # first step that failed, for "not run" reasons

    with ThreadPoolExecutor(max_workers=max(1, max_parallel), thread_name_prefix="step") as pool:
        while pending or running:
            progressed = True
            while progressed:
                progressed = False
                for step in list(pending):
                    if not all(dep in results for dep in step.depends_on):
                        continue
                    why = _not_run(step, failed, is_canceled())
                    if why is not None:
                        pending.remove(step)
                        results[step.name] = skip_step(step, *why)
                        progressed = True
                    elif len(running) < max(1, max_parallel):
                        pending.remove(step)
                        running[pool.submit(run_step, step)] = step
            if not running:
                # Nothing can start: only possible with a dependency that never
                # finishes, which lint rules out; end rather than spin.
                for step in pending:
                    results[step.name] = skip_step(
                        step, StepState.SKIPPED, "dependencies could not be met"
                    )
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                step = running.pop(fut)
                result = fut.result()
                results[step.name] = result
                if not result.passed and failed is None:
                    failed = step.name
    state, reason = plan_state(results)
    return GraphOutcome(state, results, reason)
