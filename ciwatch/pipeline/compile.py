"""Spec + event + limits -> CompiledPipeline: what the runner executes.

- One Plan per matrix cell (first matrix key outermost), or one without a matrix.
- Env precedence: pipeline `env` < matrix values < step `env`.
- Timeouts in seconds: the pipeline's defaults to `limits.default_timeout`, a
  step's defaults to the pipeline's; `idle_timeout` falls back to the
  pipeline's, else none. Anything over `limits.max_timeout` is clamped, with a
  warning. `retry.max` over `limits.max_retries` is clamped the same way.
- depends_on is made explicit: without it a step follows the previous step in
  file order; `depends_on: []` means it needs nothing.
- `when` is decided here for branch/tag/event/path; `when.status` becomes
  PlanStep.run_on (the runner decides it while running).
- `resources` per key: the step's, else the pipeline's, else the operator's
  default, else the operator's maximum; asks over the maximum are clamped with
  a warning (see resources.py). `image`: the step's, else the pipeline's.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from ciwatch.pipeline.durations import format_duration
from ciwatch.pipeline.fields import DEFAULT_SHELL
from ciwatch.pipeline.plan import (
    CompiledPipeline,
    Concurrency,
    Diagnostic,
    EventContext,
    Limits,
    OnNewCommit,
    Plan,
    PlanStep,
    Resources,
    RetryOn,
    RetryPolicy,
)
from ciwatch.pipeline.resources import resolve
from ciwatch.pipeline.spec import Spec, Step
from ciwatch.pipeline.when import why_not
from ciwatch.pipeline.yamlcore import Path

__all__ = ["compile", "limit_warnings"]

_DEFAULT_RUN_ON = frozenset({"success"})
_LIMITS = Limits()


@dataclass(frozen=True)
class _Timing:
    pipeline: float
    idle: float | None
    steps: tuple[tuple[float, float | None], ...]  # (timeout, idle_timeout) per step
    retries: tuple[int, ...]
    resources: tuple[Resources, ...]
    warnings: tuple[Diagnostic, ...]


def _timing(spec: Spec, limits: Limits) -> _Timing:
    warnings: list[Diagnostic] = []

    top = float(limits.max_timeout)

    def clamp(value: float | None, path: Path) -> float | None:
        if value is None or value <= top:
            return None if value is None else float(value)
        cap = format_duration(top)
        warnings.append(
            spec.diagnostic(
                path, f"{format_duration(value)} is more than the limit of {cap}; using {cap}"
            )
        )
        return top

    pipeline = clamp(spec.timeout, ("timeout",)) or float(min(limits.default_timeout, top))
    idle = clamp(spec.idle_timeout, ("idle_timeout",))
    steps, retries = [], []
    for i, step in enumerate(spec.steps):
        timeout = clamp(step.timeout, ("steps", i, "timeout")) or pipeline
        steps.append((timeout, clamp(step.idle_timeout, ("steps", i, "idle_timeout")) or idle))
        wanted = step.retry.max if step.retry else 0
        if wanted > limits.max_retries:
            warnings.append(
                spec.diagnostic(
                    ("steps", i, "retry"),
                    f"{wanted} retries are more "
                    f"than the limit of {limits.max_retries}; using "
                    f"{limits.max_retries}",
                )
            )
        retries.append(min(wanted, limits.max_retries))
    resources, clamped = resolve(
        spec.resources, [s.resources for s in spec.steps], limits, spec.diagnostic
    )
    warnings.extend(clamped)
    return _Timing(pipeline, idle, tuple(steps), tuple(retries), resources, tuple(warnings))


def limit_warnings(spec: Spec, limits: Limits) -> list[Diagnostic]:
    """The warnings `compile` gives for values over the limits (for lint)."""
    return list(_timing(spec, limits).warnings)


def compile(spec: Spec, event: EventContext, limits: Limits = _LIMITS) -> CompiledPipeline:
    timing = _timing(spec, limits)
    warnings = tuple(dict.fromkeys(spec.warnings + timing.warnings))
    skip = why_not(spec.when, event)
    if skip is not None:
        return CompiledPipeline(plans=(), skip_reason=skip, warnings=warnings)
    concurrency = None
    if spec.concurrency is not None:
        group = spec.concurrency.group.format(  # the template's fields were checked in spec
            repo=event.repo, branch=event.branch or "", ref=event.ref, event=event.kind.value
        )
        concurrency = Concurrency(group, OnNewCommit(spec.concurrency.on_new_commit))
    names = spec.step_names()
    skips = tuple(why_not(step.when, event) for step in spec.steps)
    plans = []
    for cell in spec.matrix_cells():
        env = {**spec.env, **dict(cell)}
        steps = tuple(
            _step(spec, i, step, names, env, timing, skips[i]) for i, step in enumerate(spec.steps)
        )
        plans.append(
            Plan(
                cell=cell,
                steps=steps,
                timeout=timing.pipeline,
                concurrency=concurrency,
                env=_pairs(env),
            )
        )
    return CompiledPipeline(plans=tuple(plans), skip_reason=None, warnings=warnings)


def _step(
    spec: Spec,
    i: int,
    step: Step,
    names: tuple[str, ...],
    env: Mapping[str, str],
    timing: _Timing,
    skip: str | None,
) -> PlanStep:
    if step.depends_on is not None:
        depends_on = tuple(step.depends_on)
    else:
        depends_on = (names[i - 1],) if i else ()
    retry = RetryPolicy()
    if step.retry is not None:
        retry = RetryPolicy(max=timing.retries[i], on=frozenset(RetryOn(o) for o in step.retry.on))
    timeout, idle = timing.steps[i]
    status = step.when.status if step.when is not None else None
    return PlanStep(
        index=i,
        name=names[i],
        script=step.run,
        shell=tuple(shlex.split(step.shell or spec.shell or DEFAULT_SHELL)),
        env=_pairs({**env, **step.env}),
        timeout=timeout,
        idle_timeout=idle,
        depends_on=depends_on,
        retry=retry,
        allow_failure=step.allow_failure,
        run_on=frozenset(status) if status else _DEFAULT_RUN_ON,
        secrets=tuple(step.secrets),
        interruptible=step.interruptible,
        artifacts=tuple(step.artifacts),
        skip_reason=skip,
        resources=timing.resources[i],
        image=step.image or spec.image,
    )


def _pairs(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(env.items()))
