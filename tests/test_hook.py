"""The post-receive hook, its spool and the daemon side, with real pushes into
real bare repositories and a real Store behind the real Intake."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from gitutil import GIT_ENV, commit, git, make_repo

from ciwatch.cli import main
from ciwatch.errors import StoreError
from ciwatch.hookinstall import HookError, install_hook, uninstall_hook, write_daemon_url
from ciwatch.intake import Intake
from ciwatch.model import ref_bytes
from ciwatch.sources.hookspool import HookSpool, parse_spool, spool_push
from ciwatch.store import Store

ZERO = "0" * 40
ROOT = Path(__file__).resolve().parent.parent
HOSTILE = [
    b"refs/heads/--upload-pack=touch${IFS}pwned;x",
    b"refs/heads/$(touch${IFS}pwned)",
    b'refs/heads/zzz";touch${IFS}pwned;#',
    b"refs/heads/bad\xff\xfe",
]


# -- helpers ---------------------------------------------------------------


def push(work: Path, remote: Path, *refspecs: str | bytes) -> subprocess.CompletedProcess:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(
        ["git", "push", "--porcelain", str(remote), *refspecs],
        cwd=work,
        env=env,
        capture_output=True,
        timeout=60,
    )


def spooled(spool: Path) -> list[Path]:
    return sorted(spool.glob("*.push"))


def remote_lines(proc: subprocess.CompletedProcess) -> list[bytes]:
    """What the hook printed, as the pusher sees it."""
    return [
        line[len(b"remote: ") :].rstrip()
        for line in proc.stderr.splitlines()
        if line.startswith(b"remote: ")
    ]


def hook_lines(spool_file: Path) -> tuple[str, list[bytes]]:
    repo, body = parse_spool(spool_file.read_bytes())
    return repo, body.splitlines()


def nothing_named_pwned(*roots: Path) -> None:
    for root in roots:
        assert not list(root.rglob("pwned")), f"a command ran: {list(root.rglob('pwned'))}"


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    bare = tmp_path / "srv" / "app.git"
    bare.parent.mkdir()
    git(bare.parent, "init", "-q", "--bare", "-b", "main", str(bare))
    work = tmp_path / "work"
    make_repo(work, {"README": "hello\n"})
    state = tmp_path / "state"
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {state}\nrepos:\n  - name: app\n    path: {bare}\n")
    return {"bare": bare, "work": work, "state": state, "spool": state / "spool", "config": config}


def cli(*args: str, input: bytes | None = None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def install(site, *extra: str):
    result = cli(
        "install-hook", str(site["bare"]), "--name", "app", "-c", str(site["config"]), *extra
    )
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def store(tmp_path: Path, site):
    s = Store.open(tmp_path / "db" / "ciwatch.db")
    s.ensure_repo("app", str(site["bare"]))
    yield s
    s.close()


def hookspool(site, store, **kw) -> HookSpool:
    return HookSpool(site["spool"], Intake(store, wake=lambda: None), lambda n: n == "app", **kw)


def stored_refs(store: Store) -> list[bytes]:
    return sorted(ref_bytes(r.ref) for r in store.list_runs(limit=10_000))


# -- the installed sh hook -------------------------------------------------


def test_install_hook_and_push_one_ref(site):
    out = install(site)
    hook = site["bare"] / "hooks" / "post-receive"
    assert os.access(hook, os.X_OK) and str(hook) in out.output
    assert "\nfsync=1\n" in hook.read_text()  # coreutils here can fsync one file
    install(site, "--no-fsync")
    assert "\nfsync=0\n" in hook.read_text()
    sha = git(site["work"], "rev-parse", "HEAD")

    proc = push(site["work"], site["bare"], "main")

    assert proc.returncode == 0, proc.stderr
    [spool_file] = spooled(site["spool"])
    assert hook_lines(spool_file) == ("app", [f"{ZERO} {sha} refs/heads/main".encode()])
    assert remote_lines(proc) == [
        f"ciwatch: queued refs/heads/main {sha[:7]}".encode(),
        b"ciwatch: the daemon is not running; it builds this push when it starts",
    ]


def test_a_push_of_500_refs_is_one_spool_file_with_every_line(site):
    install(site)
    sha = git(site["work"], "rev-parse", "HEAD")
    refs = [f"refs/heads/b{i:03d}" for i in range(500)]
    subprocess.run(
        ["git", "update-ref", "--stdin"],
        input="".join(f"create {r} {sha}\n" for r in refs).encode(),
        cwd=site["work"],
        check=True,
    )

    proc = push(site["work"], site["bare"], "refs/heads/*:refs/heads/*")

    assert proc.returncode == 0, proc.stderr
    [spool_file] = spooled(site["spool"])
    _, lines = hook_lines(spool_file)
    assert sorted(lines) == sorted(f"{ZERO} {sha} {r}".encode() for r in [*refs, "refs/heads/main"])
    assert sum(line.startswith(b"ciwatch: queued ") for line in remote_lines(proc)) == 501


def test_the_push_succeeds_when_the_spool_cannot_be_written(site, tmp_path):
    seen = tmp_path / "seen"
    previous = site["bare"] / "hooks" / "post-receive"
    previous.write_text(f"#!/bin/sh\ncat > '{seen}'\n")
    previous.chmod(0o755)
    spool = tmp_path / "spool"
    install(site, "--spool", str(spool))
    spool.rmdir()
    spool.write_text("a file where the spool directory was\n")  # root ignores chmod
    sha = git(site["work"], "rev-parse", "HEAD")

    proc = push(site["work"], site["bare"], "main")

    assert proc.returncode == 0, proc.stderr
    assert git(site["bare"], "rev-parse", "refs/heads/main") == sha
    said = remote_lines(proc)
    assert len(said) == 1 and said[0].startswith(b"ciwatch: warning: could not queue this push")
    assert seen.read_bytes() == f"{ZERO} {sha} refs/heads/main\n".encode()  # still chained


def test_the_daemon_url_is_printed_only_when_its_pid_is_alive(site):
    install(site)
    url_file = site["state"] / "daemon.url"
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_daemon_url(url_file, dead.pid, "http://127.0.0.1:8750/")
    proc = push(site["work"], site["bare"], "main")
    assert remote_lines(proc)[-1].startswith(b"ciwatch: the daemon is not running")

    write_daemon_url(url_file, os.getpid(), "http://127.0.0.1:8750/")
    commit(site["work"], {"f": "2"})
    proc = push(site["work"], site["bare"], "main")
    assert remote_lines(proc)[-1] == b"ciwatch: http://127.0.0.1:8750/"
    assert len(spooled(site["spool"])) == 2


def test_an_existing_hook_is_chained_with_the_same_input_and_its_status(site, tmp_path):
    seen = tmp_path / "seen"
    original = site["bare"] / "hooks" / "post-receive"
    original.write_text(f"#!/bin/sh\ncat > '{seen}'\necho mail sent\nexit 3\n")
    original.chmod(0o755)
    before = original.read_bytes()

    install(site)
    install(site)  # reinstalling keeps the chained hook, not ours twice
    chained = site["bare"] / "hooks" / "post-receive.chained"
    assert chained.read_bytes() == before

    sha = git(site["work"], "rev-parse", "HEAD")
    proc = push(site["work"], site["bare"], "main", "HEAD:refs/tags/v1")
    assert proc.returncode == 0
    [spool_file] = spooled(site["spool"])
    assert seen.read_bytes().splitlines() == hook_lines(spool_file)[1]
    assert f"{ZERO} {sha} refs/tags/v1".encode() in seen.read_bytes().splitlines()
    assert b"mail sent" in remote_lines(proc)

    # git ignores a post-receive status; the hook still hands it back
    run = subprocess.run(
        [str(original)],
        input=f"{ZERO} {sha} refs/heads/x\n".encode(),
        cwd=site["bare"],
        capture_output=True,
        timeout=10,
    )
    assert run.returncode == 3

    out = cli("install-hook", str(site["bare"]), "--uninstall")
    assert out.exit_code == 0 and "previous hook is back" in out.output
    assert original.read_bytes() == before and not chained.exists()
    with pytest.raises(HookError, match="not ciwatch's"):
        uninstall_hook(site["bare"])


def test_a_foreign_hook_is_never_overwritten(site):
    hooks = site["bare"] / "hooks"
    (hooks / "post-receive").write_text("#!/bin/sh\necho mine\n")
    (hooks / "post-receive.chained").write_text("#!/bin/sh\necho older\n")
    with pytest.raises(HookError, match="merge them by hand"):
        install_hook(site["bare"], "app", site["spool"], site["state"] / "daemon.url")
    assert (hooks / "post-receive").read_text() == "#!/bin/sh\necho mine\n"


def test_hostile_ref_names_pushed_for_real_are_data(site, store, tmp_path):
    install(site)
    sha = git(site["work"], "rev-parse", "HEAD")

    proc = push(site["work"], site["bare"], *[b"HEAD:" + r for r in HOSTILE])

    assert proc.returncode == 0, proc.stderr
    nothing_named_pwned(tmp_path, Path.cwd())
    [spool_file] = spooled(site["spool"])
    assert sorted(hook_lines(spool_file)[1]) == sorted(
        f"{ZERO} {sha} ".encode() + r for r in HOSTILE
    )
    printed = remote_lines(proc)
    for ref in HOSTILE:
        assert b"ciwatch: queued " + ref + b" " + sha[:7].encode() in printed

    spool = hookspool(site, store)
    assert spool.drain_once() == 1
    assert stored_refs(store) == sorted(HOSTILE)
    nothing_named_pwned(tmp_path, Path.cwd())


def test_deletions_are_not_queued(site, store):
    install(site)
    push(site["work"], site["bare"], "main", "HEAD:refs/heads/doomed")
    hookspool(site, store).drain_once()
    assert len(store.list_runs()) == 2

    proc = push(site["work"], site["bare"], ":refs/heads/doomed")

    assert proc.returncode == 0
    assert not any(b"queued" in line for line in remote_lines(proc))
    hookspool(site, store).drain_once()
    assert len(store.list_runs()) == 2
    assert spooled(site["spool"]) == []


def test_names_and_paths_are_quoted_into_the_script(site, tmp_path):
    name = 'it\'s "x" $(touch pwned) `touch pwned`'
    spool = tmp_path / "sp'o ol$(touch pwned)"
    install_hook(site["bare"], name, spool, tmp_path / "u'rl")
    push(site["work"], site["bare"], "main")
    nothing_named_pwned(tmp_path, Path.cwd())
    [spool_file] = spooled(spool)
    assert hook_lines(spool_file)[0] == name

    bad = cli("install-hook", str(site["bare"]), "--name", "a\nb", "--spool", str(spool))
    assert bad.exit_code == 2 and "newline" in bad.output


def test_install_into_a_work_tree_uses_its_git_dir(site, tmp_path):
    done = install_hook(site["work"], "app", site["spool"], site["state"] / "daemon.url")
    assert done.hook == site["work"] / ".git" / "hooks" / "post-receive"
    with pytest.raises(HookError, match="not a git repository"):
        install_hook(tmp_path, "app", site["spool"], site["state"] / "daemon.url")


# -- the Python hook: `ciwatch hook` ---------------------------------------


def test_python_hook_writes_the_same_format(site):
    sha = git(site["work"], "rev-parse", "HEAD")
    stdin = f"{ZERO} {sha} refs/heads/main\n{sha} {ZERO} refs/heads/gone\n".encode()

    result = cli("hook", "--name", "app", "-c", str(site["config"]), input=stdin)

    assert result.exit_code == 0
    [spool_file] = spooled(site["spool"])
    assert hook_lines(spool_file) == ("app", stdin.splitlines())
    assert f"ciwatch: queued refs/heads/main {sha[:7]}" in result.output
    assert "gone" not in result.output


def test_python_hook_never_fails_the_push(site, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    stdin = f"{ZERO} {'a' * 40} refs/heads/main\n".encode()
    result = cli(
        "hook", "--name", "app", "--spool", str(blocker / "s"), "--url-file", "u", input=stdin
    )
    assert result.exit_code == 0
    assert "could not queue this push" in result.stderr
    result = cli("hook", "--name", "app", input=stdin)
    assert result.exit_code == 0 and "give --spool DIR or -c CONFIG" in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("repos: 5\n")
    result = cli("hook", "--name", "app", "-c", str(broken), input=stdin)
    assert result.exit_code == 0 and "could not queue" in result.stderr


def test_python_hook_installed_by_hand_carries_hostile_refs(site, store, tmp_path):
    hook = site["bare"] / "hooks" / "post-receive"
    hook.write_text(
        f"#!/bin/sh\nPYTHONPATH='{ROOT}'\nexport PYTHONPATH\n"
        f"exec '{sys.executable}' -m ciwatch hook --name app -c '{site['config']}'\n"
    )
    hook.chmod(0o755)
    site["state"].mkdir()
    write_daemon_url(site["state"] / "daemon.url", os.getpid(), "http://ci.example/")
    sha = git(site["work"], "rev-parse", "HEAD")

    proc = push(site["work"], site["bare"], *[b"HEAD:" + r for r in HOSTILE])

    assert proc.returncode == 0, proc.stderr
    nothing_named_pwned(tmp_path, Path.cwd())
    said = remote_lines(proc)
    assert f"ciwatch: queued refs/heads/$(touch${{IFS}}pwned) {sha[:7]}".encode() in said
    assert said[-1] == b"ciwatch: http://ci.example/"
    assert hookspool(site, store).drain_once() == 1
    assert stored_refs(store) == sorted(HOSTILE)


# -- the daemon side: HookSpool --------------------------------------------


def write_push(spool: Path, lines: bytes, repo: str = "app") -> Path:
    return spool_push(spool, repo, lines, now_ns=time.time_ns, token=lambda: os.urandom(4).hex())


def test_pushes_spooled_while_down_are_all_stored_once_at_start(site, store):
    site["spool"].mkdir(parents=True)
    shas = [f"{i:040x}" for i in range(1, 101)]
    for i, sha in enumerate(shas):
        write_push(site["spool"], f"{ZERO} {sha} refs/heads/b{i}\n".encode())
    spool = hookspool(site, store, watcher="none")
    spool.start()
    try:
        runs = store.list_runs(limit=1000)
        assert sorted(r.sha for r in runs) == shas
        assert {r.source for r in runs} == {"hook"}
        assert spooled(site["spool"]) == []
        assert spool.drain_once() == 0
    finally:
        spool.stop()


def test_spool_files_are_taken_oldest_first(site, store):
    site["spool"].mkdir(parents=True)
    first = site["spool"] / "900-1.push"  # the sh hook's names carry no time
    second = site["spool"] / "100-2.push"
    first.write_bytes(f"ciwatch-spool 1 repo=app\n{ZERO} {'1' * 40} refs/heads/a\n".encode())
    second.write_bytes(f"ciwatch-spool 1 repo=app\n{ZERO} {'2' * 40} refs/heads/b\n".encode())
    os.utime(first, ns=(1_000_000_000, 1_000_000_000))
    os.utime(second, ns=(2_000_000_000, 2_000_000_000))

    assert hookspool(site, store).drain_once() == 2

    assert [(r.number, r.sha) for r in sorted(store.list_runs(), key=lambda r: r.number)] == [
        (1, "1" * 40),
        (2, "2" * 40),
    ]


def test_a_duplicate_push_dedupes_and_both_files_go(site, store):
    site["spool"].mkdir(parents=True)
    line = f"{'a' * 40} {'b' * 40} refs/heads/main\n".encode()
    write_push(site["spool"], line)
    write_push(site["spool"], line)

    assert hookspool(site, store).drain_once() == 2

    [run] = store.list_runs()
    assert run.before == "a" * 40
    assert [s.source for s in store.sightings(run.event_id)] == ["hook", "hook"]
    assert spooled(site["spool"]) == []


def test_bad_files_are_set_aside_with_a_reason_and_the_rest_processed(site, store, caplog):
    spool_dir = site["spool"]
    spool_dir.mkdir(parents=True)
    (spool_dir / "1-1-garbage.push").write_bytes(b"\x00\xffnot a spool file\n")
    write_push(spool_dir, f"{ZERO} {'c' * 40} refs/heads/main\n".encode(), repo="elsewhere")
    write_push(spool_dir, f"{ZERO} {'d' * 40} refs/heads/main\nbroken line\n".encode())
    good = write_push(spool_dir, f"{ZERO} {'e' * 40} refs/heads/dev\n".encode())

    with caplog.at_level(logging.WARNING, logger="ciwatch.hookspool"):
        assert hookspool(site, store).drain_once() == 4

    assert sorted(r.sha for r in store.list_runs()) == ["d" * 40, "e" * 40]
    rejected = spool_dir / "rejected"
    assert not good.exists() and spooled(spool_dir) == []
    reasons = {p.name: p.read_text() for p in rejected.glob("*.reason")}
    assert len(reasons) == 3
    assert "header" in reasons["1-1-garbage.push.reason"]
    assert any("unknown repository 'elsewhere'" in r for r in reasons.values())
    assert any("1 line(s) not understood" in r for r in reasons.values())
    assert (rejected / "1-1-garbage.push").read_bytes() == b"\x00\xffnot a spool file\n"
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 3


class FailingOnce:
    """The real intake, with the store failing for the first `n` submits."""

    def __init__(self, intake: Intake, n: int) -> None:
        self.intake, self.n = intake, n

    def submit(self, event):
        if self.n > 0:
            self.n -= 1
            raise StoreError("database is locked")
        return self.intake.submit(event)


def test_a_store_error_keeps_the_file_for_a_retry(site, store, caplog):
    site["spool"].mkdir(parents=True)
    f = write_push(site["spool"], f"{ZERO} {'a' * 40} refs/heads/main\n".encode())
    intake = FailingOnce(Intake(store, wake=lambda: None), n=2)
    spool = HookSpool(site["spool"], intake, lambda n: n == "app")

    with caplog.at_level(logging.WARNING, logger="ciwatch.hookspool"):
        assert spool.drain_once() == 0
        assert spool.drain_once() == 0
    assert f.exists() and store.list_runs() == []
    assert caplog.text.count("kept for a retry") == 1  # one line per outage, not per rescan

    assert spool.drain_once() == 1
    assert not f.exists() and len(store.list_runs()) == 1


def test_an_abandoned_temp_file_is_set_aside_after_a_while(site, store):
    site["spool"].mkdir(parents=True)
    tmp = site["spool"] / ".123.tmp"
    tmp.write_bytes(b"ciwatch-spool 1 repo=app\n")
    now = [time.time()]
    spool = hookspool(site, store, clock=lambda: now[0], stale_after=600)
    spool.drain_once()
    assert tmp.exists()
    now[0] += 601
    spool.drain_once()
    assert not tmp.exists() and (site["spool"] / "rejected" / ".123.tmp").exists()


def wait_for(predicate, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


@pytest.mark.parametrize("watcher", ["inotify", "watchdog"])
def test_a_push_while_running_is_stored_at_once(site, store, watcher):
    install(site)
    submitted = threading.Event()
    intake = Intake(store, wake=submitted.set)
    spool = HookSpool(
        site["spool"], intake, lambda n: n == "app", watcher=watcher, rescan_interval=60
    )
    spool.start()
    try:
        t0 = time.monotonic()
        proc = push(site["work"], site["bare"], "main")
        assert proc.returncode == 0
        assert submitted.wait(2), "the spool file was not noticed"
        assert time.monotonic() - t0 < 2
        [run] = store.list_runs()
        assert (run.ref, run.source) == ("refs/heads/main", "hook")
        assert wait_for(lambda: spooled(site["spool"]) == [])
    finally:
        spool.stop()
