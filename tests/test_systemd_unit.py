"""The shipped systemd files, checked by systemd's own tools.

systemd-analyze, systemd-sysusers and systemd-tmpfiles come with systemd on
every box ciwatch targets (and on CI): a missing one fails these tests.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from ciwatch.config import DaemonConfig, ExecutorConfig

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD / "ciwatch.service"
SYSUSERS = SYSTEMD / "ciwatch.sysusers.conf"
TMPFILES = SYSTEMD / "ciwatch.tmpfiles.conf"

# What a build step does and a unit must never deny it.
STEP_SYSCALLS = {
    "fork", "vfork", "clone", "clone3", "execve", "execveat", "wait4", "waitid", "kill",
    "setsid", "setpgid", "prctl", "ptrace", "pipe2", "unshare", "setns", "mount",
    "pivot_root", "chroot", "mmap", "mprotect", "personality",
}  # fmt: skip


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: these checks need systemd's tools"
    return path


def run(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)


def directives(text: str) -> dict[str, list[str]]:
    """KEY -> values of the active (uncommented) lines of a unit file."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def one(d: dict[str, list[str]], key: str) -> str:
    assert len(d.get(key, [])) == 1, f"{key}= should be set exactly once"
    return d[key][0]


def seconds(span: str) -> float:
    """A systemd time span, parsed by systemd itself."""
    out = run(tool("systemd-analyze"), "timespan", span)
    assert out.returncode == 0, out.stderr
    usec = next(line for line in out.stdout.splitlines() if line.strip().startswith("μs:"))
    return int(usec.split(":")[1]) / 1e6


def verify(unit_text: str, tmp_path: Path) -> list[str]:
    """`systemd-analyze verify` on a copy whose ExecStart= binary exists (verify
    checks that); returns every complaint about the unit."""
    stub = tmp_path / "bin" / "ciwatch"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    lines = unit_text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("ExecStart=")]
    assert len(starts) == 1
    lines[starts[0]] = lines[starts[0]].replace("/usr/local/bin/ciwatch", str(stub), 1)
    copy = tmp_path / "ciwatch.service"
    copy.write_text("".join(lines))
    out = run(tool("systemd-analyze"), "verify", str(copy))
    problems = [line for line in (out.stdout + out.stderr).splitlines() if "ciwatch" in line]
    if out.returncode != 0 and not problems:
        problems = [f"exit status {out.returncode}: {out.stderr.strip()}"]
    return problems


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    assert verify(UNIT.read_text(), tmp_path) == []


def test_verify_catches_a_broken_unit(tmp_path):
    # The check above can fail: a misspelt directive is reported.
    broken = UNIT.read_text().replace("KillMode=mixed", "KilMode=mixed")
    problems = verify(broken, tmp_path)
    assert any("KilMode" in p for p in problems), problems


def test_the_unit_keeps_the_service_contract():
    d = directives(UNIT.read_text())
    assert one(d, "Type") == "notify"
    assert one(d, "NotifyAccess") == "main"
    assert one(d, "ExecStart") == "/usr/local/bin/ciwatch serve -c /etc/ciwatch/config.yaml"
    assert one(d, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert seconds(one(d, "WatchdogSec")) == 30
    assert one(d, "User") == one(d, "Group") == "ciwatch"
    assert one(d, "StateDirectory") == "ciwatch"
    assert one(d, "KillMode") == "mixed"
    assert one(d, "Restart") == "on-failure"
    # An OOM-killed build step must not take the service down with it.
    assert one(d, "OOMPolicy") == "continue"
    assert "#LoadCredential=" in UNIT.read_text()


def test_the_stop_timeout_leaves_room_for_the_configured_graces():
    d = directives(UNIT.read_text())
    need = DaemonConfig().shutdown_grace + ExecutorConfig().grace
    # The daemon needs the grace, the SIGTERM-to-SIGKILL wait of what is left,
    # and a moment to record the interrupted runs before systemd SIGKILLs it.
    assert seconds(one(d, "TimeoutStopSec")) >= need + 10


def test_no_hardening_that_breaks_build_steps():
    d = directives(UNIT.read_text())
    for key in (
        "MemoryDenyWriteExecute",
        "PrivateUsers",
        "RestrictNamespaces",
        "SystemCallArchitectures",
        "PrivateNetwork",
        "DynamicUser",
    ):
        assert key not in d, f"{key}= breaks build steps"
    assert d.get("ProcSubset", ["all"]) == ["all"]
    families = set(" ".join(d.get("RestrictAddressFamilies", [])).split())
    assert {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"} <= families or not families


def test_the_syscall_filter_leaves_what_steps_need(tmp_path):
    d = directives(UNIT.read_text())
    denied: set[str] = set()
    for value in d.get("SystemCallFilter", []):
        assert value.startswith("~"), "an allow-list would break arbitrary build tools"
        denied |= expand_syscalls(value[1:].split())
    assert denied, "expected a deny-list"
    assert not denied & STEP_SYSCALLS
    # A denied call fails with an error the step can report, not a SIGSYS kill.
    assert one(d, "SystemCallErrorNumber") == "EPERM"


def expand_syscalls(names: list[str]) -> set[str]:
    """System call names of a filter, @groups expanded by systemd-analyze."""
    found = {n for n in names if not n.startswith("@")}
    groups = [n for n in names if n.startswith("@")]
    if groups:
        out = run(tool("systemd-analyze"), "syscall-filter", *groups)
        assert out.returncode == 0, out.stderr
        listed = [line.strip() for line in out.stdout.splitlines() if line.startswith("    ")]
        listed = [n for n in listed if n and not n.startswith("#")]
        found |= {n for n in listed if not n.startswith("@")}
        found |= expand_syscalls([n for n in listed if n.startswith("@")])
    return found


def test_hardening_exposure_stays_low(tmp_path):
    # `systemd-analyze security` scores 0 (locked down) to 10 (exposed); the unit
    # scores 3.1 here (2.9 before its cgroup was delegated for step limits). A change
    # that loosens it beyond 3.2 fails.
    stub_unit = tmp_path / "ciwatch.service"
    stub_unit.write_text(UNIT.read_text().replace("/usr/local/bin/ciwatch", "/bin/true", 1))
    out = run(
        tool("systemd-analyze"), "security", "--offline=yes", "--threshold=32", str(stub_unit)
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr


@pytest.fixture
def root(tmp_path):
    """A scratch root with the users and directories created by systemd's tools."""
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    out = run(tool("systemd-sysusers"), f"--root={r}", str(SYSUSERS))
    assert out.returncode == 0, out.stderr
    out = run(tool("systemd-tmpfiles"), f"--root={r}", "--create", str(TMPFILES))
    assert out.returncode == 0, out.stderr
    return r


def read_db(path: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines()}


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles needs root to chown")
def test_sysusers_and_tmpfiles_make_the_user_and_the_directories(root):
    passwd = read_db(root / "etc" / "passwd")
    group = read_db(root / "etc" / "group")
    user = passwd["ciwatch"]
    uid, gid, home, shell = int(user[2]), int(user[3]), user[5], user[6]
    assert home == "/var/lib/ciwatch" and int(group["ciwatch"][2]) == gid
    assert uid < 1000 and shell.endswith("nologin")  # a system user, no login
    push_gid = int(group["ciwatch-push"][2])
    assert "ciwatch" in group["ciwatch-push"][3].split(",")

    state = (root / "var/lib/ciwatch").stat()
    assert (stat.S_IMODE(state.st_mode), state.st_uid, state.st_gid) == (0o711, uid, gid)
    spool = (root / "var/lib/ciwatch/spool").stat()
    # setgid: files dropped by the git server's user get the group ciwatch reads as.
    assert (stat.S_IMODE(spool.st_mode), spool.st_uid, spool.st_gid) == (0o2770, uid, push_gid)
    etc = (root / "etc/ciwatch").stat()
    assert (stat.S_IMODE(etc.st_mode), etc.st_uid, etc.st_gid) == (0o750, 0, gid)


def test_the_unit_and_tmpfiles_agree_on_the_state_directory():
    d = directives(UNIT.read_text())
    entries = {
        fields[1]: fields
        for fields in (line.split() for line in TMPFILES.read_text().splitlines())
        if fields and not fields[0].startswith("#")
    }
    state = entries["/var/lib/ciwatch"]
    assert state[2].lstrip("0") == one(d, "StateDirectoryMode").lstrip("0")
    assert state[3] == one(d, "User")
    assert "/var/lib/ciwatch" in one(d, "ReadWritePaths").split()
    users = [line.split()[1] for line in SYSUSERS.read_text().splitlines() if line[:2] == "u "]
    assert one(d, "User") in users
