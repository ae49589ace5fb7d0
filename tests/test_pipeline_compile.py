"""Compiling a spec for one event: golden plans, and the rules one by one.

Golden cases live in tests/golden/<name>.yml with <name>.event.json (the
EventContext, plus optional "limits") and <name>.plan.json (the expected
CompiledPipeline). `UPDATE_GOLDEN=1 pytest tests/test_pipeline_compile.py`
rewrites the .plan.json files; review the diff before committing it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ciwatch import pipeline
from ciwatch.model import EventKind
from ciwatch.pipeline import EventContext, Limits, Spec
from ciwatch.pipeline.plan import OnNewCommit, Resources, RetryOn

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = sorted(p.name[: -len(".yml")] for p in GOLDEN.glob("*.yml"))


def _event(raw: dict) -> tuple[EventContext, Limits]:
    limits = raw.pop("limits", {})
    for key in ("max_resources", "default_resources"):
        if key in limits:
            limits[key] = Resources(**limits[key])
    limits = Limits(**limits)
    changed = raw.pop("changed_paths", None)
    return EventContext(
        kind=EventKind(raw.pop("kind")),
        changed_paths=None if changed is None else tuple(changed),
        **raw,
    ), limits


def _render(name: str) -> str:
    event, limits = _event(json.loads((GOLDEN / f"{name}.event.json").read_text()))
    spec = pipeline.parse((GOLDEN / f"{name}.yml").read_bytes(), f"{name}.yml", limits)
    compiled = pipeline.compile(spec, event, limits)
    return json.dumps(pipeline.compiled_to_dict(compiled), indent=2, sort_keys=True) + "\n"


def test_there_are_enough_golden_cases() -> None:
    assert len(CASES) >= 8
    for name in CASES:
        assert (GOLDEN / f"{name}.event.json").exists(), name


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    expected_file = GOLDEN / f"{name}.plan.json"
    actual = _render(name)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected_file.write_text(actual)
    assert expected_file.exists(), f"run with UPDATE_GOLDEN=1 to create {expected_file.name}"
    assert actual == expected_file.read_text()


def push(branch: str = "main", **kw) -> EventContext:
    return EventContext(
        EventKind.PUSH, f"refs/heads/{branch}", "f" * 40, branch=branch, repo="app", **kw
    )


def tag(name: str) -> EventContext:
    return EventContext(EventKind.TAG, f"refs/tags/{name}", "f" * 40, tag=name, repo="app")


def compile_text(text: str, event: EventContext, limits: Limits | None = None):
    limits = limits or Limits()
    return pipeline.compile(pipeline.parse(text.encode(), "p.yml", limits), event, limits)


def step_skip(text: str, event: EventContext) -> str | None:
    return compile_text(text, event).plans[0].steps[0].skip_reason


WHEN = [
    # (step `when`, event, expected skip reason or None)
    (
        "{branch: [main, 'release/*']}",
        push("dev"),
        "when.branch: 'dev' does not match ['main', 'release/*']",
    ),
    ("{branch: [main, 'release/*']}", push("release/1"), None),
    ("{branch: main}", tag("v1"), "when.branch: tag 'v1' is not a branch"),
    ("{tag: 'v*'}", push("main"), "when.tag: branch 'main' is not a tag"),
    ("{tag: 'v*'}", tag("v1"), None),
    ("{tag: 'v*'}", tag("x1"), "when.tag: 'x1' does not match ['v*']"),
    ("{branch: main, tag: 'v*'}", tag("v2"), None),
    ("{branch: main, tag: 'v*'}", push("main"), None),
    (
        "{branch: main, tag: 'v*'}",
        push("dev"),
        "when.branch: 'dev' does not match ['main']; when.tag: branch 'dev' is not a tag",
    ),
    ("{event: [push, tag]}", push(), None),
    ("{event: pull_request}", push(), "when.event: 'push' is not in ['pull_request']"),
    ("{path: ['src/**']}", push(changed_paths=("src/a.py",)), None),
    ("{path: ['src/**']}", push(changed_paths=None), None),  # unknown changes: build
    (
        "{path: ['src/**']}",
        push(changed_paths=()),
        "when.path: none of the 0 changed paths match ['src/**']",
    ),
    (
        "{path: ['src/**']}",
        push(changed_paths=("README.md",)),
        "when.path: none of the 1 changed path match ['src/**']",
    ),
    (
        "{path: ['**', '!docs/**']}",
        push(changed_paths=("docs/a", "docs/b")),
        "when.path: none of the 2 changed paths match ['**', '!docs/**']",
    ),
    ("{branch: main, event: push, path: [x]}", push("main", changed_paths=("x",)), None),
    ("{status: failure}", push("dev"), None),  # status is decided while running
]


@pytest.mark.parametrize("when,event,reason", WHEN)
def test_step_when(when: str, event: EventContext, reason: str | None) -> None:
    assert step_skip(f"steps:\n  - run: x\n    when: {when}\n", event) == reason


def test_pull_requests_filter_on_their_target_branch() -> None:
    pr = EventContext(EventKind.PULL_REQUEST, "refs/pull/3/head", "f" * 40, branch="main")
    assert step_skip("steps:\n  - run: x\n    when: {branch: main}\n", pr) is None


def test_a_pipeline_when_that_does_not_match_skips_the_run() -> None:
    compiled = compile_text("when: {event: [push]}\nsteps: [{run: x}]\n", tag("v1"))
    assert compiled.plans == ()
    assert compiled.skip_reason == "when.event: 'tag' is not in ['push']"


def test_step_defaults() -> None:
    plan = compile_text("steps: [{run: x}, {run: y}]\n", push()).plans[0]
    first, second = plan.steps
    assert (first.name, second.name) == ("step 1", "step 2")
    assert first.depends_on == () and second.depends_on == ("step 1",)
    assert first.shell == ("sh", "-e")
    assert first.timeout == plan.timeout == Limits().default_timeout
    assert first.idle_timeout is None
    assert first.run_on == frozenset({"success"})
    assert first.retry.max == 0
    assert first.interruptible and not first.allow_failure
    assert plan.cell == () and plan.label == "" and plan.concurrency is None


def test_env_precedence_pipeline_then_matrix_then_step() -> None:
    text = (
        "env: {A: pipe, B: pipe, C: pipe}\nmatrix: {B: [cell]}\n"
        "steps:\n  - run: x\n    env: {C: step}\n"
    )
    plan = compile_text(text, push()).plans[0]
    assert dict(plan.env) == {"A": "pipe", "B": "cell", "C": "pipe"}
    assert dict(plan.steps[0].env) == {"A": "pipe", "B": "cell", "C": "step"}


def test_matrix_cells_and_labels() -> None:
    text = "matrix: {py: ['3.11', '3.12'], os: [linux]}\nsteps: [{run: x}]\n"
    plans = compile_text(text, push()).plans
    assert [p.label for p in plans] == ["py=3.11,os=linux", "py=3.12,os=linux"]
    assert [p.steps[0].index for p in plans] == [0, 0]


def test_clamping_warns_once_per_value_even_with_a_matrix() -> None:
    text = "matrix: {a: [1, 2, 3]}\ntimeout: 1e309\nsteps:\n  - run: x\n    timeout: 99h\n"
    compiled = compile_text(text, push(), Limits(max_timeout=3600))
    assert [str(w) for w in compiled.warnings] == [
        "p.yml:2:10: warning: timeout: infinity is more than the limit of 1h; using 1h",
        "p.yml:5:14: warning: steps[0].timeout: 99h is more than the limit of 1h; using 1h",
    ]
    assert {s.timeout for p in compiled.plans for s in p.steps} == {3600.0}


def test_retries_over_a_smaller_limit_are_clamped_at_compile_time() -> None:
    spec = pipeline.parse(b"steps:\n  - run: x\n    retry: {max: 4, on: [failure]}\n", "p.yml")
    compiled = pipeline.compile(spec, push(), Limits(max_retries=1))
    retry = compiled.plans[0].steps[0].retry
    assert (retry.max, retry.on) == (1, frozenset({RetryOn.FAILURE}))
    assert [str(w) for w in compiled.warnings] == [
        "p.yml:3:12: warning: steps[0].retry: 4 retries are more than the limit of 1; using 1"
    ]


def test_without_operator_limits_a_step_gets_only_what_it_asks() -> None:
    text = "steps:\n  - run: x\n  - run: y\n    resources: {memory: 1.5G, cpu_time: 1h}\n"
    first, second = compile_text(text, push()).plans[0].steps
    assert first.resources == Resources() and first.image is None
    assert second.resources == Resources(memory_bytes=3 << 29, cpu_seconds=3600.0)


def test_operator_maxima_bind_steps_that_ask_nothing_and_warn_once_per_value() -> None:
    limits = Limits(max_resources=Resources(memory_bytes=1 << 30, processes=100))
    text = "matrix: {a: [1, 2]}\nresources: {processes: 1000}\nsteps: [{run: x}, {run: y}]\n"
    compiled = compile_text(text, push(), limits)
    assert {s.resources for p in compiled.plans for s in p.steps} == {
        Resources(memory_bytes=1 << 30, processes=100)
    }
    assert [str(w) for w in compiled.warnings] == [
        "p.yml:2:24: warning: resources.processes: 1000 is more than the limit of 100; using 100"
    ]


def test_operator_default_applies_only_where_the_pipeline_is_silent() -> None:
    limits = Limits(
        max_resources=Resources(memory_bytes=4 << 30),
        default_resources=Resources(memory_bytes=1 << 30, open_files=1024),
    )
    text = "steps:\n  - run: x\n  - run: y\n    resources: {memory: 2G}\n"
    first, second = compile_text(text, push(), limits).plans[0].steps
    assert first.resources == Resources(memory_bytes=1 << 30, open_files=1024)
    assert second.resources == Resources(memory_bytes=2 << 30, open_files=1024)


def test_concurrency_group_is_expanded_from_event_fields_only() -> None:
    text = "concurrency: {group: '{repo}:{ref}:{event}:{branch}'}\nsteps: [{run: x}]\n"
    compiled = compile_text(text, tag("v1"))
    assert compiled.plans[0].concurrency.group == "app:refs/tags/v1:tag:"
    assert compiled.plans[0].concurrency.on_new_commit is OnNewCommit.QUEUE
    evil = push("$(id);{repo}")
    group = compile_text(text, evil).plans[0].concurrency.group
    assert group == "app:refs/heads/$(id);{repo}:push:$(id);{repo}"  # text, never re-expanded


def test_shell_is_split_into_argv() -> None:
    text = "steps:\n  - run: x\n    shell: \"bash -o 'pipefail' -e\"\n"
    assert compile_text(text, push()).plans[0].steps[0].shell == ("bash", "-o", "pipefail", "-e")


def test_a_spec_built_without_a_file_compiles_too() -> None:
    spec = Spec.model_validate({"timeout": 1e9, "steps": [{"run": "x"}]})
    compiled = pipeline.compile(spec, push())
    assert compiled.plans[0].timeout == Limits().max_timeout
    assert str(compiled.warnings[0]).startswith("<pipeline>:1:1: warning: timeout:")


def test_compile_does_not_change_the_spec() -> None:
    spec = pipeline.parse(b"matrix: {a: [1, 2]}\nsteps: [{run: x}, {run: y}]\n", "p.yml")
    before = spec.model_dump()
    pipeline.compile(spec, push())
    pipeline.compile(spec, tag("v1"))
    assert spec.model_dump() == before
