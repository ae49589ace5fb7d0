"""Reading pipeline files: every problem at once, each as `file:line:col: path: message`."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from ciwatch import pipeline, validation, yamlsafe
from ciwatch.errors import DocumentError, PipelineError
from ciwatch.model import EventKind
from ciwatch.pipeline import EventContext, Limits, Severity
from ciwatch.pipeline.durations import format_duration, parse_duration

F = ".ciwatch.yml"


def problems(text: str, limits: Limits | None = None) -> list[str]:
    return [str(d) for d in pipeline.lint(text.encode(), F, limits or Limits())]


def step(body: str) -> str:
    """A pipeline whose only step has `run: x` plus `body` (indented 4)."""
    return "steps:\n  - run: x\n" + "".join(f"    {line}\n" for line in body.splitlines())


# (source, the exact diagnostic expected among the problems)
BAD = [
    ("steps: 5\n", ".ciwatch.yml:1:8: steps: expected a list, got an integer"),
    ("steps: []\n", ".ciwatch.yml:1:8: steps: must not be empty"),
    ("env: {}\n", ".ciwatch.yml:1:1: steps: required key is missing"),
    ("- run: x\n", ".ciwatch.yml:1:1: expected a mapping, got a list"),
    ("stpes:\n  - run: x\n", ".ciwatch.yml:1:1: stpes: unknown key 'stpes'; did you mean 'steps'?"),
    (
        "steps:\n  - run: x\n    timout: 5m\n",
        ".ciwatch.yml:3:5: steps[0].timout: unknown key 'timout'; did you mean 'timeout'?",
    ),
    (
        "steps:\n  - run: x\n    zzz: 1\n",
        ".ciwatch.yml:3:5: steps[0].zzz: unknown key 'zzz'; "
        "expected one of: allow_failure, artifacts, depends_on, env, idle_timeout, image, "
        "interruptible, name, resources, retry, run, secrets, shell, timeout, when",
    ),
    ("steps:\n  - name: a\n", ".ciwatch.yml:2:5: steps[0].run: required key is missing"),
    (
        "steps:\n  - run: 5\n",
        ".ciwatch.yml:2:10: steps[0].run: expected a string or a list of strings, got an integer",
    ),
    (
        "steps:\n  - run: [a, 1]\n",
        ".ciwatch.yml:2:10: steps[0].run: run[1] is an integer; every command must be a string",
    ),
    ("steps:\n  - run: ''\n", ".ciwatch.yml:2:10: steps[0].run: must not be empty"),
    (
        "steps:\n  - run: x\n    name: 12\n",
        ".ciwatch.yml:3:11: steps[0].name: expected a string, got an integer",
    ),
    (
        'steps:\n  - run: x\n    name: "a\\e[31mred"\n',
        ".ciwatch.yml:3:11: steps[0].name: "
        "contains the control character U+001B; step names must be printable text on one line",
    ),
    ('steps:\n  - run: x\n    name: "two\\nlines"\n', "contains the control character U+000A"),
    ('steps:\n  - run: x\n    name: "x\\u202Ey"\n', "contains the control character U+202E"),
    (
        step("name: " + "n" * 101),
        ".ciwatch.yml:3:11: steps[0].name: is 101 characters long; at most 100 allowed",
    ),
    (
        step("allow_failure: yes"),
        ".ciwatch.yml:3:20: steps[0].allow_failure: expected true or false, got a string",
    ),
    (step("interruptible: 1"), "steps[0].interruptible: expected true or false, got an integer"),
    # durations
    (step("timeout: 0"), ".ciwatch.yml:3:14: steps[0].timeout: must be greater than zero, got 0"),
    (step("timeout: -1"), ".ciwatch.yml:3:14: steps[0].timeout: must be greater than zero, got -1"),
    (
        step("timeout: .nan"),
        'steps[0].timeout: expected a duration like 90 (seconds), "90s", '
        '"10m", "1h30m" or "500ms", got NaN',
    ),
    (
        step("timeout: soon"),
        ".ciwatch.yml:3:14: steps[0].timeout: expected a duration like 90 "
        '(seconds), "90s", "10m", "1h30m" or "500ms", got \'soon\'',
    ),
    (step("timeout: 10m1h"), "steps[0].timeout: expected a duration"),
    (
        step("idle_timeout: true"),
        "steps[0].idle_timeout: expected a duration like 90 (seconds), "
        '"90s", "10m", "1h30m" or "500ms", got a boolean',
    ),
    ("timeout: [1]\nsteps:\n  - run: x\n", ".ciwatch.yml:1:10: timeout: expected a duration"),
    # env
    (
        "env: {HOME: /tmp}\nsteps: [{run: x}]\n",
        ".ciwatch.yml:1:7: env.HOME: 'HOME' is reserved: ciwatch sets it for every step",
    ),
    ("env: {CIWATCH_SHA: x}\nsteps: [{run: x}]\n", "env.CIWATCH_SHA: 'CIWATCH_SHA' is reserved"),
    (
        "env: {CI: x, TMPDIR: y}\nsteps: [{run: x}]\n",
        ".ciwatch.yml:1:14: env.TMPDIR: 'TMPDIR' is reserved",
    ),
    (
        step("env: {'1X': a}"),
        ".ciwatch.yml:3:11: steps[0].env[\"1X\"]: '1X' is not a valid "
        "variable name (letters, digits and _, not starting with a digit)",
    ),
    (step("env: {A-B: a}"), "steps[0].env.A-B: 'A-B' is not a valid variable name"),
    (
        step("env: {A: [1]}"),
        ".ciwatch.yml:3:14: steps[0].env.A: expected a string, number or boolean, got a list",
    ),
    (step("env: {A: ~}"), "steps[0].env.A: expected a string, number or boolean, got null"),
    (step("env: [A]"), ".ciwatch.yml:3:10: steps[0].env: expected a mapping, got a list"),
    # depends_on, names, cycles
    (
        "steps:\n  - {name: build, run: x}\n  - {name: test, run: x, depends_on: [biuld]}\n",
        ".ciwatch.yml:3:39: steps[1].depends_on[0]: unknown step 'biuld'; did you mean 'build'?",
    ),
    (
        "steps:\n  - {name: a, run: x, depends_on: [zzz]}\n",
        ".ciwatch.yml:2:36: steps[0].depends_on[0]: unknown step 'zzz'",
    ),
    (
        "steps:\n  - {name: a, run: x, depends_on: [a]}\n",
        ".ciwatch.yml:2:36: steps[0].depends_on[0]: a step cannot depend on itself",
    ),
    (
        "steps:\n  - {name: a, run: x}\n  - {name: a, run: y}\n",
        ".ciwatch.yml:3:12: steps[1].name: duplicate step name 'a' (also the name of the step at "
        "line 2)",
    ),
    (
        "steps:\n  - {run: x}\n  - {name: step 1, run: y}\n",
        "steps[1].name: duplicate step name 'step 1' (also the name of the step at line 2)",
    ),
    (
        "steps:\n  - {name: a, run: x, depends_on: [b, b]}\n  - {name: b, run: y}\n",
        "steps[0].depends_on: 'b' appears more than once",
    ),
    (
        "steps:\n  - {name: a, run: x, depends_on: [b]}\n  - {name: b, run: y, depends_on: [a]}\n",
        ".ciwatch.yml:2:35: steps[0].depends_on: dependency cycle: a -> b -> a (-> means 'depends "
        "on')",
    ),
    (
        "steps:\n  - {name: a, run: x, depends_on: [c]}\n  - {name: b, run: y}\n"
        "  - {name: c, run: z}\n",
        "steps[0].depends_on: dependency cycle: a -> c -> b -> a (-> means 'depends on') ('c' and "
        "'b' have no depends_on, so each waits for the step before it; `depends_on: []` starts a "
        "step without waiting)",
    ),
    # retry
    (
        step("retry: 9"),
        ".ciwatch.yml:3:12: steps[0].retry.max: must be at most 5 (the configured limit), got 9",
    ),
    (step("retry: -1"), "steps[0].retry.max: must be at least 0, got -1"),
    (
        step("retry: true"),
        ".ciwatch.yml:3:12: steps[0].retry: expected a number of retries or a "
        "mapping {max, on}, got a boolean",
    ),
    (
        step("retry: {max: 1, on: [crash]}"),
        ".ciwatch.yml:3:26: steps[0].retry.on[0]: expected 'infra' or 'failure', got 'crash'",
    ),
    (
        step("retry: {on: [infra]}"),
        ".ciwatch.yml:3:12: steps[0].retry.max: required key is missing",
    ),
    (
        step("retry: {max: 1, when: x}"),
        "steps[0].retry.when: unknown key 'when'; expected one of: max, on",
    ),
    # when
    (
        "when: {status: [failure]}\nsteps: [{run: x}]\n",
        ".ciwatch.yml:1:16: when.status: only a step's `when` can have a status (the pipeline's "
        "`when` is decided before any step runs)",
    ),
    (
        "when: {branch: 'v[0-9'}\nsteps: [{run: x}]\n",
        ".ciwatch.yml:1:16: when.branch: pattern 'v[0-9' has '[' without a closing ']'",
    ),
    (
        "when: {event: [push, pr]}\nsteps: [{run: x}]\n",
        ".ciwatch.yml:1:22: when.event[1]: "
        "expected 'push', 'tag', 'pull_request', 'cron' or 'manual', got 'pr'",
    ),
    (
        "when: {branch: []}\nsteps: [{run: x}]\n",
        ".ciwatch.yml:1:16: when.branch: must not be empty",
    ),
    (
        "when: {path: ['/etc/**']}\nsteps: [{run: x}]\n",
        ".ciwatch.yml:1:15: when.path[0]: '/etc/**' is absolute; paths are relative to the "
        "workspace",
    ),
    (
        "when: {brnach: main}\nsteps: [{run: x}]\n",
        ".ciwatch.yml:1:8: when.brnach: unknown key 'brnach'; did you mean 'branch'?",
    ),
    (
        step("when: {status: [done]}"),
        ".ciwatch.yml:3:21: steps[0].when.status[0]: expected 'success' or 'failure', got 'done'",
    ),
    (step("when: {status: []}"), "steps[0].when.status: must not be empty"),
    # artifacts, secrets, shell
    (
        step("artifacts: [/etc/shadow]"),
        ".ciwatch.yml:3:17: steps[0].artifacts[0]: '/etc/shadow' "
        "is absolute; paths are relative to the workspace",
    ),
    (
        step("artifacts: ['dist/../../x']"),
        "steps[0].artifacts[0]: 'dist/../../x' has a '..' component; paths stay in the workspace",
    ),
    (step("artifacts: ['']"), "steps[0].artifacts[0]: must not be empty"),
    (
        step("secrets: [CIWATCH_TOKEN]"),
        ".ciwatch.yml:3:15: steps[0].secrets[0]: 'CIWATCH_TOKEN' is reserved",
    ),
    (step("secrets: ['my token']"), "steps[0].secrets[0]: 'my token' is not a valid variable name"),
    (
        step('shell: "bash -c \'oops"'),
        '.ciwatch.yml:3:12: steps[0].shell: "bash -c \'oops" '
        "cannot be split into words: No closing quotation",
    ),
    (step("shell: '  '"), "steps[0].shell: must name a program"),
    # concurrency, matrix
    (
        "concurrency: {group: '{repo}/{sha}'}\nsteps: [{run: x}]\n",
        ".ciwatch.yml:1:22: concurrency.group: unknown placeholder '{sha}'; use {repo}, {branch}, "
        "{ref}, {event}",
    ),
    (
        "concurrency: {group: '{repo.__class__}'}\nsteps: [{run: x}]\n",
        "concurrency.group: unknown placeholder '{repo.__class__}'",
    ),
    (
        "concurrency: {on_new_commit: sometimes}\nsteps: [{run: x}]\n",
        ".ciwatch.yml:1:30: concurrency.on_new_commit: expected 'cancel-running', "
        "'cancel-pending', 'queue' or 'never', got 'sometimes'",
    ),
    ("matrix: {py: []}\nsteps: [{run: x}]\n", ".ciwatch.yml:1:14: matrix.py: must not be empty"),
    ("matrix: {py: [a, a]}\nsteps: [{run: x}]\n", "matrix.py: 'a' appears more than once"),
    (
        "matrix: {HOME: [a]}\nsteps: [{run: x}]\n",
        ".ciwatch.yml:1:10: matrix.HOME: 'HOME' is reserved",
    ),
    (
        "matrix: {a: [1,2,3,4,5], b: [1,2,3,4], c: [1,2,3,4]}\nsteps: [{run: x}]\n",
        ".ciwatch.yml:1:9: matrix: expands to 80 combinations; at most 64 allowed",
    ),
    (
        "matrix: {py: [[1]]}\nsteps: [{run: x}]\n",
        ".ciwatch.yml:1:15: matrix.py[0]: expected a string, number or boolean, got a list",
    ),
    # resources, image
    (
        step("resources: {memory: 12X}"),
        ".ciwatch.yml:3:25: steps[0].resources.memory: expected a size like 1048576 (bytes), "
        '"512K", "64M" or "2G", got \'12X\'',
    ),
    (
        step("resources: {memory: 512}"),
        ".ciwatch.yml:3:25: steps[0].resources.memory: 512 B is less than 1 MiB; "
        "did you mean '512M'?",
    ),
    (
        "resources: {memory: -1G}\nsteps: [{run: x}]\n",
        ".ciwatch.yml:1:21: resources.memory: expected a size like",
    ),
    (
        step("resources: {processes: 0}"),
        ".ciwatch.yml:3:28: steps[0].resources.processes: must be at least 1, got 0",
    ),
    (
        step("resources: {processes: '50'}"),
        ".ciwatch.yml:3:28: steps[0].resources.processes: expected an integer, got a string",
    ),
    (
        step("resources: {open_files: 3}"),
        ".ciwatch.yml:3:29: steps[0].resources.open_files: must be at least 8, got 3",
    ),
    (
        step("resources: {file_size: true}"),
        ".ciwatch.yml:3:28: steps[0].resources.file_size: expected a size like 1048576 (bytes), "
        '"512K", "64M" or "2G", got a boolean',
    ),
    (
        step("resources: {cpu_time: 10 minutes}"),
        ".ciwatch.yml:3:27: steps[0].resources.cpu_time: expected a duration like 90 (seconds), "
        '"90s", "10m", "1h30m" or "500ms", got \'10 minutes\'',
    ),
    (
        step("resources: {cpu_time: 0}"),
        "steps[0].resources.cpu_time: must be greater than zero, got 0",
    ),
    (
        step("resources: {mem: 1G}"),
        ".ciwatch.yml:3:17: steps[0].resources.mem: unknown key 'mem'; did you mean 'memory'?",
    ),
    (
        step("resources: 1G"),
        ".ciwatch.yml:3:16: steps[0].resources: expected a mapping, got a string",
    ),
    (
        step("image: '--privileged'"),
        ".ciwatch.yml:3:12: steps[0].image: '--privileged' is not an image reference",
    ),
    (step("image: 'Alpine'"), "steps[0].image: 'Alpine' is not an image reference"),
    ("image: ''\nsteps: [{run: x}]\n", ".ciwatch.yml:1:8: image: must not be empty"),
    ("image: 3\nsteps: [{run: x}]\n", ".ciwatch.yml:1:8: image: expected a string, got an integer"),
]


@pytest.mark.parametrize("source,expected", BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_each_problem_is_reported_at_its_position(source: str, expected: str) -> None:
    found = problems(source)
    assert any(expected in p for p in found), "\n".join(found)
    with pytest.raises(PipelineError) as err:
        pipeline.parse(source.encode(), F)
    assert any(expected in str(d) for d in err.value.diagnostics)


def test_every_problem_is_reported_at_once_and_in_file_order() -> None:
    source = (
        "timout: 5m\n"
        "env: {HOME: x}\n"
        "steps:\n"
        "  - name: build\n"
        "    run: make\n"
        "    timeout: 0\n"
        "  - name: build\n"
        "    run: [1]\n"
        "    depends_on: [biuld]\n"
        "    when: {event: [pr]}\n"
    )
    with pytest.raises(PipelineError) as err:
        pipeline.parse(source.encode(), F)
    found = [str(d) for d in err.value.diagnostics]
    assert [f.split(": ", 1)[0] for f in found] == [
        ".ciwatch.yml:1:1",
        ".ciwatch.yml:2:7",
        ".ciwatch.yml:6:14",
        ".ciwatch.yml:7:11",
        ".ciwatch.yml:8:10",
        ".ciwatch.yml:9:18",
        ".ciwatch.yml:10:20",
    ]
    assert "(+6 more)" in err.value.short()


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"\x00\x01", ".ciwatch.yml:1:1: pipeline file is binary"),
        (b"a" * (2 << 20), ".ciwatch.yml:1:1: pipeline file is 2.1 MB; the limit is 1 MiB"),
        (b"", ".ciwatch.yml:1:1: empty document"),
        (b"steps:\n\t- run: x\n", ".ciwatch.yml:2:1: tab character used for indentation"),
        (b"[" * 100_000, ".ciwatch.yml:1:"),
        (b"[" * 100_000, "nesting is deeper than 64 levels"),
        (
            b"steps: !!python/object/apply:os.system [id]\n",
            "unsupported tag '!!python/object/apply:os.system'",
        ),
        (b"steps:\n  - run: x\n---\nsteps: []\n", "a second document starts here"),
    ],
)
def test_lint_never_raises_for_hostile_files(data: bytes, expected: str) -> None:
    found = [str(d) for d in pipeline.lint(data, F)]
    assert any(expected in f for f in found), found
    with pytest.raises(PipelineError):
        pipeline.parse(data, F)


def test_parse_accepts_a_larger_file_when_the_caller_allows_it() -> None:
    data = b"steps:\n  - run: x\n" + b"#" * (1 << 20) + b"\n"
    with pytest.raises(PipelineError):
        pipeline.parse(data, F)
    assert pipeline.parse(data, F, max_bytes=2 << 20).steps[0].run == "x"


def test_warnings_do_not_stop_parsing() -> None:
    source = "env: {V: 3.10}\nsteps:\n  - run: x\n    timeout: 1e309\n"
    found = pipeline.lint(source.encode(), F)
    assert [str(d) for d in found] == [
        ".ciwatch.yml:1:10: warning: env.V: 3.10 is read as the number 3.1, so the value is "
        "'3.1'; quote it ('3.10') to keep it as written",
        ".ciwatch.yml:4:14: warning: steps[0].timeout: infinity is more than the limit of 6h; "
        "using 6h",
    ]
    assert all(d.severity is Severity.WARNING for d in found)
    assert pipeline.parse(source.encode(), F).env == {"V": "3.1"}


def test_retry_limit_follows_the_configured_limits() -> None:
    source = step("retry: 7")
    assert any("must be at most 5" in p for p in problems(source))
    assert not problems(source, Limits(max_retries=10))


def test_a_valid_file_has_no_problems_and_normalised_values() -> None:
    source = (
        "when: {branch: main, event: push}\n"
        "env: {N: 1, B: true, F: 1.5, S: s}\n"
        "timeout: 1h30m\n"
        "steps:\n"
        "  - run: [make, make test]\n"
        "    timeout: 90\n"
        "    idle_timeout: 500ms\n"
        "    retry: 2\n"
        "  - name: deploy\n"
        "    run: ./deploy\n"
        "    retry: {max: 1}\n"
        "    depends_on: []\n"
        "    when: {status: failure, tag: 'v*'}\n"
        "    name_is_not_a_key: 1\n"
    )
    found = problems(source)
    assert found == [
        ".ciwatch.yml:14:5: steps[1].name_is_not_a_key: unknown key "
        "'name_is_not_a_key'; expected one of: allow_failure, artifacts, depends_on, "
        "env, idle_timeout, image, interruptible, name, resources, retry, run, secrets, "
        "shell, timeout, when"
    ]
    spec = pipeline.parse(source.replace("    name_is_not_a_key: 1\n", "").encode(), F)
    assert spec.env == {"N": "1", "B": "true", "F": "1.5", "S": "s"}
    assert spec.timeout == 5400.0
    first, second = spec.steps
    assert first.run == "make\nmake test"
    assert (first.timeout, first.idle_timeout) == (90.0, 0.5)
    assert (first.retry.max, first.retry.on) == (2, ["infra", "failure"])
    assert (second.retry.max, second.retry.on) == (1, ["infra", "failure"])
    assert second.when.branch is None and second.when.tag == ["v*"]
    assert second.when.status == ["failure"]
    assert spec.when.branch == ["main"] and spec.when.event == ["push"]
    assert spec.step_names() == ("step 1", "deploy")


def test_specs_are_frozen() -> None:
    spec = pipeline.parse(b"steps: [{run: x}]\n", F)
    with pytest.raises(ValueError):
        spec.steps = []  # type: ignore[misc]


@pytest.mark.parametrize(
    "text,seconds",
    [
        (90, 90.0),
        (0.25, 0.25),
        ("90s", 90.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("2m30s", 150.0),
        ("1.5h", 5400.0),
        (" 5s ", 5.0),
        (float("inf"), float("inf")),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5x", "m", "1m1h", "1h1h", "-5s", "1e3s", "1 h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    "seconds,text",
    [
        (5400, "1h30m"),
        (21600, "6h"),
        (0.5, "500ms"),
        (90, "1m30s"),
        (45, "45s"),
        (1.5, "1.5s"),
        (float("inf"), "infinity"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- the JSON Schema ------------------------------------------------------------------------


def test_json_schema_describes_the_format() -> None:
    schema = pipeline.json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "ciwatch pipeline"
    assert schema["required"] == ["steps"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["steps"]["maxItems"] == 200
    step_schema = schema["$defs"]["Step"]
    assert step_schema["additionalProperties"] is False
    assert step_schema["required"] == ["run"]
    # the pipeline's `when` has no `status`; a step's has
    assert "status" not in schema["$defs"]["PipelineWhen"]["properties"]
    assert "status" in schema["$defs"]["StepWhen"]["properties"]
    json.dumps(schema)  # serialisable as is


def test_json_schema_durations_take_a_number_or_the_same_strings_as_the_parser() -> None:
    timeout = pipeline.json_schema()["$defs"]["Step"]["properties"]["timeout"]
    forms = timeout["anyOf"][0]["anyOf"]
    assert {"type": "number", "exclusiveMinimum": 0} in forms
    pattern = re.compile(next(f["pattern"] for f in forms if f.get("type") == "string"))
    for good in ["90s", "10m", "1h30m", "500ms", "1.5h"]:
        assert pattern.search(good) and parse_duration(good)
    for bad in ["soon", "10m1h", "", "5"]:
        assert not pattern.search(bad)


def test_json_schema_shorthands_are_allowed() -> None:
    props = pipeline.json_schema()["$defs"]["Step"]["properties"]
    run_types = [t.get("type") for t in props["run"]["anyOf"]]
    assert run_types == ["string", "array"]
    assert {"type": "integer"} in props["retry"]["anyOf"]


def test_json_schema_resources_and_image_agree_with_the_parser() -> None:
    import jsonschema

    schema = pipeline.json_schema()
    check = jsonschema.Draft202012Validator(schema)
    good = {
        "image": "docker.io/library/python:3.12-slim",
        "resources": {"memory": "512M", "processes": 256, "open_files": 1024, "cpu_time": "10m"},
        "steps": [{"run": "x", "image": "alpine:3.20", "resources": {"file_size": 1 << 30}}],
    }
    assert list(check.iter_errors(good)) == []
    assert not problems(json.dumps(good))  # JSON is YAML: the parser agrees
    for bad in (
        {"resources": {"memory": "lots"}},
        {"resources": {"processes": 0}},
        {"resources": {"open_files": 3}},
        {"resources": {"swap": "1G"}},
        {"image": "-v/:/host"},
    ):
        doc = {**bad, "steps": [{"run": "x"}]}
        assert list(check.iter_errors(doc)), bad
        assert problems(json.dumps(doc)), bad


# --- validation is generic: the daemon config uses it too ----------------------------------


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    listen: str = "127.0.0.1:8750"
    concurrency: int = 2
    repos: list[_Repo] = []


class _Repo(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    poll_interval: int = 60


_Settings.model_rebuild()


def test_validation_works_for_any_model() -> None:
    doc = yamlsafe.load(
        b"listen: 80\nconcurency: 3\nrepos:\n  - name: app\n    pol_interval: 5\n"
        b"  - poll_interval: x\n",
        "config.yaml",
    )
    with pytest.raises(DocumentError) as err:
        validation.validate(_Settings, doc)
    assert [str(d) for d in err.value.diagnostics] == [
        "config.yaml:1:9: listen: expected a string, got an integer",
        "config.yaml:2:1: concurency: unknown key 'concurency'; did you mean 'concurrency'?",
        "config.yaml:5:5: repos[0].pol_interval: unknown key 'pol_interval'; did you mean "
        "'poll_interval'?",
        "config.yaml:6:5: repos[1].name: required key is missing",
        "config.yaml:6:20: repos[1].poll_interval: expected an integer, got a string",
    ]
    good = yamlsafe.load(b"repos: [{name: a}]\n", "config.yaml")
    assert validation.validate(_Settings, good).repos[0].name == "a"


def test_mutated_pipelines_never_crash_lint_parse_or_compile() -> None:
    """Seeded mutations of the golden files: every outcome is diagnostics or a plan."""
    seeds = [p.read_bytes() for p in sorted((Path(__file__).parent / "golden").glob("*.yml"))]
    tokens = [
        b"{",
        b"}",
        b"[",
        b"]",
        b": ",
        b"- ",
        b"\n",
        b"  ",
        b"&a ",
        b"*a",
        b"<<: ",
        b"!!str ",
        b"~",
        b"1e309",
        b"-1",
        b"'",
        b'"',
        b"\t",
        b"steps",
        b"depends_on",
        b"when",
        b"status",
        b"---",
        b"? ",
        b"|",
        b"\xff",
        b".nan",
        b"[]",
        b"{}",
    ]
    rng = random.Random(20261127)
    event = EventContext(
        EventKind.PUSH, "refs/heads/main", "f" * 40, branch="main", changed_paths=("src/a.py",)
    )
    for _ in range(1500):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 5)):
            at = rng.randrange(len(data) + 1)
            if rng.random() < 0.6:
                data[at:at] = rng.choice(tokens)
            else:
                del data[at : at + rng.randint(1, 12)]
        found = pipeline.lint(bytes(data), F)
        assert all(d.line >= 1 and d.col >= 1 and d.message for d in found)
        if not any(d.severity is Severity.ERROR for d in found):
            pipeline.compile(pipeline.parse(bytes(data), F), event)


def test_one_value_shorthands_for_lists() -> None:
    source = (
        "steps:\n"
        "  - {name: build, run: x, artifacts: dist/app, secrets: TOKEN}\n"
        "  - {name: test, run: y, depends_on: build, when: {branch: main, event: push}}\n"
        "  - {name: docs, run: z, depends_on: biuld}\n"
    )
    assert problems(source) == [
        ".ciwatch.yml:4:38: steps[2].depends_on: unknown step 'biuld'; did you mean 'build'?"
    ]
    spec = pipeline.parse(source.replace("biuld", "build").encode(), F)
    build, test, _ = spec.steps
    assert (build.artifacts, build.secrets) == (["dist/app"], ["TOKEN"])
    assert test.depends_on == ["build"]
    assert (test.when.branch, test.when.event) == (["main"], ["push"])
