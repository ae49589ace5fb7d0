"""The explicit environment a step gets (pure).

Nothing of the daemon's own environment leaks in except the names the config
passes through (PATH, LANG, … by default). Event text such as the ref reaches a
step only here, as a value, never in script text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ciwatch.model import Run
from ciwatch.pipeline.plan import Plan, PlanStep

DEFAULT_PASS_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
FALLBACK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class StepPlace:
    """Where a step runs: its checkout and the private dirs beside it."""

    workspace: str
    home: str
    tmp: str


def step_env(
    *,
    run: Run,
    attempt: int,
    plan: Plan,
    step: PlanStep,
    place: StepPlace,
    host_env: Mapping[str, str],
    pass_env: tuple[str, ...] = DEFAULT_PASS_ENV,
    secrets: Mapping[str, str] = {},
) -> dict[str, str]:
    env: dict[str, str] = {k: host_env[k] for k in pass_env if k in host_env}
    env.setdefault("PATH", FALLBACK_PATH)
    env.update(step.env)  # pipeline env, matrix values and step env, already merged
    env.update(secrets)
    branch = run.ref[len("refs/heads/") :] if run.ref.startswith("refs/heads/") else ""
    tag = run.ref[len("refs/tags/") :] if run.ref.startswith("refs/tags/") else ""
    env.update(
        {
            "CI": "true",
            "CIWATCH": "true",
            "CIWATCH_REPO": run.repo,
            "CIWATCH_REF": run.ref,
            "CIWATCH_BRANCH": branch,
            "CIWATCH_TAG": tag,
            "CIWATCH_SHA": run.sha,
            "CIWATCH_BEFORE": run.before or "",
            "CIWATCH_EVENT": run.kind.value,
            "CIWATCH_RUN_ID": str(run.id),
            "CIWATCH_RUN_NUMBER": str(run.number),
            "CIWATCH_ATTEMPT": str(attempt),
            "CIWATCH_STEP": step.name,
            "CIWATCH_MATRIX": plan.label,
            "CIWATCH_WORKSPACE": place.workspace,
            "HOME": place.home,
            "TMPDIR": place.tmp,
        }
    )
    return env
