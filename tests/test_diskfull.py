"""A full disk under a real `ciwatch serve`: small tmpfs mounts as the
workspace root or the log dir (RELIABILITY.md H1, H2, H4). Runs fail with a
clear reason, nothing is left behind, the daemon goes on, and while free
space is under the configured minimum runs wait and the operator is told."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from daemonutil import DaemonProc, wait_for
from test_daemon_e2e import install_hook, push, setup_repo

from ciwatch.model import RunState

FILL = "steps:\n  - name: fill\n    run: head -c 20000000 /dev/zero > fill.bin\n"
SMALL = "steps:\n  - name: hello\n    run: echo hello from $CIWATCH_REPO\n"


@pytest.fixture
def tmpfs():
    """mount_at(path, size): a tmpfs there, unmounted after the test."""
    points: list[Path] = []

    def mount_at(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, (
            f"mounting a {size} tmpfs at {path} failed ({done.stderr.strip()}): "
            "the disk-full tests need root (or CAP_SYS_ADMIN)"
        )
        points.append(path)
        return path

    yield mount_at
    for p in reversed(points):
        if subprocess.run(["umount", str(p)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(p)], check=True)


def fill_up(path: Path) -> Path:
    """Write `path` until the filesystem says it is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    chunk = b"\0" * (1 << 16)
    try:
        while True:
            os.write(fd, chunk)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return path


def files_under(root: Path) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


def step_log(d: DaemonProc, run_id: int) -> str:
    s = d.store()
    try:
        return "\n".join(
            Path(step.log_path).read_text(errors="replace") for step in s.steps(run_id)
        )
    finally:
        s.close()


def run_of(d: DaemonProc, repo: str, n: int):
    return wait_for(
        lambda: next((r for r in d.runs(repo) if r.number == n and r.state.finished), None),
        60,
        0.1,
        what=f"{repo}#{n} to finish\n{d.log.read_text()[-3000:]}",
    )


def reconfigure(d: DaemonProc, changes: dict) -> None:
    """Merge `changes` into the daemon's config file and reload it (SIGHUP)."""
    config = yaml.safe_load(d.config_path.read_text())
    for key, value in changes.items():
        config[key] = {**config.get(key, {}), **value}
    d.config_path.write_text(yaml.safe_dump(config))
    before = d.log.read_text().count("configuration reloaded")
    d.signal(signal.SIGHUP)
    wait_for(
        lambda: d.log.read_text().count("configuration reloaded") > before, 10, what="the reload"
    )


def test_a_step_that_fills_the_disk_fails_its_run_and_the_daemon_goes_on(tmp_path, tmpfs):
    big, big_work = setup_repo(tmp_path, FILL, "big")
    small, small_work = setup_repo(tmp_path, SMALL, "small")
    d = DaemonProc(
        tmp_path,
        {
            # Failed runs' workspaces are kept (the default), but not one that left
            # its filesystem under the minimum.
            "daemon": {"min_free_space": "1M"},
            "repos": [{"name": "big", "path": str(big)}, {"name": "small", "path": str(small)}],
        },
    )
    ws_root = tmpfs(d.state / "workspaces", "5M")
    install_hook(d, big, "big")
    install_hook(d, small, "small")
    d.start()
    try:
        push(big_work, big)
        run = run_of(d, "big", 1)
        assert run.state is RunState.FAILURE, run
        assert "No space left on device" in step_log(d, run.id)
        assert files_under(ws_root) == []  # its workspace is gone: the space is back

        push(small_work, small)  # another repository is served as before
        assert run_of(d, "small", 1).state is RunState.SUCCESS

        push(big_work, big, files={".ciwatch.yml": FILL.replace("20000000", "1000000")})
        assert run_of(d, "big", 2).state is RunState.SUCCESS  # once it fits, it runs
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0, d.log.read_text()[-3000:]


def test_no_space_for_the_checkout_then_a_minimum_holds_runs_until_space_is_back(tmp_path, tmpfs):
    small, work = setup_repo(tmp_path, SMALL, "small")
    config = {"daemon": {"min_free_space": 0}, "repos": [{"name": "small", "path": str(small)}]}
    d = DaemonProc(tmp_path, config)
    ws_root = tmpfs(d.state / "workspaces", "5M")
    filler = fill_up(ws_root / "filler")
    install_hook(d, small, "small")
    d.start()
    try:
        # No minimum: the run starts, its checkout cannot be written, and it says why.
        push(work, small)
        run = run_of(d, "small", 1)
        assert run.state is RunState.ERROR
        assert run.reason.startswith("checkout failed: no space left on device (0 B free on"), (
            run.reason
        )
        assert files_under(ws_root) == [str(filler)]  # nothing of the attempt is left

        # With a minimum of 3 MiB (reloaded), runs wait instead, and the operator is told.
        reconfigure(d, {"daemon": {"min_free_space": "3M"}})
        push(work, small)
        wanted = f"waiting for disk space: 0 B free on {ws_root}, 3 MiB required"
        wait_for(lambda: [r.wait_reason for r in d.runs() if r.number == 2] == [wanted], 10)
        status = d.cli("status")
        assert wanted in status.stdout, status.stdout + status.stderr
        why = d.cli("why", "small", "main")
        assert wanted in why.stdout, why.stdout + why.stderr
        time.sleep(2.5)  # some scheduler ticks while it waits
        assert [r.state for r in d.runs() if r.number == 2] == [RunState.QUEUED]

        filler.unlink()  # the operator frees space: the run starts by itself
        assert run_of(d, "small", 2).state is RunState.SUCCESS
        log = d.log.read_text()
        assert log.count(f"queued runs are held back: {wanted}") == 1, log[-3000:]
        assert log.count("disk space is back above the minimum") == 1, log[-3000:]
    finally:
        assert d.stop() == 0, d.log.read_text()[-3000:]


def test_a_full_log_dir_keeps_results_and_later_runs_say_why_they_fail(tmp_path, tmpfs):
    loud = "steps:\n  - name: loud\n    run: yes 0123456789abcdef | head -n 200000\n"
    app, work = setup_repo(tmp_path, loud, "app")
    limits = {"min_free_space": 0, "min_free_state_space": 0}
    d = DaemonProc(tmp_path, {"daemon": limits, "repos": [{"name": "app", "path": str(app)}]})
    logs = tmpfs(d.state / "runs", "1M")
    install_hook(d, app, "app")
    d.start()
    try:
        push(work, app)  # 3.4 MB of output into a 1 MiB log dir
        run = run_of(d, "app", 1)
        assert run.state is RunState.SUCCESS, run  # the database is elsewhere: all recorded
        text = step_log(d, run.id)
        assert text.startswith("#ciwatch-log 1") and "0123456789abcdef" in text  # the head
        s = d.store()
        try:
            (step,) = s.steps(run.id)
        finally:
            s.close()
        assert step.result.log_truncated  # the record says the log is not whole
        assert "log incomplete" in step.result.reason and "No space left" in step.result.reason
        push(work, app, files={".ciwatch.yml": SMALL})
        run = run_of(d, "app", 2)
        assert run.state is RunState.ERROR
        assert "No space left on device" in run.reason, run.reason
        assert d.proc.poll() is None

        # With a minimum for the state's filesystems (reloaded), the next run waits.
        reconfigure(d, {"daemon": {"min_free_state_space": "512K"}})
        push(work, app)
        wanted = f"waiting for disk space: 0 B free on {logs}, 512 KiB required"
        wait_for(lambda: [r.wait_reason for r in d.runs() if r.number == 3] == [wanted], 10)
        subprocess.run(["rm", "-rf", str(logs / "1")], check=True)  # the operator frees space
        assert run_of(d, "app", 3).state is RunState.SUCCESS
    finally:
        assert d.stop() == 0, d.log.read_text()[-3000:]
