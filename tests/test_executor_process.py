"""The process executor against a real /bin/sh: exit codes, environment,
timeouts, escaping processes, output, cancel, spawn failures."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from stepsinks import Sink, procs_with

from ciwatch.executors import supervise
from ciwatch.executors.base import CancelToken, StepSpec
from ciwatch.executors.process import ProcessExecutor, format_duration
from ciwatch.logread import LineKind, raw_output, read_log
from ciwatch.logs import StepLog
from ciwatch.masking import Masker
from ciwatch.model import FailureKind, StepState
from ciwatch.pipeline.plan import PlanStep

PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.fixture
def workdir(tmp_path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


def spec_for(workdir: Path, script: str, *, index=0, env=None, grace=0.5, **step) -> StepSpec:
    plan_step = PlanStep(index=index, name=step.pop("name", "test step"), script=script, **step)
    return StepSpec(
        step=plan_step,
        workdir=workdir,
        env={"PATH": PATH} if env is None else env,
        script_dir=workdir.parent / "scripts",
        grace=grace,
    )


def run(spec: StepSpec, cancel: CancelToken | None = None, sink=None):
    sink = sink if sink is not None else Sink()
    start = time.monotonic()
    result = ProcessExecutor().run(spec, sink, cancel or CancelToken())
    return result, sink, time.monotonic() - start


def test_success_and_exit_codes(workdir):
    ok, sink, _ = run(spec_for(workdir, "echo hello"))
    assert ok.state is StepState.SUCCESS and ok.exit_code == 0 and ok.failure is None
    assert bytes(sink.data) == b"hello\n"
    assert ok.started_at is not None and ok.finished_at >= ok.started_at

    failed, _, _ = run(spec_for(workdir, "echo before\nexit 3"))
    assert failed.state is StepState.FAILURE
    assert (failed.failure, failed.exit_code, failed.reason) == (FailureKind.EXIT, 3, "exit code 3")

    # The default shell is `sh -e`: the first failing command ends the step.
    stopped, sink, _ = run(spec_for(workdir, "false\necho not reached"))
    assert stopped.exit_code == 1 and b"not reached" not in sink.data


def test_killed_by_a_signal_it_did_not_get_from_us(workdir):
    result, _, _ = run(spec_for(workdir, "kill -KILL $$"))
    assert result.state is StepState.FAILURE and result.failure is FailureKind.SIGNAL
    assert result.reason == "killed by signal SIGKILL"


def test_environment_is_exactly_the_given_one(workdir, monkeypatch):
    monkeypatch.setenv("CIWATCH_TEST_LEAK", "from-the-daemon")
    env = {"PATH": PATH, "CIWATCH_SHA": "abc123", "ODD": "spaces and $(id) `x`"}
    result, sink, _ = run(spec_for(workdir, "env", env=env))
    assert result.state is StepState.SUCCESS
    seen = dict(line.split("=", 1) for line in sink.data.decode().splitlines())
    assert "CIWATCH_TEST_LEAK" not in seen
    assert {k: seen[k] for k in env} == env
    # Only what the shell itself adds on top (dash and bash set PWD and the like).
    assert set(seen) - set(env) <= {"PWD", "OLDPWD", "SHLVL", "_"}


def test_shell_is_found_through_the_steps_path_not_ciwatchs(workdir, tmp_path):
    bindir = tmp_path / "tools"
    bindir.mkdir()
    shell = bindir / "ci-shell"
    shell.write_text('#!/bin/sh\necho "custom shell"\nexec /bin/sh "$@"\n')
    shell.chmod(0o755)
    assert str(bindir) not in os.environ.get("PATH", "")
    env = {"PATH": f"{bindir}:{PATH}"}
    result, sink, _ = run(spec_for(workdir, "echo in step", env=env, shell=("ci-shell",)))
    assert result.state is StepState.SUCCESS
    assert bytes(sink.data) == b"custom shell\nin step\n"


def test_runs_in_the_workdir_with_stdin_from_dev_null(workdir):
    (workdir / "marker.txt").write_text("here")
    result, sink, elapsed = run(spec_for(workdir, "cat marker.txt; echo; pwd; cat; echo eof"))
    assert result.state is StepState.SUCCESS
    assert bytes(sink.data) == f"here\n{workdir}\neof\n".encode()
    assert elapsed < 5


def test_script_file_is_private_and_named_by_index(workdir):
    script = 'echo "$(basename "$0") $(stat -c %a "$0") $(dirname "$0")"'
    spec = spec_for(workdir, script, index=4, name="../../etc/passwd; rm -rf /")
    result, sink, _ = run(spec)
    assert result.state is StepState.SUCCESS
    assert bytes(sink.data) == f"step-4.sh 700 {spec.script_dir}\n".encode()
    assert not (spec.script_dir / "step-4.sh").exists()  # removed after the step


def test_stdout_and_stderr_merged_in_order(workdir):
    result, sink, _ = run(spec_for(workdir, "echo one; echo two >&2; echo three; echo four >&2"))
    assert bytes(sink.data) == b"one\ntwo\nthree\nfour\n"


def test_output_is_streamed_as_it_arrives(workdir):
    result, sink, _ = run(spec_for(workdir, "echo first; sleep 0.6; echo second"))
    assert result.state is StepState.SUCCESS
    assert time.monotonic() - sink.first_write > 0.5  # "first" came before the sleep ended
    assert bytes(sink.data) == b"first\nsecond\n"


def test_non_utf8_output_is_byte_exact(workdir):
    result, sink, _ = run(spec_for(workdir, r"printf '\377\376caf\303\251 \200\r\n\000end'"))
    assert result.state is StepState.SUCCESS
    assert bytes(sink.data) == b"\xff\xfecaf\xc3\xa9 \x80\r\n\x00end"


def test_timeout_with_sigterm_ignored_needs_sigkill_after_grace(workdir, marker):
    spec = spec_for(workdir, f"trap '' TERM; sleep {marker}", timeout=0.5, grace=0.5)
    result, sink, elapsed = run(spec)
    assert result.state is StepState.FAILURE and result.failure is FailureKind.TIMEOUT
    assert result.reason == "timed out after 0.5s (SIGTERM, then SIGKILL after 0.5s grace)"
    assert 0.95 <= elapsed < 2.5
    assert any("SIGTERM" in n for n in sink.notes) and any("SIGKILL" in n for n in sink.notes)
    assert procs_with(marker) == []


def test_timeout_of_a_step_that_stops_on_sigterm(workdir, marker):
    result, sink, elapsed = run(spec_for(workdir, f"sleep {marker}", timeout=0.5, grace=5))
    assert result.failure is FailureKind.TIMEOUT
    assert result.reason == "timed out after 0.5s (SIGTERM)"
    assert elapsed < 2
    assert procs_with(marker) == []


def test_setsid_escape_is_killed_when_the_step_exits_zero(workdir, marker):
    result, sink, elapsed = run(spec_for(workdir, f"setsid sleep {marker} &\necho started\nexit 0"))
    assert result.state is StepState.SUCCESS and result.exit_code == 0
    assert elapsed < 2
    assert procs_with(marker) == []
    assert any("left 1 process(es) running" in n for n in sink.notes)


def test_double_fork_and_nohup_are_killed(workdir, marker):
    script = (
        f"( sh -c 'sleep {marker}' & )\n( nohup setsid sh -c 'sleep {marker}' >/dev/null 2>&1 & )\n"
    )
    result, _, elapsed = run(spec_for(workdir, script))
    assert result.state is StepState.SUCCESS
    assert elapsed < 2
    assert procs_with(marker) == []


def test_background_job_holding_stdout_does_not_hold_the_step(workdir, marker):
    result, sink, elapsed = run(spec_for(workdir, f"sleep {marker} &\necho done"))
    assert result.state is StepState.SUCCESS
    assert elapsed < 2
    assert bytes(sink.data) == b"done\n"
    assert procs_with(marker) == []


def test_leftover_ignoring_sigterm_is_killed_after_grace(workdir, marker):
    script = f"setsid sh -c \"trap '' TERM; sleep {marker}\" &\nsleep 0.1\nexit 0"
    result, sink, elapsed = run(spec_for(workdir, script, grace=0.3))
    assert result.state is StepState.SUCCESS
    assert 0.3 <= elapsed < 2
    assert procs_with(marker) == []
    assert any("SIGKILL" in n for n in sink.notes)


def test_a_pipe_held_open_outside_the_step_does_not_block_reading(workdir, marker, monkeypatch):
    # Without a subreaper the escaped process is out of reach and keeps the
    # output pipe open: reading still stops a bounded time after the shell ended.
    monkeypatch.setattr(supervise, "load_prctl", lambda: None)
    ex = ProcessExecutor(drain=0.3)
    sink = Sink()
    start = time.monotonic()
    result = ex.run(spec_for(workdir, f"setsid sleep {marker} &\nexit 0"), sink, CancelToken())
    assert result.state is StepState.SUCCESS
    assert time.monotonic() - start < 1.5
    assert any("still open" in n for n in sink.notes)
    assert any("no subreaper" in n for n in sink.notes)


def test_closed_stdout_still_times_out(workdir, marker):
    script = f"echo bye; exec >&- 2>&-; sleep {marker}"
    result, sink, elapsed = run(spec_for(workdir, script, timeout=0.5))
    assert result.failure is FailureKind.TIMEOUT
    assert 0.45 <= elapsed < 2
    assert bytes(sink.data) == b"bye\n"
    assert procs_with(marker) == []


def test_idle_timeout_when_no_output(workdir, marker):
    script = f"echo working; sleep {marker}"
    result, sink, elapsed = run(spec_for(workdir, script, timeout=30, idle_timeout=0.4))
    assert result.state is StepState.FAILURE and result.failure is FailureKind.IDLE_TIMEOUT
    assert result.reason == "no output for 0.4s (idle timeout; SIGTERM)"
    assert 0.35 <= elapsed < 2
    assert procs_with(marker) == []


def test_regular_output_keeps_idle_timeout_away(workdir):
    script = "for i in 1 2 3 4 5 6; do echo $i; sleep 0.15; done"
    result, _, elapsed = run(spec_for(workdir, script, idle_timeout=0.5))
    assert result.state is StepState.SUCCESS
    assert elapsed > 0.5  # longer than the idle timeout in total


def test_cancel_from_another_thread(workdir, marker):
    cancel = CancelToken()
    timer = threading.Timer(0.3, cancel.cancel, args=("superseded by a newer commit",))
    timer.start()
    try:
        result, sink, elapsed = run(spec_for(workdir, f"sleep {marker}"), cancel)
    finally:
        timer.cancel()
    assert result.state is StepState.CANCELED and result.failure is FailureKind.CANCELED
    assert result.reason == "superseded by a newer commit (SIGTERM)"
    assert 0.25 <= elapsed < 1.5
    assert procs_with(marker) == []


def test_canceled_before_start_runs_nothing(workdir):
    cancel = CancelToken()
    cancel.cancel()
    result, _, _ = run(spec_for(workdir, "touch ran"), cancel)
    assert result.state is StepState.CANCELED
    assert not (workdir / "ran").exists()


@pytest.mark.parametrize(
    "shell, expect",
    [
        (("no-such-shell",), "not found in PATH"),
        (("/nonexistent/bin/sh",), "No such file or directory"),
    ],
)
def test_shell_not_found_is_an_infra_error(workdir, shell, expect):
    result, sink, _ = run(spec_for(workdir, "true", shell=shell))
    assert result.state is StepState.ERROR and result.failure is FailureKind.INFRA
    assert expect in result.reason and sink.notes == [result.reason]


def test_missing_workdir_is_an_infra_error(tmp_path):
    spec = spec_for(tmp_path / "gone", "true")
    result, _, _ = run(spec)
    assert result.state is StepState.ERROR and result.failure is FailureKind.INFRA
    assert "working directory" in result.reason and "No such file" in result.reason


def test_exec_format_error_is_an_infra_error(workdir, tmp_path):
    bogus = tmp_path / "bogus-shell"
    bogus.write_bytes(b"\x7fELF this is not a program")
    bogus.chmod(0o755)
    result, _, _ = run(spec_for(workdir, "true", shell=(str(bogus),)))
    assert result.state is StepState.ERROR and result.failure is FailureKind.INFRA
    assert "Exec format error" in result.reason


def big_output_script(size: int) -> tuple[str, bytes]:
    line = b"output line with some text 0123456789\n"
    return f"yes '{line[:-1].decode()}' | head -c {size}", (line * (size // len(line) + 1))[:size]


def test_ten_megabytes_all_stored_without_a_cap(workdir, tmp_path):
    script, expected = big_output_script(10_000_000)
    log = StepLog(tmp_path / "0.log", Masker(["never-printed"]), 0, time.time)
    result, _, elapsed = run(spec_for(workdir, script), sink=log)
    summary = log.close()
    assert result.state is StepState.SUCCESS
    assert summary.bytes_seen == summary.bytes_stored == len(expected)
    assert b"".join(raw_output(read_log(tmp_path / "0.log"))) == expected
    assert elapsed < 5


def test_ten_megabytes_capped_keeps_head_tail_and_note(workdir, tmp_path):
    script, expected = big_output_script(10_000_000)
    log = StepLog(tmp_path / "0.log", Masker([]), 1_000_000, time.time)
    result, _, _ = run(spec_for(workdir, script), sink=log)
    summary = log.close()
    assert result.state is StepState.SUCCESS  # a truncated log does not fail the step
    assert summary.truncated and summary.bytes_stored <= 1_000_000
    records = list(read_log(tmp_path / "0.log"))
    [cut] = [i for i, r in enumerate(records) if r.kind is LineKind.NOTE]
    assert records[cut].data == b"log truncated: %d bytes omitted" % summary.bytes_omitted
    head = b"".join(raw_output(records[:cut]))
    tail = b"".join(raw_output(records[cut + 1 :]))
    assert len(head) + len(tail) + summary.bytes_omitted == len(expected)
    assert expected.startswith(head) and expected.endswith(tail)


def test_secrets_never_reach_the_log(workdir, tmp_path):
    secret = "tok-9f8e7d6c5b4a"
    env = {"PATH": PATH, "DEPLOY_TOKEN": secret}
    script = 'echo "token is $DEPLOY_TOKEN"; printf %s "$DEPLOY_TOKEN" | base64'
    log = StepLog(tmp_path / "0.log", Masker([secret]), 0, time.time)
    result, _, _ = run(spec_for(workdir, script, env=env), sink=log)
    log.close()
    assert result.state is StepState.SUCCESS
    content = (tmp_path / "0.log").read_bytes()
    assert secret.encode() not in content
    assert b"token is [MASKED]" in content and content.count(b"[MASKED]") == 2


@pytest.mark.parametrize(
    "seconds, text", [(0.5, "0.5s"), (2, "2s"), (90, "1m30s"), (600, "10m"), (5400, "1h30m")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_parallel_steps_in_threads_keep_their_own_output_and_processes(workdir, marker):
    ex = ProcessExecutor()
    results: dict[int, tuple] = {}

    def one(n: int) -> None:
        script = (
            f"setsid sleep {marker} &\ni=0; while [ $i -lt 300 ]; do echo step{n}; i=$((i+1)); done"
        )
        sink = Sink()
        spec = spec_for(workdir, script, index=n)
        results[n] = (ex.run(spec, sink, CancelToken()), sink)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(results) == [0, 1, 2, 3]
    for n, (result, sink) in results.items():
        assert result.state is StepState.SUCCESS
        assert bytes(sink.data) == f"step{n}\n".encode() * 300
    assert procs_with(marker) == []
