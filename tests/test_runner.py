"""The runner's guarantees, with a real store, real git and a scripted executor.

The executor here is a fake (orchestration test): the real one is tested in
test_executor_process.py and end to end in test_run_e2e.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from gitutil import make_repo

from ciwatch.executors.base import CancelToken, StepSpec
from ciwatch.model import Event, EventKind, FailureKind, RunState, StepResult, StepState
from ciwatch.runner import Runner, RunnerSettings
from ciwatch.store import Store
from ciwatch.workspace import Mirrors, local_repo_info


class ScriptedExecutor:
    """Returns results by step name; records the environment each step got."""

    def __init__(self, results: dict[str, list[StepResult]] | None = None, hook=None) -> None:
        self.results = results or {}
        self.envs: dict[str, dict] = {}
        self.calls: list[str] = []
        self.hook = hook

    def run(self, spec: StepSpec, sink, cancel: CancelToken) -> StepResult:
        name = spec.step.name
        self.calls.append(name)
        self.envs[name] = dict(spec.env)
        if self.hook:
            self.hook(spec, sink, cancel)
        sink.write(f"output of {name}\n".encode())
        queue = self.results.get(name)
        if queue:
            return queue.pop(0)
        return StepResult(StepState.SUCCESS, exit_code=0, started_at=1.0, finished_at=2.0)


def setup(tmp_path: Path, pipeline: str, executor, *, trusted=True, secrets=None, settings=None):
    src = tmp_path / "src"
    sha = make_repo(src, {".ciwatch.yml": pipeline})
    store = Store.open(tmp_path / "state" / "ciwatch.db")
    url, _, _ = local_repo_info(src)
    store.ensure_repo("app", url)
    run, _ = store.submit(
        Event(repo="app", kind=EventKind.PUSH, ref="refs/heads/main", sha=sha, trusted=trusted)
    )
    runner = Runner(
        store=store,
        mirrors=Mirrors(tmp_path / "state"),
        executor=executor,
        state_dir=tmp_path / "state",
        settings=settings or RunnerSettings(),
        secrets=secrets or {},
        host_env={"PATH": "/usr/bin:/bin", "SECRET_OF_THE_DAEMON": "x"},
    )
    return store, runner, run


def test_untrusted_runs_get_no_secrets(tmp_path):
    ex = ScriptedExecutor()
    pipeline = "steps:\n  - name: deploy\n    secrets: [TOKEN]\n    run: ./deploy\n"
    store, runner, run = setup(
        tmp_path, pipeline, ex, trusted=False, secrets={"TOKEN": "t0ken-value"}
    )
    final = runner.execute(run.id, worker="w")
    assert final.state is RunState.SUCCESS
    assert "TOKEN" not in ex.envs["deploy"]
    assert "SECRET_OF_THE_DAEMON" not in ex.envs["deploy"]


def test_trusted_runs_get_only_the_secrets_they_name(tmp_path):
    ex = ScriptedExecutor()
    pipeline = "steps:\n  - name: a\n    secrets: [TOKEN]\n    run: x\n  - name: b\n    run: y\n"
    store, runner, run = setup(
        tmp_path, pipeline, ex, secrets={"TOKEN": "t0ken-value", "OTHER": "o"}
    )
    runner.execute(run.id, worker="w")
    assert ex.envs["a"]["TOKEN"] == "t0ken-value" and "OTHER" not in ex.envs["a"]
    assert "TOKEN" not in ex.envs["b"]


def test_a_secret_missing_from_the_config_is_an_error_not_a_crash(tmp_path):
    ex = ScriptedExecutor()
    store, runner, run = setup(tmp_path, "steps:\n  - {name: a, secrets: [NOPE], run: x}\n", ex)
    final = runner.execute(run.id, worker="w")
    assert final.state is RunState.ERROR and "NOPE" in final.reason
    assert ex.calls == []


def test_infra_failure_is_retried_only_when_asked(tmp_path):
    infra = StepResult(StepState.ERROR, failure=FailureKind.INFRA, reason="could not start")
    ex = ScriptedExecutor({"a": [infra], "b": [infra]})
    pipeline = "steps:\n  - {name: a, retry: {max: 1, on: [infra]}, run: x}\n  - {name: b, run: y, depends_on: []}\n"
    store, runner, run = setup(tmp_path, pipeline, ex)
    final = runner.execute(run.id, worker="w")
    assert ex.calls.count("a") == 2 and ex.calls.count("b") == 1
    assert final.state is RunState.ERROR and "'b'" in final.reason
    steps = {s.name: s for s in store.steps(run.id)}
    assert steps["a"].state is StepState.SUCCESS and steps["a"].result.tries == 2


def test_failure_retry_does_not_cover_infra_only_policy(tmp_path):
    failed = StepResult(
        StepState.FAILURE, exit_code=1, failure=FailureKind.EXIT, reason="exit code 1"
    )
    ex = ScriptedExecutor({"a": [failed, failed]})
    store, runner, run = setup(
        tmp_path, "steps:\n  - {name: a, retry: {max: 3, on: [infra]}, run: x}\n", ex
    )
    assert runner.execute(run.id, worker="w").state is RunState.FAILURE
    assert ex.calls == ["a"]


def test_an_internal_error_still_ends_the_run(tmp_path):
    def boom(spec, sink, cancel):
        raise RuntimeError("bug in an executor")

    store, runner, run = setup(tmp_path, "steps:\n  - run: x\n", ScriptedExecutor(hook=boom))
    final = runner.execute(run.id, worker="w")
    assert final.state is RunState.ERROR and "internal error" in final.reason
    assert store.get_run(run.id).state is RunState.ERROR
    assert [a.state for a in store.attempts(run.id)] == [RunState.ERROR]


def test_a_run_cannot_be_executed_twice_at_once(tmp_path):
    started, release = threading.Event(), threading.Event()

    def hold(spec, sink, cancel):
        started.set()
        release.wait(10)

    store, runner, run = setup(tmp_path, "steps:\n  - run: x\n", ScriptedExecutor(hook=hold))
    t = threading.Thread(target=runner.execute, args=(run.id,), kwargs={"worker": "one"})
    t.start()
    assert started.wait(10)
    with pytest.raises(Exception, match="not queued"):
        runner.execute(run.id, worker="two")
    release.set()
    t.join(10)
    assert store.get_run(run.id).state is RunState.SUCCESS


def test_cancel_stops_pending_steps(tmp_path):
    cancel = CancelToken()

    def cancel_during_first(spec, sink, token):
        cancel.cancel("stop")

    ex = ScriptedExecutor(hook=cancel_during_first)
    store, runner, run = setup(
        tmp_path, "steps:\n  - {name: a, run: x}\n  - {name: b, run: y}\n", ex
    )
    final = runner.execute(run.id, worker="w", cancel=cancel)
    assert ex.calls == ["a"]
    assert final.state is RunState.CANCELED
    assert {s.name: s.state for s in store.steps(run.id)}["b"] is StepState.CANCELED


def test_pipeline_level_when_skips_the_run(tmp_path):
    ex = ScriptedExecutor()
    store, runner, run = setup(tmp_path, "when: {branch: release/*}\nsteps:\n  - run: x\n", ex)
    final = runner.execute(run.id, worker="w")
    assert final.state is RunState.SKIPPED and "branch" in final.reason
    assert ex.calls == []


def test_workspace_is_removed_after_success_and_kept_after_failure(tmp_path):
    failed = StepResult(
        StepState.FAILURE, exit_code=1, failure=FailureKind.EXIT, reason="exit code 1"
    )
    store, runner, run = setup(
        tmp_path, "steps:\n  - {name: a, run: x}\n", ScriptedExecutor({"a": [failed]})
    )
    runner.execute(run.id, worker="w")
    kept = list((tmp_path / "state" / "workspaces").rglob("src"))
    assert kept, "a failed run's workspace is kept by default"
    store2, runner2, run2 = setup(tmp_path / "b", "steps:\n  - run: x\n", ScriptedExecutor())
    runner2.execute(run2.id, worker="w")
    assert not list((tmp_path / "b" / "state" / "workspaces").rglob("src"))


def test_a_soft_cancel_spares_non_interruptible_steps(tmp_path):
    cancel = CancelToken()
    seen = {}

    def supersede(spec, sink, token):
        if spec.step.name == "deploy":
            cancel.cancel("superseded by a newer commit", soft=True)
            seen["deploy"] = token.canceled

    pipeline = (
        "steps:\n  - {name: deploy, interruptible: false, run: x}\n  - {name: after, run: y}\n"
    )
    ex = ScriptedExecutor(hook=supersede)
    store, runner, run = setup(tmp_path, pipeline, ex)
    final = runner.execute(run.id, worker="w", cancel=cancel)
    assert seen["deploy"] is False  # the deploy step did not see the supersede
    assert ex.calls == ["deploy"]  # but nothing after it started
    assert final.state is RunState.CANCELED and "superseded" in final.reason


def test_a_pull_request_head_is_fetched_from_its_ref_and_when_sees_the_target_branch(tmp_path):
    src = tmp_path / "src"
    make_repo(src, {".ciwatch.yml": "when: {branch: main}\nsteps:\n  - {name: t, run: x}\n"})
    # the PR's head commit is on no branch: only refs/pull/7/head points to it
    from gitutil import commit, git

    git(src, "checkout", "-q", "-b", "feature")
    head = commit(src, {"f.txt": "pr"}, "pr change")
    git(src, "update-ref", "refs/pull/7/head", head)
    git(src, "checkout", "-q", "main")
    git(src, "branch", "-q", "-D", "feature")
    store = Store.open(tmp_path / "state" / "ciwatch.db")
    url, _, _ = local_repo_info(src)
    store.ensure_repo("app", url)
    ex = ScriptedExecutor()
    runner = Runner(
        store=store,
        mirrors=Mirrors(tmp_path / "state"),
        executor=ex,
        state_dir=tmp_path / "state",
        settings=RunnerSettings(),
        secrets={},
        host_env={},
    )
    runs = {}
    for base in ("main", "dev"):
        ev = Event(
            repo="app",
            kind=EventKind.PULL_REQUEST,
            ref="refs/pull/7/head",
            sha=head,
            trusted=False,
            pr_number=7 if base == "main" else 8,
            meta=(("base_branch", base),),
        )
        run, _ = store.submit(ev)
        runs[base] = runner.execute(run.id, worker="w")
    assert runs["main"].state is RunState.SUCCESS and ex.calls == ["t"]
    assert runs["dev"].state is RunState.SKIPPED
