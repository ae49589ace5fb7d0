"""Per-step resource limits against real processes, real cgroups and real bubblewrap.

Every step here runs inside an outer cgroup this module makes (at most
OUTER_PROCS processes, OUTER_MEMORY of memory): even if ciwatch's own
enforcement failed, a fork bomb or an allocation could not take the machine.
The tests need a writable cgroup (root with the cgroup v1 memory and pids
hierarchies, or a delegated cgroup v2 subtree) and fail without one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from daemonutil import DaemonProc
from stepsinks import Sink, procs_with
from test_daemon_e2e import install_hook, push, setup_repo

from ciwatch.config import parse_config
from ciwatch.errors import ConfigError
from ciwatch.executors import cgroups
from ciwatch.executors.base import CancelToken, StepSpec
from ciwatch.executors.process import ProcessExecutor
from ciwatch.executors.sandbox import SandboxExecutor, check_sandbox
from ciwatch.model import FailureKind, RunState, StepResult, StepState
from ciwatch.pipeline.plan import PlanStep, Resources
from ciwatch.pipeline.resources import ResourcesSpec

PATH = "/usr/local/bin:/usr/bin:/bin"
OUTER_PROCS = 400
OUTER_MEMORY = 2 << 30
MiB = 1 << 20


@pytest.fixture(scope="module")
def outer() -> cgroups.Hierarchy:
    """An outer cgroup every step of this module runs below; removed at the end."""
    found = cgroups.find()
    assert found is not None and found.memory and found.pids, (
        "no writable memory and pids cgroup: these tests need root with the cgroup v1 "
        "memory and pids hierarchies mounted, or a delegated cgroup v2 subtree"
    )
    check_sandbox()  # bubblewrap must work for the sandbox half
    name = f"ciwatch-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    memory, pids = found.memory / name, found.pids / name
    for d in dict.fromkeys((memory, pids)):
        d.mkdir()
    box = cgroups.StepCgroup(found.version, memory, pids)
    box.limit(OUTER_MEMORY, OUTER_PROCS)
    yield cgroups.Hierarchy(found.version, memory, pids)
    assert box.remove() == ""


def process(outer):
    return ProcessExecutor(cgroups=outer)


def sandbox(outer):
    return SandboxExecutor(cgroups=outer)


EXECUTORS = [pytest.param(process, id="process"), pytest.param(sandbox, id="sandbox")]


def run(executor, tmp_path: Path, script: str, timeout: float = 30, **resources) -> Outcome:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    spec = StepSpec(
        step=PlanStep(
            index=0,
            name="step",
            script=script,
            timeout=timeout,
            resources=ResourcesSpec(**resources).resources(),  # keys as in a pipeline file
        ),
        workdir=ws,
        env={"PATH": PATH},
        script_dir=tmp_path / "scripts",
        grace=0.5,
    )
    sink = Sink()
    start = time.monotonic()
    result = executor.run(spec, sink, CancelToken())
    return Outcome(result, sink, time.monotonic() - start, ws)


class Outcome:
    def __init__(self, result: StepResult, sink: Sink, seconds: float, ws: Path) -> None:
        self.result, self.sink, self.seconds, self.ws = result, sink, seconds, ws

    @property
    def reason(self) -> str:
        return self.result.reason


def step_cgroups(outer: cgroups.Hierarchy) -> list[str]:
    return sorted(
        name
        for d in dict.fromkeys((outer.memory, outer.pids))
        for name in os.listdir(d)
        if name.startswith(cgroups.PREFIX)
    )


@pytest.fixture
def clean(outer):
    """Fails the test if a step cgroup is left behind."""
    yield
    assert step_cgroups(outer) == []


# -- processes -------------------------------------------------------------------


@pytest.mark.parametrize("make", EXECUTORS)
def test_a_fork_bomb_is_stopped_at_the_process_limit(make, outer, tmp_path, marker, clean):
    # Unbounded by itself: every process starts a sleeper and two more of itself.
    bomb = f"bomb() {{ sleep {marker} & bomb & bomb; }}\nbomb"
    out = run(make(outer), tmp_path, bomb, processes=50)
    assert out.result.state is StepState.FAILURE
    assert out.reason.startswith("process limit 50 reached (fork failed"), out.reason
    assert out.seconds < 25  # well before its 30s timeout
    assert procs_with(marker) == []  # nothing the bomb started is left


@pytest.mark.parametrize("make", EXECUTORS)
def test_processes_up_to_the_limit_run(make, outer, tmp_path, marker, clean):
    out = run(
        make(outer),
        tmp_path,
        f'for i in $(seq 20); do sleep {marker} & p="$p $!"; done\nkill $p\necho started',
        processes=50,
    )
    assert out.result.state is StepState.SUCCESS, out.reason
    assert "started" in out.sink.text


def test_a_fork_bomb_leaves_other_steps_alone(outer, tmp_path, marker, clean):
    bomb = f"bomb() {{ sleep {marker} & bomb & bomb; }}\nbomb"
    results: dict[str, Outcome] = {}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    bomber = threading.Thread(
        target=lambda: results.update(bomb=run(process(outer), tmp_path / "a", bomb, processes=40))
    )
    bomber.start()
    time.sleep(0.2)  # the bomb is at its limit by now
    # Another step at the same time forks freely: 100 processes, more than the bomb's limit.
    results["other"] = run(
        process(outer),
        tmp_path / "b",
        "for i in $(seq 100); do sleep 2 & done\nwait\necho all forked",
    )
    bomber.join(30)
    assert results["other"].result.state is StepState.SUCCESS, results["other"].reason
    assert "all forked" in results["other"].sink.text
    assert results["bomb"].reason.startswith("process limit 40 reached")


# -- memory ------------------------------------------------------------------------

ALLOCATE = (
    'python3 -c \'b = bytearray({size}); b[::4096] = b"x" * len(b[::4096]); print("survived")\''
)


@pytest.mark.parametrize("make", EXECUTORS)
def test_an_allocation_past_the_memory_limit_is_killed(make, outer, tmp_path, clean):
    out = run(make(outer), tmp_path, ALLOCATE.format(size=200 * MiB), memory=64 * MiB)
    assert out.result.state is StepState.FAILURE
    assert out.reason.startswith("killed: memory limit 64 MiB exceeded ("), out.reason
    assert "survived" not in out.sink.text
    assert out.result.max_rss_kib is not None and out.result.max_rss_kib <= 64 * 1024


@pytest.mark.parametrize("make", EXECUTORS)
def test_a_shell_allocation_past_the_memory_limit_is_killed(make, outer, tmp_path, clean):
    # The shell itself holds 100 MB in a variable.
    script = "x=$(head -c 100000000 /dev/zero | tr '\\0' a)\necho ${#x}"
    out = run(make(outer), tmp_path, script, memory=32 * MiB)
    assert out.result.state is StepState.FAILURE
    assert "memory limit 32 MiB exceeded" in out.reason


def test_peak_memory_is_the_cgroups_and_a_step_under_the_limit_passes(outer, tmp_path, clean):
    out = run(process(outer), tmp_path, ALLOCATE.format(size=100 * MiB), memory=300 * MiB)
    assert out.result.state is StepState.SUCCESS, out.reason
    assert 100 * 1024 <= out.result.max_rss_kib < 300 * 1024


def test_a_killed_child_in_a_passing_step_is_told(outer, tmp_path, clean):
    script = ALLOCATE.format(size=200 * MiB) + " || echo 'the allocation failed'"
    out = run(process(outer), tmp_path, script, memory=64 * MiB)
    assert out.result.state is StepState.SUCCESS
    assert "a process of the step was killed: memory limit 64 MiB exceeded" in out.sink.notes


# -- CPU time, file size, open files --------------------------------------------------


@pytest.mark.parametrize("make", EXECUTORS)
def test_a_busy_loop_past_the_cpu_time_limit_is_killed(make, outer, tmp_path, clean):
    out = run(make(outer), tmp_path, "while :; do :; done", cpu_time=1)
    assert out.result.state is StepState.FAILURE
    # (not a wall-clock bound: on a loaded machine one CPU second takes longer)
    assert out.reason.startswith("CPU time limit 1s exceeded (SIGXCPU"), out.reason
    assert out.result.cpu_seconds < 3


@pytest.mark.parametrize("make", EXECUTORS)
def test_a_file_past_the_file_size_limit_is_stopped(make, outer, tmp_path, clean):
    out = run(make(outer), tmp_path, "dd if=/dev/zero of=big bs=64k count=100", file_size=MiB)
    assert out.result.state is StepState.FAILURE
    assert out.reason.startswith("file size limit 1 MiB exceeded (SIGXFSZ"), out.reason
    assert (out.ws / "big").stat().st_size <= MiB


@pytest.mark.parametrize("make", EXECUTORS)
def test_the_open_files_limit_is_what_the_step_sees(make, outer, tmp_path, clean):
    out = run(make(outer), tmp_path, "ulimit -n\nulimit -Hn\nulimit -n 1000", open_files=20)
    assert out.sink.text.splitlines()[:2] == ["20", "20"]
    assert out.result.state is StepState.FAILURE  # it cannot raise its own limit


@pytest.mark.parametrize("make", EXECUTORS)
def test_a_step_without_limits_gets_none(make, outer, tmp_path, clean):
    out = run(make(outer), tmp_path, "ulimit -n; ulimit -f; ulimit -t")
    assert out.result.state is StepState.SUCCESS, out.reason
    assert out.sink.text.splitlines()[1:] == ["unlimited", "unlimited"]


# -- without cgroups -----------------------------------------------------------------


def test_without_a_cgroup_memory_is_an_address_space_limit(tmp_path):
    out = run(
        ProcessExecutor(cgroups=None), tmp_path, ALLOCATE.format(size=200 * MiB), memory=64 * MiB
    )
    assert out.result.state is StepState.FAILURE
    assert "MemoryError" in out.sink.text
    assert any("enforced as an address-space limit" in n for n in out.sink.notes)


def test_without_a_cgroup_a_process_limit_is_refused(tmp_path, marker):
    out = run(ProcessExecutor(cgroups=None), tmp_path, f"sleep {marker}", processes=50)
    assert (out.result.state, out.result.failure) == (StepState.ERROR, FailureKind.INFRA)
    assert "process limit 50 cannot be enforced here: no writable pids cgroup" in out.reason
    assert procs_with(marker) == []


# -- cgroup housekeeping -------------------------------------------------------------


def test_a_cgroup_left_by_a_dead_process_is_removed(outer, tmp_path, clean):
    dead = 2**22 + 1  # above any pid_max: no such process
    for d in dict.fromkeys((outer.memory, outer.pids)):
        (d / f"{cgroups.PREFIX}{dead}-0").mkdir()
    assert run(process(outer), tmp_path, "true").result.state is StepState.SUCCESS


def test_removing_a_cgroup_kills_what_is_still_in_it(outer, marker):
    made = cgroups.create(outer, os.getpid(), 1000)
    procs = made.pids / "cgroup.procs"
    # A process in the step's cgroup that no supervisor knows of.
    proc = subprocess.Popen(["sh", "-c", f'echo $$ > "{procs}" && exec sleep {marker}'])
    wait_until(lambda: procs.read_text().strip())
    assert made.remove() == ""
    assert proc.wait(5) == -signal.SIGKILL
    assert not made.pids.exists() and not made.memory.exists()


def wait_until(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_find_reads_v1_and_v2_layouts(tmp_path):
    def fake(mountinfo: str, cgroup: str) -> Path:
        proc = tmp_path / str(uuid.uuid4())
        (proc / "self").mkdir(parents=True)
        (proc / "self" / "mountinfo").write_text(mountinfo)
        (proc / "self" / "cgroup").write_text(cgroup)
        return proc

    mem, pids = tmp_path / "mem", tmp_path / "pids"
    for d in (mem / "b", pids):
        d.mkdir(parents=True)
        (d / "cgroup.procs").write_text("")
    # A container sees its own cgroup as the mount's root ("/a" here).
    v1 = fake(
        f"30 20 0:26 /a {mem} rw - cgroup cgroup rw,memory\n"
        f"31 20 0:27 / {pids} rw - cgroup cgroup rw,pids\n",
        "4:memory:/a/b\n8:pids:/\n0::/\n",
    )
    assert cgroups.find(v1) == cgroups.Hierarchy(1, mem / "b", pids)
    # v2 without delegation of the parent: nowhere.
    unified = tmp_path / "unified"
    (unified / "svc" / "main").mkdir(parents=True)
    (unified / "svc" / "cgroup.controllers").write_text("cpu memory pids\n")
    v2 = fake(f"40 20 0:30 / {unified} rw - cgroup2 cgroup2 rw\n", "0::/svc/main\n")
    assert cgroups.find(v2) is None
    # Delegated (systemd marks it so): step cgroups go next to ciwatch's own leaf.
    os.setxattr(unified / "svc", "user.delegate", b"1")
    assert cgroups.find(v2) == cgroups.Hierarchy(2, unified / "svc", unified / "svc")


def test_a_daemon_in_a_delegated_v2_cgroup_moves_into_a_leaf(tmp_path):
    """systemd before 254 has no DelegateSubgroup=: the daemon makes its own leaf so
    step cgroups can be made beside it (then `find` sees the delegated parent)."""
    unified = tmp_path / "unified"
    svc = unified / "system.slice" / "ciwatch.service"
    (svc / "daemon").mkdir(parents=True)
    (svc / "daemon" / "cgroup.procs").write_text("")  # the kernel makes it in a real tree
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(f"40 20 0:30 / {unified} rw - cgroup2 cgroup2 rw\n")
    (proc / "self" / "cgroup").write_text("0::/system.slice/ciwatch.service\n")
    assert cgroups.enter_leaf(proc) is None  # not delegated: left alone
    os.setxattr(svc, "user.delegate", b"1")
    assert cgroups.enter_leaf(proc) == svc / "daemon"
    assert (svc / "daemon" / "cgroup.procs").read_text() == str(os.getpid())
    (proc / "self" / "cgroup").write_text("0::/system.slice/ciwatch.service/daemon\n")
    assert cgroups.enter_leaf(proc) is None  # already in its leaf


def test_v2_files(tmp_path):
    """The v2 file protocol (a real v2 tree needs a machine on it): limits written, and
    peak, OOM kills and refused forks read back."""
    group = tmp_path / "step"
    group.mkdir()
    for name in ("memory.max", "memory.swap.max", "memory.oom.group", "pids.max"):
        (group / name).write_text("")
    (group / "memory.peak").write_text("1048576\n")
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (group / "pids.events").write_text("max 7\n")
    step = cgroups.StepCgroup(2, group, group)
    step.limit(64 * MiB, 50)
    written = {n: (group / n).read_text() for n in ("memory.max", "memory.swap.max", "pids.max")}
    assert written == {"memory.max": str(64 * MiB), "memory.swap.max": "0", "pids.max": "50"}
    assert (group / "memory.oom.group").read_text() == "1"
    assert step.usage() == cgroups.Usage(peak_bytes=MiB, oom_kills=1, fork_failures=7)
    assert step.procs_files == (group / "cgroup.procs",)


# -- operator maxima -----------------------------------------------------------------


def test_config_limits_become_pipeline_limits():
    config = parse_config(
        b"limits:\n  step: {memory: 4G, processes: 512, cpu_time: 1h}\n"
        b"  step_defaults: {memory: 1G, open_files: 1024}\n",
        "ciwatch.yaml",
    )
    limits = config.limits.pipeline_limits()
    assert limits.max_resources == Resources(
        memory_bytes=4 << 30, processes=512, cpu_seconds=3600.0
    )
    assert limits.default_resources == Resources(memory_bytes=1 << 30, open_files=1024)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            b"limits:\n  step: {memory: 1G}\n  step_defaults: {memory: 2G}\n",
            "step_defaults.memory (2 GiB) is more than step.memory (1 GiB), the maximum",
        ),
        (
            b"limits:\n  step: {memory: lots}\n",
            "ciwatch.yaml:2: limits.step.memory: expected a size like",
        ),
        (
            b"limits:\n  step: {procs: 5}\n",
            "ciwatch.yaml:2: limits.step.procs: unknown key 'procs'; did you mean 'processes'?",
        ),
    ],
)
def test_bad_config_limits_are_refused_with_where(text, message):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "ciwatch.yaml")
    assert message in str(info.value)


# -- the daemon ----------------------------------------------------------------------


@contextlib.contextmanager
def inside(hierarchy: cgroups.Hierarchy):
    """This process in `hierarchy`'s cgroups while the block runs: what it starts
    there stays there (and makes its step cgroups below them)."""
    me = str(os.getpid())
    dirs = dict.fromkeys((hierarchy.memory, hierarchy.pids))
    # The outer cgroup was made in this process's own cgroup (v1), or next to it (v2).
    leaf = Path("/proc/self/cgroup").read_text().splitlines()[-1].rpartition("/")[2]
    back = [d.parent if hierarchy.version == 1 else d.parent / leaf for d in dirs]
    for d in dirs:
        (d / "cgroup.procs").write_text(me)
    try:
        yield
    finally:
        for b in back:
            (b / "cgroup.procs").write_text(me)


def test_the_daemon_and_other_runs_survive_a_pipeline_that_hits_its_limits(
    outer, tmp_path, marker, clean
):
    hog = ALLOCATE.format(size=300 * MiB)
    pipeline = (
        "resources: {memory: 64M}\n"
        "steps:\n"
        "  - name: bomb\n"
        f"    run: 'bomb() {{ sleep {marker} & bomb & bomb; }}; bomb'\n"
        "    resources: {processes: 30}\n"
        "    allow_failure: true\n"
        "  - name: hog\n"
        f"    run: {json.dumps(hog)}\n"
    )
    bad, bad_work = setup_repo(tmp_path, pipeline, "app")
    good, good_work = setup_repo(tmp_path, "steps:\n  - run: echo fine\n", "other")
    d = DaemonProc(
        tmp_path,
        {
            "concurrency": 2,
            "limits": {"step": {"memory": "1G", "processes": 100}},
            "repos": [{"name": "app", "path": str(bad)}, {"name": "other", "path": str(good)}],
        },
    )
    install_hook(d, bad, "app")
    install_hook(d, good, "other")
    with inside(outer):
        d.start()
    try:
        push(bad_work, bad)
        push(good_work, good)
        runs = {r.repo: r for r in d.wait_runs_finished(2, timeout=60)}
        assert runs["other"].state is RunState.SUCCESS
        assert runs["app"].state is RunState.FAILURE
        store = d.store()
        try:
            steps = {s.name: s.result for s in store.steps(runs["app"].id)}
        finally:
            store.close()
        assert steps["bomb"].reason.startswith("process limit 30 reached (fork failed"), steps
        assert steps["hog"].reason.startswith("killed: memory limit 64 MiB exceeded"), steps
        assert steps["hog"].max_rss_kib <= 64 * 1024
        assert d.proc.poll() is None  # the daemon is still up
        wait_until(lambda: procs_with(marker) == [])
    finally:
        assert d.stop() == 0, d.log.read_text()[-3000:]
