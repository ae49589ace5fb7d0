"""The sandbox executor against a real bubblewrap and /bin/sh: confinement of
files, processes and network, plus the process executor's behaviour (exit codes,
output, timeouts, leftovers). These tests need bwrap and fail without it."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from stepsinks import Sink, procs_with

from ciwatch.errors import ExecutorError
from ciwatch.executors.base import CancelToken, StepSpec
from ciwatch.executors.sandbox import SandboxExecutor, check_sandbox
from ciwatch.model import FailureKind, StepState
from ciwatch.pipeline.plan import PlanStep

PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.fixture(scope="module", autouse=True)
def bwrap_works():
    check_sandbox()  # raises (the tests fail) when bubblewrap is missing or broken


@pytest.fixture
def box(tmp_path) -> dict[str, Path]:
    """A state dir holding a token, two workspaces and the scripts dir; a HOME and TMPDIR."""
    state = tmp_path / "state"
    (state / "workspaces" / "mine").mkdir(parents=True)
    (state / "workspaces" / "other").mkdir()
    (state / "workspaces" / "other" / "secret.txt").write_text("other run's file\n")
    (state / "token").write_text("forge-token-123\n")
    home = tmp_path / "home"
    tmp = tmp_path / "tmpdir"
    home.mkdir()
    tmp.mkdir()
    return {
        "state": state,
        "ws": state / "workspaces" / "mine",
        "scripts": state / "scripts",
        "home": home,
        "tmp": tmp,
    }


def spec_for(box, script: str, *, grace=0.5, env=None, **step) -> StepSpec:
    if env is None:
        env = {"PATH": PATH, "HOME": str(box["home"]), "TMPDIR": str(box["tmp"])}
        env["STATE"] = str(box["state"])
    return StepSpec(
        step=PlanStep(index=0, name="step", script=script, **step),
        workdir=box["ws"],
        env=env,
        script_dir=box["scripts"],
        grace=grace,
    )


def run(box, script: str, *, network=True, cancel=None, **kw):
    sink = Sink()
    executor = SandboxExecutor(network=network, hide=[box["state"]])
    start = time.monotonic()
    result = executor.run(spec_for(box, script, **kw), sink, cancel or CancelToken())
    return result, sink, time.monotonic() - start


def test_exit_codes_and_merged_output_as_with_process(box):
    ok, sink, _ = run(box, "echo out\necho err >&2\npwd")
    assert ok.state is StepState.SUCCESS and ok.exit_code == 0
    assert sink.text == f"out\nerr\n{box['ws']}\n"
    assert sink.notes == []

    failed, _, _ = run(box, "echo before\nexit 3")
    assert (failed.state, failed.failure, failed.exit_code) == (
        StepState.FAILURE,
        FailureKind.EXIT,
        3,
    )
    stopped, sink, _ = run(box, "false\necho not reached")
    assert stopped.exit_code == 1 and b"not reached" not in sink.data


def test_cannot_write_outside_its_workspace(box):
    script = (
        "touch /etc/ciwatch-x && echo wrote-etc\n"
        "touch $STATE/x && echo wrote-state\n"
        "touch $STATE/workspaces/other/x && echo wrote-other\n"
        "touch /tmp/ciwatch-sandbox-x\n"
        "touch ./in-workspace\n"
    )
    result, sink, _ = run(box, script, shell=("sh",))
    assert result.state is StepState.SUCCESS
    assert "wrote" not in sink.text
    assert not Path("/etc/ciwatch-x").exists()
    assert not (box["state"] / "x").exists()
    assert not (box["state"] / "workspaces" / "other" / "x").exists()
    assert not Path("/tmp/ciwatch-sandbox-x").exists()  # /tmp is the step's own tmpfs
    assert (box["ws"] / "in-workspace").exists()


def test_hidden_state_dir_is_empty_inside(box):
    script = (
        "cat $STATE/token || echo no-token\n"
        "cat $STATE/workspaces/other/secret.txt || echo no-other\n"
        "ls $STATE/workspaces\n"
    )
    result, sink, _ = run(box, script, shell=("sh",))
    assert result.state is StepState.SUCCESS
    assert "forge-token-123" not in sink.text and "other run" not in sink.text
    assert "no-token" in sink.text and "no-other" in sink.text
    # Only the mount points of what the step is given remain visible.
    assert sink.text.splitlines()[-1] == "mine"


def test_a_hidden_file_reads_empty_and_cannot_be_written(box, tmp_path):
    token = tmp_path / "daemon-token"
    token.write_text("sekrit\n")
    executor = SandboxExecutor(hide=[token])
    sink = Sink()
    script = f"cat {token}; echo x > {token} || echo ro"
    result = executor.run(spec_for(box, script, shell=("sh",)), sink, CancelToken())
    assert result.state is StepState.SUCCESS
    assert "sekrit" not in sink.text and sink.text.strip().endswith("ro")
    assert token.read_text() == "sekrit\n"


def test_home_and_tmpdir_are_writable(box):
    result, sink, _ = run(box, 'echo h > "$HOME/h"\necho t > "$TMPDIR/t"\n')
    assert result.state is StepState.SUCCESS, sink.notes
    assert (box["home"] / "h").read_text() == "h\n"
    assert (box["tmp"] / "t").read_text() == "t\n"


def test_a_home_that_would_expose_the_state_dir_is_refused(box):
    env = {"PATH": PATH, "HOME": str(box["state"].parent)}
    result, sink, _ = run(box, "echo ran", env=env)
    assert (result.state, result.failure) == (StepState.ERROR, FailureKind.INFRA)
    assert "would expose the hidden path" in result.reason
    assert b"ran" not in sink.data


def test_sees_only_its_own_processes(box):
    script = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done\n"
    result, sink, _ = run(box, script)
    assert result.state is StepState.SUCCESS
    lines = [line for line in sink.text.splitlines() if line.strip()]
    # bwrap's init and the shell (the glob ran before any `tr` started).
    assert len(lines) == 2, lines
    assert all(Path(line.split()[0]).name in ("bwrap", "sh") for line in lines), lines
    assert not any("python" in line for line in lines)  # not the test's own process


@pytest.fixture
def server():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()

    def serve():
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            conn.sendall(b"hello from the test\n")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join()
    sock.close()


CONNECT = (
    "python3 -c 'import socket,sys; "
    's=socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5); '
    "print(s.recv(100).decode().strip())' {port}"
)


def test_network_off_cannot_reach_a_loopback_server(box, server):
    result, sink, _ = run(box, CONNECT.format(port=server), network=False)
    assert result.state is StepState.FAILURE
    assert "hello from the test" not in sink.text
    # The same step with the network on does reach it: the test can tell.
    result, sink, _ = run(box, CONNECT.format(port=server), network=True)
    assert result.state is StepState.SUCCESS and "hello from the test" in sink.text


def test_setsid_escape_dies_with_the_step(box, marker):
    script = f"setsid sleep {marker} > /dev/null 2>&1 &\nsetsid nohup sleep {marker} &\necho done"
    result, sink, elapsed = run(box, script)
    assert result.state is StepState.SUCCESS and sink.text.startswith("done")
    assert elapsed < 2
    assert procs_with(marker) == []


def test_timeout_kills_everything(box, marker):
    script = f"trap '' TERM\nsleep {marker} &\nsleep {marker}"
    result, sink, elapsed = run(box, script, timeout=0.5)
    assert (result.state, result.failure) == (StepState.FAILURE, FailureKind.TIMEOUT)
    assert result.reason.startswith("timed out after 0.5s")
    assert elapsed < 2.5
    assert procs_with(marker) == []


def test_cancel_stops_the_step(box, marker):
    cancel = CancelToken()
    threading.Timer(0.3, cancel.cancel, args=("canceled by a user",)).start()
    result, _, elapsed = run(box, f"sleep {marker}", cancel=cancel)
    assert result.state is StepState.CANCELED and result.reason.startswith("canceled by a user")
    assert elapsed < 2 and procs_with(marker) == []


def test_missing_shell_is_an_infra_error(box):
    result, _, _ = run(box, "true", shell=("no-such-shell-xyz",))
    assert (result.state, result.failure) == (StepState.ERROR, FailureKind.INFRA)
    assert "not found in PATH" in result.reason


def test_missing_bwrap_is_an_infra_error_with_the_fix(box, tmp_path):
    missing = str(tmp_path / "no-bwrap")
    with pytest.raises(ExecutorError, match="install the bubblewrap package"):
        check_sandbox(missing)
    sink = Sink()
    result = SandboxExecutor(bwrap=missing).run(spec_for(box, "true"), sink, CancelToken())
    assert (result.state, result.failure) == (StepState.ERROR, FailureKind.INFRA)
    assert "install the bubblewrap package" in result.reason


def test_bwrap_without_namespaces_names_the_sysctl(tmp_path):
    # A stand-in failing the way bwrap does on a kernel without user namespaces.
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace, likely because "
        "the kernel does not allow non-privileged user namespaces.' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    with pytest.raises(ExecutorError) as err:
        check_sandbox(str(fake))
    assert "sysctl kernel.unprivileged_userns_clone=1" in str(err.value)
    assert "No permissions to creating new namespace" in str(err.value)
