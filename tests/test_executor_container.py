"""The container executor against a real podman and a locally imported busybox
image: environment, output, exit codes, timeouts, cancel, network, limits,
images, secrets and leftover containers. These tests need podman, runc and
busybox-static and fail without them."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from containerimage import (
    ENGINE_ARGS,
    busybox_image,
    containers,
    dead_owner,
    remove_containers,
    start_leftover,
)
from stepsinks import Sink

from ciwatch.config import read_config
from ciwatch.errors import ConfigError, ExecutorError
from ciwatch.executors.base import CancelToken, StepSpec
from ciwatch.executors.container import ContainerExecutor
from ciwatch.executors.engine import (
    check_engine,
    find_engine,
    owner_of,
    remove_leftovers,
    scope_of,
)
from ciwatch.model import FailureKind, StepState
from ciwatch.pipeline.plan import PlanStep, Resources

PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.fixture(scope="session")
def image() -> str:
    check_engine(find_engine("podman"))  # fails (with the fix) when podman is missing or broken
    return busybox_image()


@pytest.fixture
def box(tmp_path) -> dict[str, Path]:
    paths = {name: tmp_path / name for name in ("state", "ws", "home", "tmp")}
    for path in paths.values():
        path.mkdir()
    paths["scripts"] = tmp_path / "scripts"
    return paths


def executor(box, default_image: str, **kw) -> ContainerExecutor:
    kw.setdefault("engine_args", ENGINE_ARGS)
    kw.setdefault("image", default_image)
    return ContainerExecutor(engine="podman", scope=box["state"], **kw)


def spec_for(box, script: str, *, grace=0.5, env=None, **step) -> StepSpec:
    base = {"PATH": PATH, "HOME": str(box["home"]), "TMPDIR": str(box["tmp"])}
    return StepSpec(
        step=PlanStep(index=3, name="step", script=script, **step),
        workdir=box["ws"],
        env={**base, **(env or {})},
        script_dir=box["scripts"],
        grace=grace,
    )


def run(box, image, script: str, *, cancel=None, ex_kw=None, **kw):
    sink = Sink()
    ex = executor(box, image, **(ex_kw or {}))
    start = time.monotonic()
    result = ex.run(spec_for(box, script, **kw), sink, cancel or CancelToken())
    return result, sink, time.monotonic() - start


def test_environment_cwd_mounts_and_exit_codes(box, image):
    env = {"GREETING": "hello world", "MULTI": "line one\nline two", "ODD": " =x= "}
    script = (
        'echo "$GREETING|$ODD|$HOME|$TMPDIR"; printf "%s\\n" "$MULTI"; pwd\n'
        "env | grep = | cut -d= -f1 | sort | tr '\\n' ' '; echo\n"
        'echo built > out.txt; echo cached > "$HOME/h.txt"; touch "$TMPDIR/t"\n'
        "exit 3"
    )
    result, sink, _ = run(box, image, script, env=env)
    assert (result.state, result.failure, result.exit_code) == (
        StepState.FAILURE,
        FailureKind.EXIT,
        3,
    )
    assert result.reason == "exit code 3"
    lines = sink.text.splitlines()
    assert lines[0] == f"hello world| =x= |{box['home']}|{box['tmp']}"
    assert lines[1:3] == ["line one", "line two"]
    assert lines[3] == str(box["ws"])
    # Exactly the given environment: nothing from the image or the engine (TERM,
    # container=podman) but what a shell sets itself and the container's HOSTNAME.
    assert set(lines[4].split()) == {
        "GREETING", "MULTI", "ODD", "PATH", "HOME", "TMPDIR", "PWD", "SHLVL", "HOSTNAME",
    }  # fmt: skip
    assert (box["ws"] / "out.txt").read_text() == "built\n"
    assert (box["home"] / "h.txt").read_text() == "cached\n"
    assert (box["tmp"] / "t").exists()
    assert containers(box["state"]) == []
    assert list(box["scripts"].iterdir()) == []  # script and env file removed

    ok, sink, _ = run(box, image, "cat out.txt")
    assert (ok.state, ok.exit_code, ok.failure, sink.text) == (
        StepState.SUCCESS,
        0,
        None,
        "built\n",
    )


def test_output_is_streamed_while_the_step_runs(box, image):
    result, sink, took = run(box, image, "echo first; sleep 1; echo second")
    assert result.state is StepState.SUCCESS
    assert sink.text == "first\nsecond\n"
    ended = time.monotonic()
    assert ended - sink.first_write >= 0.9, "the first line came only at the end"


CGROUPS = Path("/sys/fs/cgroup")
BURN = "i=0; while [ $i -lt 150000 ]; do i=$((i+1)); done"  # about 0.3 s of CPU


def step_cgroups() -> list[Path]:
    """This process's container step cgroups (other test processes run steps too)."""
    return sorted(CGROUPS.glob(f"*/ciwatch-ct-{os.getpid()}-*"))


def test_cpu_time_and_peak_memory_of_a_container_step(box, image):
    # The container's start (runc's init, conmon) is counted too: compared with `true`.
    idle, _, _ = run(box, image, "true")
    burn, _, _ = run(box, image, BURN)
    big, _, _ = run(box, image, "head -c 50000000 /dev/zero | tail > /dev/null")
    assert all(r.state is StepState.SUCCESS for r in (idle, burn, big))
    assert idle.cpu_seconds is not None and idle.max_rss_kib is not None, "not measured"
    assert burn.cpu_seconds > 0.2 and burn.cpu_seconds > idle.cpu_seconds + 0.15
    assert big.max_rss_kib > 40_000 > idle.max_rss_kib
    assert step_cgroups() == [], "a step's cgroup was left behind"


def test_limits_hold_and_are_measured_under_the_step_cgroup(box, image):
    script = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"
    result, sink, _ = run(box, image, script, resources=Resources(memory_bytes=32 << 20))
    assert "memory limit 32 MiB" in result.reason and "survived" not in sink.text
    assert 20_000 < result.max_rss_kib <= 32 * 1024 + 16 * 1024  # the limit, plus conmon
    assert step_cgroups() == []


def test_no_cgroup_to_make_means_not_measured_not_failed(box, image, tmp_path):
    nowhere = {"cpuacct": tmp_path / "none", "memory": tmp_path / "none"}
    for mounts in (None, {}, nowhere):
        ex_kw = {"cgroup_mounts": lambda m=mounts: m}
        result, sink, _ = run(box, image, "echo ran", ex_kw=ex_kw)
        assert result.state is StepState.SUCCESS and sink.text == "ran\n"
        assert (result.cpu_seconds, result.max_rss_kib) == (None, None)


def test_step_cgroups_of_a_dead_ciwatch_are_removed(box, image):
    gone = subprocess.Popen(["true"])
    gone.wait()
    left = [CGROUPS / c / f"ciwatch-ct-{gone.pid}-0" for c in ("cpuacct", "memory", "pids")]
    for path in left:
        (path / "conmon").mkdir(parents=True)
    try:
        result, _, _ = run(box, image, "true")
        assert result.state is StepState.SUCCESS
        assert [p for p in left if p.exists()] == []
    finally:
        for path in left:
            for d in (path / "conmon", path):
                if d.exists():
                    d.rmdir()


def test_timeout_stops_the_step_and_leaves_no_container(box, image):
    result, sink, took = run(box, image, "echo started; sleep 30", timeout=1.0)
    assert (result.state, result.failure) == (StepState.FAILURE, FailureKind.TIMEOUT)
    assert result.reason == "timed out after 1s (SIGTERM)"
    assert sink.notes == ["timed out after 1s: sending SIGTERM to the step's processes"]
    assert "started" in sink.text
    assert took < 6
    assert containers(box["state"]) == []


def test_a_step_ignoring_sigterm_gets_sigkill_after_the_grace(box, image):
    script = "trap '' TERM; echo ready; while :; do sleep 1; done"
    result, sink, took = run(box, image, script, timeout=1.0, grace=0.5)
    assert result.failure is FailureKind.TIMEOUT
    assert result.reason == "timed out after 1s (SIGTERM, then SIGKILL after 0.5s grace)"
    assert sink.notes[-1] == "still running 0.5s after SIGTERM: sending SIGKILL"
    assert took < 8
    assert containers(box["state"]) == []


def test_idle_timeout(box, image):
    result, _, took = run(box, image, "echo a; sleep 30", idle_timeout=1.0)
    assert result.failure is FailureKind.IDLE_TIMEOUT
    assert result.reason == "no output for 1s (idle timeout; SIGTERM)"
    assert took < 6


def test_cancel_stops_the_container(box, image):
    cancel = CancelToken()

    class CancelOnOutput(Sink):
        def write(self, data: bytes) -> None:  # the shell runs: cancel now
            super().write(data)
            cancel.cancel("superseded by app#9")

    ex = executor(box, image)
    start = time.monotonic()
    result = ex.run(spec_for(box, "echo running; sleep 30"), CancelOnOutput(), cancel)
    took = time.monotonic() - start
    assert (result.state, result.failure) == (StepState.CANCELED, FailureKind.CANCELED)
    assert result.reason == "superseded by app#9 (SIGTERM)"
    assert took < 6
    assert containers(box["state"]) == []

    early, _, _ = run(box, image, "echo never", cancel=cancel)
    assert early.state is StepState.CANCELED
    assert early.reason == "superseded by app#9 (before it started)"


def test_network_none_leaves_only_loopback(box, image):
    closed, sink, _ = run(box, image, "ls /sys/class/net", ex_kw={"network": False})
    assert closed.state is StepState.SUCCESS, sink.text
    assert sink.text.split() == ["lo"]
    opened, sink, _ = run(box, image, "ls /sys/class/net")
    assert opened.state is StepState.SUCCESS, sink.text
    assert len(sink.text.split()) > 1  # the engine's network interface too


def test_memory_limit_kill_names_the_limit(box, image):
    script = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"
    result, sink, _ = run(box, image, script, resources=Resources(memory_bytes=32 << 20))
    assert result.state is StepState.FAILURE
    assert "survived" not in sink.text
    assert "memory limit 32 MiB" in result.reason and "exceeded" in result.reason


def test_process_limit_stops_a_fork_bomb(box, image):
    # A bounded bomb (2**10 leaves at most), so that a missing limit could not
    # take the machine down with it. Forks fail while the bomb's processes hold
    # the limit (a shell whose fork fails exits): the bomb runs in a subshell,
    # and the count afterwards uses no fork.
    script = (
        "set +e; : > leaves\n"
        "b() { [ $1 -gt 0 ] || { echo >> leaves; sleep 2; return; }\n"
        "  b $(($1-1)) & b $(($1-1)) & wait; }\n"
        "(b 10)\n"
        'n=0; while read -r _; do n=$((n+1)); done < leaves; echo "leaves: $n"'
    )
    result, sink, took = run(box, image, script, timeout=20.0, resources=Resources(processes=40))
    assert result.state is StepState.SUCCESS, result.reason
    assert "can't fork" in sink.text
    leaves = int(re.search(r"leaves: (\d+)", sink.text).group(1))
    assert leaves < 40
    assert took < 15
    assert containers(box["state"]) == []


def test_open_files_and_file_size_limits(box, image):
    res = Resources(open_files=64, file_size_bytes=4096)
    result, sink, _ = run(box, image, "ulimit -n; head -c 10000 /dev/zero > big", resources=res)
    assert sink.text.startswith("64\n")
    assert result.state is StepState.FAILURE
    assert result.reason == "file size limit 4 KiB exceeded (SIGXFSZ; exit code 153)"
    assert (box["ws"] / "big").stat().st_size == 4096


def test_missing_image_is_a_clear_infra_error(box, image):
    missing = "localhost/ciwatch-no-such-image:1"
    result, sink, _ = run(box, image, "true", ex_kw={"image": missing, "pull": "never"})
    assert (result.state, result.failure) == (StepState.ERROR, FailureKind.INFRA)
    assert f"image '{missing}' is not present" in result.reason
    assert sink.notes == [result.reason]

    # The discard port: nothing answers, and podman retries for seconds.
    unreachable = "127.0.0.1:9/ciwatch/none:1"
    result, sink, took = run(box, image, "true", ex_kw={"image": unreachable, "pull_timeout": 1})
    assert (result.state, result.failure) == (StepState.ERROR, FailureKind.INFRA)
    assert result.reason == (
        f"cannot start step: cannot pull image '{unreachable}': "
        "no answer within 1s (executor.pull_timeout)"
    )
    assert sink.notes[0] == f"pulling image {unreachable}"
    assert took < 5

    for bad in ("--privileged", "debian 12"):
        result, _, _ = run(box, image, "true", ex_kw={"image": bad})
        assert result.state is StepState.ERROR and "is not an image name" in result.reason
    assert containers(box["state"]) == []


def test_no_image_anywhere_says_where_to_set_one(box, image):
    result, _, _ = run(box, image, "true", ex_kw={"image": None})
    assert result.state is StepState.ERROR
    assert "give the step an `image:` or set executor.image" in result.reason


def test_a_missing_shell_in_the_image_is_an_infra_error(box, image):
    result, _, _ = run(box, image, "true", shell=("bash", "-e"))
    assert (result.state, result.failure) == (StepState.ERROR, FailureKind.INFRA)
    assert result.reason == f"cannot start step: shell 'bash' not found in image '{image}'"


def test_engine_exit_codes_from_the_step_are_the_steps(box, image):
    result, _, _ = run(box, image, "exit 125")
    assert (result.state, result.failure, result.exit_code) == (
        StepState.FAILURE,
        FailureKind.EXIT,
        125,
    )
    result, sink, _ = run(box, image, "no-such-command")
    assert (result.failure, result.exit_code) == (FailureKind.EXIT, 127)


def test_bad_engine_arguments_are_an_infra_error(box, image):
    result, sink, _ = run(box, image, "true", ex_kw={"engine_args": ("--no-such-flag",)})
    assert (result.state, result.failure) == (StepState.ERROR, FailureKind.INFRA)
    assert "podman could not run the container" in result.reason
    assert "no-such-flag" in result.reason


def test_secrets_never_reach_a_command_line(box, image):
    secret = "s3cr3t-" + os.urandom(6).hex()
    env = {"TOKEN": secret, "KEY": f"-----BEGIN-----\n{secret}\n-----END-----"}
    seen: dict[str, object] = {"cmdlines": 0, "leaks": [], "modes": set()}
    done = threading.Event()

    def watch():
        while not done.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                seen["cmdlines"] += 1
                if secret.encode() in cmdline:
                    seen["leaks"].append(cmdline)
            if box["scripts"].is_dir():
                for f in box["scripts"].glob("*.env"):
                    try:
                        seen["modes"].add(f.stat().st_mode & 0o777)
                    except OSError:
                        pass
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result, sink, _ = run(
            box, image, 'sleep 1; [ "$TOKEN" = "${KEY#*$TOKEN}" ] || echo ok', env=env
        )
    finally:
        done.set()
        watcher.join()
    assert result.state is StepState.SUCCESS and sink.text == "ok\n"
    assert seen["leaks"] == []
    assert seen["modes"] == {0o600}


def test_leftovers_of_dead_owners_are_removed_and_others_kept(box, image):
    scope = scope_of(box["state"])
    tag = os.urandom(3).hex()
    names = [f"ciwatch-test-{what}-{tag}" for what in ("dead", "live", "other")]
    try:
        start_leftover(image, names[0], scope, dead_owner())
        start_leftover(image, names[1], scope, owner_of(os.getpid()))
        start_leftover(image, names[2], "another-installation", dead_owner())
        engine = find_engine("podman")
        assert remove_leftovers(engine, scope) == [names[0]]
        assert len(containers(box["state"])) == 1  # the live owner's
        assert remove_leftovers(engine, scope) == []
    finally:
        remove_containers(*names)


def test_engine_not_found_is_a_clear_error(box, image):
    with pytest.raises(ExecutorError, match="install podman"):
        find_engine(None, {"PATH": str(box["tmp"])})
    ex = ContainerExecutor(image=image, scope=box["state"], engine_env={"PATH": str(box["tmp"])})
    result = ex.run(spec_for(box, "true"), Sink(), CancelToken())
    assert (result.state, result.failure) == (StepState.ERROR, FailureKind.INFRA)
    assert "container engine not found" in result.reason and "install podman" in result.reason
    assert ex.sweep() == []  # nothing to do, nothing raised


def test_config_errors_say_what_and_where(tmp_path):
    path = tmp_path / "ciwatch.yaml"
    path.write_text(
        "executor:\n  kind: container\n  image: '--privileged'\n  pull: sometimes\n"
        "  engine: lxc\n  pull_timeout: soon\n"
    )
    with pytest.raises(ConfigError) as err:
        read_config(path)
    said = str(err.value)
    assert f"{path}:3: executor.image: '--privileged' is not an image name" in said
    assert f"{path}:4: executor.pull: expected 'never', 'missing' or 'always'" in said
    assert f"{path}:5: executor.engine: expected 'podman' or 'docker'" in said
    assert f"{path}:6: executor.pull_timeout: 'soon' is not a duration" in said
