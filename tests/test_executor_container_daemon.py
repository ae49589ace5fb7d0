"""The container executor in a real `ciwatch serve`: leftover containers removed
at start, a clear refusal without an engine, and no container left after a stop.
These tests need podman, runc and busybox-static and fail without them."""

from __future__ import annotations

import os

import pytest
from containerimage import (
    ENGINE_ARGS,
    busybox_image,
    containers,
    dead_owner,
    remove_containers,
    start_leftover,
)
from daemonutil import DaemonProc, wait_for
from gitutil import commit, git, make_repo

from ciwatch.executors.engine import check_engine, find_engine, scope_of
from ciwatch.model import RunState


@pytest.fixture(scope="module")
def image() -> str:
    check_engine(find_engine("podman"))  # fails (with the fix) when podman is missing or broken
    return busybox_image()


def container_config(image: str) -> dict:
    return {
        "executor": {
            "kind": "container",
            "engine": "podman",
            "image": image,
            "engine_args": list(ENGINE_ARGS),
            "grace": "1s",
        },
        "daemon": {"shutdown_grace": "1s"},
    }


def test_the_daemon_removes_leftovers_at_start(tmp_path, image):
    daemon = DaemonProc(tmp_path, container_config(image))
    name = f"ciwatch-test-daemon-{os.urandom(3).hex()}"
    daemon.state.mkdir()
    try:
        start_leftover(image, name, scope_of(daemon.state), dead_owner())
        daemon.start()
        assert containers(daemon.state) == []
        said = daemon.log.read_text()
        assert f"removed container {name}, left by a ciwatch process that died" in said
    finally:
        daemon.stop()
        remove_containers(name)


def test_the_daemon_refuses_to_start_without_an_engine(tmp_path, image):
    empty = tmp_path / "empty-path"
    empty.mkdir()
    daemon = DaemonProc(tmp_path, {"executor": {"kind": "container", "image": image}})
    daemon.start(wait=False, env={"PATH": str(empty)})
    assert daemon.proc.wait(30) != 0
    said = daemon.log.read_text()
    assert "container engine not found (podman or docker in PATH)" in said
    assert "install podman" in said


def test_a_daemon_stop_kills_and_removes_the_running_container(tmp_path, image):
    bare, work = tmp_path / "app.git", tmp_path / "app-work"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    make_repo(work, {".ciwatch.yml": "steps:\n  - name: long\n    run: echo started; sleep 120\n"})
    git(work, "push", "-q", str(bare), "HEAD:refs/heads/main")
    config = {**container_config(image), "repos": [{"name": "app", "path": str(bare)}]}
    daemon = DaemonProc(tmp_path, config).start()
    try:
        commit(work, {"n.txt": "1"})
        git(work, "push", "-q", str(bare), "HEAD:refs/heads/main")
        wait_for(lambda: containers(daemon.state), 30, what="the step's container")
        assert daemon.stop() == 0, daemon.log.read_text()[-3000:]
        assert containers(daemon.state) == []
        [run] = daemon.runs()
        assert run.state is RunState.QUEUED  # interrupted: built again at the next start
    finally:
        daemon.stop()
