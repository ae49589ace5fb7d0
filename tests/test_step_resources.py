"""Per-step resource accounting: CPU time and peak memory of a step's processes,
measured by the process and sandbox executors, stored, and shown."""

from __future__ import annotations

import io
import resource
import time
from pathlib import Path

import pytest
from stepsinks import Sink

from ciwatch.console import ConsoleObserver, fmt_cpu, fmt_mem
from ciwatch.executors.base import CancelToken, StepSpec
from ciwatch.executors.process import ProcessExecutor
from ciwatch.executors.sandbox import SandboxExecutor, check_sandbox
from ciwatch.logview import show_logs
from ciwatch.model import Event, EventKind, RunState, StepResult, StepState
from ciwatch.pipeline.plan import Plan, PlanStep
from ciwatch.store import Store

PATH = "/usr/local/bin:/usr/bin:/bin"
# The loop runs in a background child the shell waits for: its CPU time is
# only seen through the shell's descendants.
BURN = "sh -c 'i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done' &\nwait"
# Peak memory is only reported above the step supervisor's own size, which is
# this process's (it is forked from it): allocate clearly more than that.
_SIZE = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 + 60_000_000
ALLOCATE = f'python3 -c "b = bytearray({_SIZE}); import time; time.sleep(0.1)"'


def spec_for(tmp_path: Path, script: str) -> StepSpec:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    return StepSpec(
        step=PlanStep(index=0, name="step", script=script),
        workdir=ws,
        env={"PATH": PATH},
        script_dir=tmp_path / "scripts",
        grace=0.5,
    )


def sandbox() -> SandboxExecutor:
    check_sandbox()  # raises (the test fails) when bubblewrap is missing or broken
    return SandboxExecutor()


EXECUTORS = [pytest.param(ProcessExecutor, id="process"), pytest.param(sandbox, id="sandbox")]


def run(make, tmp_path: Path, script: str) -> StepResult:
    result = make().run(spec_for(tmp_path, script), Sink(), CancelToken())
    assert result.state is StepState.SUCCESS, result.reason
    return result


@pytest.mark.parametrize("make", EXECUTORS)
def test_cpu_of_a_background_child_counts(make, tmp_path):
    result = run(make, tmp_path, BURN)
    assert result.cpu_seconds is not None and result.cpu_seconds >= 0.1


@pytest.mark.parametrize("make", EXECUTORS)
def test_peak_memory_of_the_largest_child(make, tmp_path):
    result = run(make, tmp_path, ALLOCATE)
    assert result.max_rss_kib is not None and 40_000 <= result.max_rss_kib < _SIZE // 1024 + 200_000


@pytest.mark.parametrize("make", EXECUTORS)
def test_a_trivial_step_uses_little(make, tmp_path):
    result = run(make, tmp_path, "true")
    assert result.cpu_seconds is not None and result.cpu_seconds < 0.1
    # Unknown (too small to tell from the supervisor's own size) or small.
    assert result.max_rss_kib is None or result.max_rss_kib < 40_000


def test_a_step_that_cannot_start_has_no_figures(tmp_path):
    spec = spec_for(tmp_path, "true")
    spec = StepSpec(
        step=PlanStep(index=0, name="step", script="true", shell=("no-such-shell",)),
        workdir=spec.workdir,
        env=spec.env,
        script_dir=spec.script_dir,
        grace=0.5,
    )
    result = ProcessExecutor().run(spec, Sink(), CancelToken())
    assert result.state is StepState.ERROR
    assert (result.cpu_seconds, result.max_rss_kib) == (None, None)


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "state" / "ciwatch.db", clock=lambda: 1000.0)
    s.ensure_repo("app", "/srv/git/app.git")
    yield s
    s.close()


def stored_step(store: Store, result: StepResult, log_path: str = ""):
    run_, _ = store.submit(
        Event(repo="app", kind=EventKind.PUSH, ref="refs/heads/main", sha="1" * 40)
    )
    store.start_attempt(run_.id, "w1", 30)
    step_id = store.start_step(run_.id, 1, "", 0, "build", log_path)
    store.finish_step(step_id, result)
    return run_, store.steps(run_.id)[0]


def test_measured_figures_survive_the_store(store, tmp_path):
    measured = run(ProcessExecutor, tmp_path, ALLOCATE)
    _, step = stored_step(store, measured)
    assert step.result.cpu_seconds == measured.cpu_seconds
    assert step.result.max_rss_kib == measured.max_rss_kib >= 40_000


def test_unknown_figures_stay_unknown_in_the_store(store):
    _, step = stored_step(store, StepResult(StepState.SUCCESS, started_at=1.0, finished_at=2.0))
    assert (step.result.cpu_seconds, step.result.max_rss_kib) == (None, None)


def test_formats():
    assert (fmt_cpu(None), fmt_cpu(0.4), fmt_cpu(0.0123), fmt_cpu(12.0)) == (
        "-",
        "0.4s",
        "0.012s",
        "12.0s",
    )
    assert (fmt_mem(None), fmt_mem(12_000), fmt_mem(300), fmt_mem(2_000_000)) == (
        "-",
        "12 MB",
        "307 kB",
        "2.0 GB",
    )


def test_summary_table_has_cpu_and_mem_columns(store):
    run_, _ = store.submit(
        Event(repo="app", kind=EventKind.PUSH, ref="refs/heads/main", sha="2" * 40)
    )
    out = io.StringIO()
    console = ConsoleObserver(out, clock=time.monotonic, progress_every=60)
    plan = Plan()
    result = StepResult(
        StepState.SUCCESS, started_at=1.0, finished_at=2.0, cpu_seconds=0.4, max_rss_kib=12_000
    )
    console.step_finished(run_, plan, PlanStep(index=0, name="build", script="x"), result)
    console.step_finished(
        run_, plan, PlanStep(index=1, name="lint", script="x"), StepResult(StepState.SKIPPED)
    )
    text = console.summary(run_, RunState.SUCCESS, "")
    console.run_finished(run_, RunState.SUCCESS, "")
    header, build, lint = text.strip().splitlines()[:3]
    # tries stays the last column
    assert header.split()[-3:] == ["cpu", "mem", "tries"]
    assert build.split()[-4:] == ["0.4s", "12", "MB", "1"]
    assert lint.split()[-3:] == ["-", "-", "-"]


def test_logs_header_shows_the_figures_when_known(store, tmp_path):
    log = tmp_path / "logs" / "0.log"
    log.parent.mkdir()
    log.write_bytes(b"")
    result = StepResult(
        StepState.SUCCESS, started_at=1.0, finished_at=2.0, cpu_seconds=1.5, max_rss_kib=51_200
    )
    run_, _ = stored_step(store, result, str(log))
    out = io.StringIO()
    show_logs(store, run_, step=None, follow=False, out=out)
    assert "── build (success; cpu 1.5s, mem 52 MB) ──" in out.getvalue()
