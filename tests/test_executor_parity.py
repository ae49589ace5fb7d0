"""One pipeline, three executors: `process`, `sandbox` and `container` give the
same step states, exit codes, reasons and output. Real runner, real store, real
git, real sh, bubblewrap and podman (with a locally imported busybox image)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from containerimage import ENGINE_ARGS, busybox_image, containers
from gitutil import make_repo

from ciwatch.executors.container import ContainerExecutor
from ciwatch.executors.process import ProcessExecutor
from ciwatch.executors.sandbox import SandboxExecutor, check_sandbox
from ciwatch.logread import LineKind, read_log
from ciwatch.model import Event, EventKind, RunState
from ciwatch.runner import Runner, RunnerSettings
from ciwatch.store import Store
from ciwatch.workspace import Mirrors, local_repo_info

ROOT = Path(__file__).resolve().parent.parent

PIPELINE = """
env: {GREETING: hello}
steps:
  - name: env
    env: {WHO: step}
    run: |
      echo "greeting=$GREETING who=$WHO step=$CIWATCH_STEP"
      [ "$PWD" = "$CIWATCH_WORKSPACE" ] && echo cwd=workspace
      [ -w "$HOME" ] && [ -w "$TMPDIR" ] && echo home+tmp writable
      echo "secret-of-the-daemon=${SECRET_OF_THE_DAEMON:-unset}"
  - name: write
    run: mkdir -p out && echo made-by-write > out/file.txt
  - name: read
    run: cat out/file.txt
  - name: flaky
    allow_failure: true
    run: echo failing; exit 4
  - name: slow
    timeout: 3s  # room for a container to start on a busy machine before it prints
    allow_failure: true
    run: echo before-timeout; sleep 30
  - name: signal
    allow_failure: true
    run: echo dying; kill -KILL $$
  - name: broken
    run: echo last words >&2; exit 2
  - name: skipped
    run: echo SHOULD-NOT-RUN
  - name: cleanup
    when: {status: [failure]}
    run: echo cleanup-ran; ls out
"""


def run_pipeline(tmp_path: Path, make_executor) -> tuple[RunState, list[tuple]]:
    src = tmp_path / "src"
    state = tmp_path / "state"
    sha = make_repo(src, {".ciwatch.yml": PIPELINE})
    store = Store.open(state / "ciwatch.db")
    try:
        url, _, _ = local_repo_info(src)
        store.ensure_repo("app", url)
        run, _ = store.submit(
            Event(repo="app", kind=EventKind.PUSH, ref="refs/heads/main", sha=sha)
        )
        runner = Runner(
            store=store,
            mirrors=Mirrors(state),
            executor=make_executor(state),
            state_dir=state,
            settings=RunnerSettings(grace=0.5),
            secrets={},
            host_env={"PATH": "/usr/bin:/bin", "SECRET_OF_THE_DAEMON": "x"},
        )
        final = runner.execute(run.id, worker="parity")
        steps = []
        for s in sorted(store.steps(run.id), key=lambda s: s.index):
            r = s.result
            output = b""
            if s.log_path and Path(s.log_path).exists():
                for line in read_log(Path(s.log_path)):
                    if line.kind is LineKind.OUTPUT:
                        output += line.data + (b"\n" if line.newline else b"")
            steps.append((s.name, r.state.value, r.exit_code, r.reason, r.allowed_failure, output))
        return final.state, steps
    finally:
        store.close()


def process(state: Path):
    return ProcessExecutor()


def sandbox(state: Path):
    return SandboxExecutor(hide=[state])


def container(state: Path):
    return ContainerExecutor(
        engine="podman", image=busybox_image(), engine_args=ENGINE_ARGS, scope=state
    )


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return run_pipeline(tmp_path_factory.mktemp("process"), process)


def test_the_process_executor_gives_the_expected_results(baseline):
    state, steps = baseline
    assert state is RunState.FAILURE
    got = {name: (st, code, reason, allowed) for name, st, code, reason, allowed, _ in steps}
    assert got == {
        "env": ("success", 0, "", False),
        "write": ("success", 0, "", False),
        "read": ("success", 0, "", False),
        "flaky": ("failure", 4, "exit code 4", True),
        "slow": ("failure", None, "timed out after 3s (SIGTERM)", True),
        "signal": ("failure", None, "killed by signal SIGKILL", True),
        "broken": ("failure", 2, "exit code 2", False),
        "skipped": ("skipped", None, got["skipped"][2], False),
        "cleanup": ("success", 0, "", False),
    }
    outputs = {name: out for name, *_, out in steps}
    assert outputs["env"] == (
        b"greeting=hello who=step step=env\ncwd=workspace\nhome+tmp writable\n"
        b"secret-of-the-daemon=unset\n"
    )
    assert outputs["read"] == b"made-by-write\n"
    assert outputs["cleanup"] == b"cleanup-ran\nfile.txt\n"


# What differs by design (docs/configuration.md): a shell killed by a signal is
# reported by the sandbox's and the container's init as exit code 128+N.
SIGNAL_AS_EXIT = ("failure", 137, "exit code 137", True)


@pytest.mark.parametrize("make", [sandbox, container], ids=["sandbox", "container"])
def test_sandbox_and_container_give_the_same_results(tmp_path, baseline, make):
    if make is sandbox:
        check_sandbox()
    state, steps = run_pipeline(tmp_path, make)
    expected = [
        (name, *(SIGNAL_AS_EXIT if name == "signal" else (st, code, reason, allowed)), out)
        for name, st, code, reason, allowed, out in baseline[1]
    ]
    assert (state, steps) == (baseline[0], expected)
    if make is container:
        assert containers(tmp_path / "state") == []


def test_ciwatch_run_with_a_container_executor_config(tmp_path):
    """The composition root: `executor: {kind: container}` in the config file."""
    repo = tmp_path / "app"
    make_repo(
        repo,
        {
            ".ciwatch.yml": "steps:\n  - name: hi\n    run: echo inside; cat /etc/os-release || echo no-os-release\n"
        },
    )
    config = tmp_path / "ciwatch.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "executor": {
                    "kind": "container",
                    "engine": "podman",
                    "image": busybox_image(),
                    "engine_args": list(ENGINE_ARGS),
                    "pull": "never",
                },
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CIWATCH_CONFIG", None)
    out = subprocess.run(
        [sys.executable, "-m", "ciwatch", "run", str(repo), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "inside" in out.stdout and "no-os-release" in out.stdout  # busybox, not the host
