"""Mirrors, checkouts and workspace cleanup against real git and a real filesystem."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ciwatch.attemptdir import Workspace, workspace_dir
from ciwatch.errors import GitError, WorkspaceError
from ciwatch.git import redact
from ciwatch.model import ref_bytes
from ciwatch.workspace import Mirrors, NotInCommitError, init_repo_with_files, local_repo_info

ZERO = "0" * 40
GIT_ENV = {
    "PATH": os.environ["PATH"],
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.org",
}


def git(cwd: Path, *args: str | bytes | Path, input: bytes | None = None) -> str:
    argv = ["git", *[a if isinstance(a, bytes) else os.fsencode(a) for a in args]]
    out = subprocess.run(
        argv,
        cwd=cwd,
        env={**GIT_ENV, "HOME": str(cwd)},
        input=input,
        check=True,
        capture_output=True,
    ).stdout
    return out.decode("utf-8", "surrogateescape").strip()


class Repo:
    """A work tree pushing into a bare repository (the 'server')."""

    def __init__(self, base: Path, branch: str = "main") -> None:
        self.bare = base / "server.git"
        self.work = base / "work"
        git(base, "init", "-q", "--bare", f"--initial-branch={branch}", self.bare)
        git(base, "init", "-q", f"--initial-branch={branch}", self.work)
        git(self.work, "remote", "add", "origin", self.bare)

    def commit(self, files: dict[str, str | bytes | None], msg: str = "c") -> str:
        for name, content in files.items():
            p = self.work / name
            if content is None:
                git(self.work, "rm", "-q", "--", name)
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content if isinstance(content, bytes) else content.encode())
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "--allow-empty", "-m", msg)
        return git(self.work, "rev-parse", "HEAD")

    def push(self, *specs: str) -> None:
        git(self.work, "push", "-q", "--force", "origin", *specs)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


@pytest.fixture
def mirrors(tmp_path: Path) -> Mirrors:
    return Mirrors(tmp_path / "state", timeout=20)


# --- mirror, resolve, ensure, default branch -----------------------------------------


def test_fetch_resolve_and_default_branch(repo: Repo, mirrors: Mirrors, tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    repo = Repo(tmp_path / "t", branch="trunk")
    first = repo.commit({"a.txt": "1"})
    repo.push("HEAD:refs/heads/trunk")
    git(repo.work, "tag", "-a", "-m", "v1", "v1")
    repo.push("refs/tags/v1")
    m = mirrors.mirror(7, str(repo.bare))
    assert m.path == tmp_path / "state" / "mirrors" / "7.git"
    m.fetch()
    assert m.resolve("refs/heads/trunk") == first
    assert m.resolve("refs/tags/v1") == first  # annotated tag peeled to its commit
    assert m.default_branch() == "trunk"
    with pytest.raises(GitError):
        m.resolve("refs/heads/nope")


def test_fetch_prunes_deleted_branches_and_fetches_only_named_refs(
    repo: Repo, mirrors: Mirrors
) -> None:
    sha = repo.commit({"a": "1"})
    repo.push("HEAD:refs/heads/main", "HEAD:refs/heads/gone")
    m = mirrors.mirror(1, str(repo.bare))
    m.fetch()
    assert m.resolve("refs/heads/gone") == sha
    git(repo.work, "push", "-q", "origin", "--delete", "refs/heads/gone")
    newer = repo.commit({"a": "2"})
    repo.push("HEAD:refs/heads/main", "HEAD:refs/heads/other")
    m.fetch(["refs/heads/main"])
    assert m.resolve("refs/heads/main") == newer
    with pytest.raises(GitError):
        m.resolve("refs/heads/other")  # not asked for
    m.fetch()
    assert m.resolve("refs/heads/other") == newer
    with pytest.raises(GitError):
        m.resolve("refs/heads/gone")


def test_pull_request_refs_only_when_asked(repo: Repo, mirrors: Mirrors) -> None:
    repo.commit({"a": "1"})
    repo.push("HEAD:refs/heads/main")
    pr = repo.commit({"a": "pr"})
    repo.push("HEAD:refs/pull/12/head")
    m = mirrors.mirror(1, str(repo.bare))
    m.fetch()
    with pytest.raises(GitError):
        m.resolve("refs/pull/12/head")
    m.fetch(pull_requests=True)
    assert m.resolve("refs/pull/12/head") == pr


def test_ensure_fetches_a_missing_commit_and_names_one_that_does_not_exist(
    repo: Repo, mirrors: Mirrors
) -> None:
    repo.commit({"a": "1"})
    repo.push("HEAD:refs/heads/main")
    m = mirrors.mirror(1, str(repo.bare))
    m.fetch()
    later = repo.commit({"a": "2"})
    repo.push("HEAD:refs/heads/main")
    assert not m.has_commit(later)
    m.ensure(later)
    assert m.has_commit(later)
    ghost = "1234567890" * 4
    with pytest.raises(GitError, match=f"commit {ghost} not found in {repo.bare}"):
        m.ensure(ghost)


def test_concurrent_fetches_into_one_mirror_both_succeed(repo: Repo, mirrors: Mirrors) -> None:
    for i in range(5):
        repo.commit({f"f{i}": str(i)})
        repo.push(f"HEAD:refs/heads/b{i}")
    m = mirrors.mirror(1, str(repo.bare))
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            m.fetch()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert m.resolve("refs/heads/b4") == git(repo.work, "rev-parse", "HEAD")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fetch_over_git_protocol_from_a_loopback_daemon(
    repo: Repo, mirrors: Mirrors, tmp_path: Path
) -> None:
    sha = repo.commit({"a": "1"})
    repo.push("HEAD:refs/heads/main")
    port = _free_port()
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            f"--base-path={tmp_path}",
            "--export-all",
            "--reuseaddr",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.02)
        m = mirrors.mirror(1, f"git://127.0.0.1:{port}/server.git")
        m.fetch()
        assert m.resolve("refs/heads/main") == sha
        assert m.default_branch() == "main"
    finally:
        daemon.kill()
        daemon.wait()


def test_a_hung_server_times_out(tmp_path: Path) -> None:
    with socket.socket() as srv:  # accepts the connection (backlog) and never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        m = Mirrors(tmp_path / "state", timeout=0.5).mirror(1, f"git://127.0.0.1:{port}/x.git")
        start = time.monotonic()
        with pytest.raises(GitError, match="timed out"):
            m.fetch()
        assert time.monotonic() - start < 5


def test_errors_never_show_credentials(tmp_path: Path) -> None:
    port = _free_port()  # nobody listens there
    m = Mirrors(tmp_path / "state", timeout=5).mirror(1, f"http://bob:hunter2@127.0.0.1:{port}/x")
    with pytest.raises(GitError) as info:
        m.fetch()
    assert "hunter2" not in str(info.value)
    assert "127.0.0.1" in str(info.value)
    assert redact("see https://bob:pw@h/x and ssh://alice@h/y") == (
        "see https://***@h/x and ssh://***@h/y"
    )


# --- reading the pipeline file from the commit -----------------------------------------


def test_read_blob_reads_the_commit_not_the_worktree(repo: Repo, mirrors: Mirrors) -> None:
    sha = repo.commit({".ciwatch.yml": "steps: []\n", "ci/p.yml": "x: 1\n"})
    repo.push("HEAD:refs/heads/main")
    (repo.work / ".ciwatch.yml").write_text("uncommitted\n")
    m = mirrors.mirror(1, str(repo.bare))
    m.fetch()
    assert m.read_blob(sha, ".ciwatch.yml", 1000) == b"steps: []\n"
    assert m.read_blob(sha, "ci/p.yml", 1000) == b"x: 1\n"


def test_read_blob_refuses_a_symlink(repo: Repo, mirrors: Mirrors) -> None:
    repo.commit({"real.yml": "steps: []\n"})
    os.symlink("real.yml", repo.work / ".ciwatch.yml")
    os.symlink("/etc", repo.work / "etc")
    sha = repo.commit({})
    repo.push("HEAD:refs/heads/main")
    m = mirrors.mirror(1, str(repo.bare))
    m.fetch()
    with pytest.raises(GitError, match="is a symlink; ciwatch reads the pipeline from the commit"):
        m.read_blob(sha, ".ciwatch.yml", 1000)
    with pytest.raises(NotInCommitError):  # nothing is read through a linked directory
        m.read_blob(sha, "etc/passwd", 100_000)


def test_read_blob_missing_or_directory_is_a_distinct_error(repo: Repo, mirrors: Mirrors) -> None:
    sha = repo.commit({"dir/.ciwatch.yml": "a"})
    repo.push("HEAD:refs/heads/main")
    m = mirrors.mirror(1, str(repo.bare))
    m.fetch()
    with pytest.raises(NotInCommitError, match=f"no .ciwatch.yml at {sha}") as info:
        m.read_blob(sha, ".ciwatch.yml", 1000)
    assert (info.value.sha, info.value.path) == (sha, ".ciwatch.yml")
    with pytest.raises(NotInCommitError, match="is a directory"):
        m.read_blob(sha, "dir", 1000)
    for bad in ("../x", "/etc/passwd", "dir/../x", ""):
        with pytest.raises(GitError):
            m.read_blob(sha, bad, 1000)
    for pattern in ("*", "dir/*", "*.yml", ":(glob)**/.ciwatch.yml", "di?"):
        with pytest.raises(NotInCommitError):  # a path is never a pattern
            m.read_blob(sha, pattern, 1000)


def test_read_blob_refuses_an_oversize_file_before_reading_it(repo: Repo, tmp_path: Path) -> None:
    sha = repo.commit({"big.yml": b"#" * 300_000})
    repo.push("HEAD:refs/heads/main")
    calls = tmp_path / "calls"
    calls.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    real = shutil.which("git")
    (bindir / "git").write_text(f'#!/bin/sh\necho "$@" >> {calls}/log\nexec {real} "$@"\n')
    (bindir / "git").chmod(0o755)
    m = Mirrors(tmp_path / "state", search_path=f"{bindir}:{os.environ['PATH']}").mirror(
        1, str(repo.bare)
    )
    m.fetch()
    with pytest.raises(GitError, match="300000 bytes; the limit is 1000"):
        m.read_blob(sha, "big.yml", 1000)
    assert "cat-file" not in (calls / "log").read_text()
    assert len(m.read_blob(sha, "big.yml", 300_000)) == 300_000


# --- changed paths ---------------------------------------------------------------------


def test_changed_paths_for_a_push_and_a_new_branch(repo: Repo, mirrors: Mirrors) -> None:
    base = repo.commit({"src/a.py": "1", "docs/x.md": "x", "old.txt": "o"})
    repo.push("HEAD:refs/heads/main")
    after = repo.commit({"src/a.py": "2", "old.txt": None, "new.txt": "n"})
    repo.push("HEAD:refs/heads/main")
    git(repo.work, "checkout", "-q", "-b", "feature", base)
    f1 = repo.commit({"docs/x.md": "y"})
    f2 = repo.commit({"src/b.py": "b"})
    repo.push("HEAD:refs/heads/feature")
    m = mirrors.mirror(1, str(repo.bare))
    m.fetch()
    assert sorted(m.changed_paths(base, after, "main")) == ["new.txt", "old.txt", "src/a.py"]
    # A new branch: compared with its merge base with main (base), not with main's tip.
    for before in (None, ZERO):
        assert sorted(m.changed_paths(before, f2, "main")) == ["docs/x.md", "src/b.py"]
    assert m.changed_paths(f1, f2, "main") == ("src/b.py",)


def test_changed_paths_unknown_is_none(repo: Repo, mirrors: Mirrors) -> None:
    sha = repo.commit({"a": "1"})
    repo.push("HEAD:refs/heads/main")
    git(repo.work, "checkout", "-q", "--orphan", "island")
    lone = repo.commit({"b": "2"})
    repo.push("HEAD:refs/heads/island")
    m = mirrors.mirror(1, str(repo.bare))
    m.fetch()
    assert m.changed_paths(None, lone, "main") is None  # no merge base
    assert m.changed_paths(None, sha, "no-such-branch") is None
    assert m.changed_paths("ab" * 20, sha, "main") is None  # `before` was never seen


def test_changed_paths_keep_odd_bytes(repo: Repo, mirrors: Mirrors) -> None:
    base = repo.commit({"a": "1"})
    repo.push("HEAD:refs/heads/main")
    (repo.work / os.fsdecode(b"caf\xe9 \n.txt")).write_text("x")
    after = repo.commit({})
    repo.push("HEAD:refs/heads/main")
    m = mirrors.mirror(1, str(repo.bare))
    m.fetch()
    (path,) = m.changed_paths(base, after, "main")
    assert ref_bytes(path) == b"caf\xe9 \n.txt"


# --- checkout --------------------------------------------------------------------------


def test_checkout_shares_objects_and_builds_the_recorded_sha(
    repo: Repo, mirrors: Mirrors, tmp_path: Path
) -> None:
    old = repo.commit({"f.txt": "old", "big.bin": os.urandom(200_000)})
    repo.push("HEAD:refs/heads/main")
    m = mirrors.mirror(1, str(repo.bare))
    m.fetch()
    recorded = m.resolve("refs/heads/main")  # at enqueue time
    git(repo.work, "reset", "-q", "--hard", "HEAD~0")
    git(repo.work, "commit", "-q", "--amend", "-m", "rewritten", "--allow-empty")
    repo.commit({"f.txt": "new"})
    repo.push("HEAD:refs/heads/main")  # force-pushed after enqueue (A7)
    m.fetch()
    assert m.resolve("refs/heads/main") != recorded
    ws = m.checkout(recorded, workspace_dir(tmp_path / "state", 1, 3, 1))
    assert recorded == old
    assert (ws.path / "f.txt").read_text() == "old"
    assert git(ws.path, "rev-parse", "HEAD") == old
    assert git(ws.path, "status", "--porcelain") == ""
    alternates = (ws.path / ".git" / "objects" / "info" / "alternates").read_text().strip()
    assert Path(alternates) == m.path / "objects"
    copied = [
        p
        for p in (ws.path / ".git" / "objects").rglob("*")
        if p.is_file() and "info" not in p.parts
    ]
    assert copied == []  # nothing copied: the mirror's objects are borrowed
    assert ws.home.is_dir() and ws.tmp.is_dir()
    assert ws.home.parent == ws.tmp.parent == ws.path.parent == ws.root
    config = (ws.path / ".git" / "config").read_text()
    assert "hooksPath = /dev/null" in config
    assert f"url = {repo.bare}" in config and str(m.path) not in config


def test_checkout_into_an_existing_workspace_is_refused(
    repo: Repo, mirrors: Mirrors, tmp_path: Path
) -> None:
    sha = repo.commit({"a": "1"})
    repo.push("HEAD:refs/heads/main")
    m = mirrors.mirror(1, str(repo.bare))
    m.fetch()
    dest = tmp_path / "ws"
    (dest / "src").mkdir(parents=True)
    (dest / "src" / "keep").write_text("mine")
    with pytest.raises(WorkspaceError, match="already exists"):
        m.checkout(sha, dest)
    assert (dest / "src" / "keep").read_text() == "mine"


def test_checkout_of_an_unknown_commit_fails_and_leaves_nothing(
    repo: Repo, mirrors: Mirrors, tmp_path: Path
) -> None:
    repo.commit({"a": "1"})
    repo.push("HEAD:refs/heads/main")
    m = mirrors.mirror(1, str(repo.bare))
    m.fetch()
    with pytest.raises(GitError):
        m.checkout("ab" * 20, tmp_path / "ws")
    assert not (tmp_path / "ws").exists()


def test_planted_hooks_and_fsmonitor_do_not_run(
    repo: Repo, mirrors: Mirrors, tmp_path: Path
) -> None:
    marker = tmp_path / "RAN"
    payload = f'#!/bin/sh\necho "$0" >> {marker}\n'
    repo.commit({"a": "1"})
    repo.push("HEAD:refs/heads/main")
    m = mirrors.mirror(1, str(repo.bare))
    for hooks in (m.path / "hooks", repo.bare / "hooks"):
        hooks.mkdir(exist_ok=True)
        for name in (
            "post-checkout",
            "reference-transaction",
            "pre-upload",
            "post-index-change",
            "fsmonitor-watchman",
            "post-merge",
            "pre-receive",
            "update",
        ):
            (hooks / name).write_text(payload)
            (hooks / name).chmod(0o755)
    monitor = tmp_path / "monitor.sh"
    monitor.write_text(payload)
    monitor.chmod(0o755)
    for d in (m.path, repo.bare):
        git(d, "config", "core.fsmonitor", str(monitor))
        git(d, "config", "core.hooksPath", str(m.path / "hooks"))
    m.fetch()
    sha = m.resolve("refs/heads/main")
    ws = m.checkout(sha, tmp_path / "ws")
    m.changed_paths(None, sha, "main")
    m.read_blob(sha, "a", 10)
    assert (ws.path / "a").read_text() == "1"
    # A step could plant the same in the checkout; ciwatch's own git calls ignore it.
    git(ws.path, "config", "core.fsmonitor", str(monitor))
    git(ws.path, "config", "core.hooksPath", str(m.path / "hooks"))
    wt = {"git_dir": ws.path / ".git", "work_tree": ws.path, "cwd": ws.path}
    m.git.run(["status", "--porcelain"], **wt)
    m.git.run(["checkout", "--quiet", "--detach", "--force", sha], **wt)
    assert not marker.exists(), marker.read_text()


def test_checkout_cost_is_small_for_a_small_repo(
    repo: Repo, mirrors: Mirrors, tmp_path: Path
) -> None:
    repo.commit({f"d{i % 10}/f{i}.txt": str(i) for i in range(200)})
    repo.push("HEAD:refs/heads/main")
    m = mirrors.mirror(1, str(repo.bare))
    m.fetch()
    sha = m.resolve("refs/heads/main")
    start = time.monotonic()
    ws = m.checkout(sha, tmp_path / "ws")
    took = time.monotonic() - start
    assert len(list(ws.path.rglob("*.txt"))) == 200
    assert took < 5, took  # generous: catches an object copy or a re-download, not noise


# --- workspace paths and removal -------------------------------------------------------


def test_workspace_dir_is_built_from_numbers_only(tmp_path: Path) -> None:
    assert workspace_dir(tmp_path, 3, 41, 2) == tmp_path / "workspaces" / "3" / "41-2"
    for bad in ((-1, 1, 1), (1, "../x", 1), (1, 1, True), ("a/b", 1, 1)):
        with pytest.raises(WorkspaceError):
            workspace_dir(tmp_path, *bad)


def _hostile_tree(root: Path, outside: Path) -> None:
    src = root / "src"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "a" / "b" / "c" / "deep.txt").write_text("x")
    (src / "ro.txt").write_text("x")
    (src / "ro.txt").chmod(0o444)
    (src / "locked").mkdir()
    (src / "locked" / "inner").mkdir()
    (src / "locked" / "inner" / "f").write_text("x")
    (src / "locked" / "inner").chmod(0o000)
    (src / "locked").chmod(0o000)
    (src / "a" / "b").chmod(0o500)
    os.symlink(outside / "secret.txt", src / "link-to-file")
    os.symlink(outside, src / "link-to-dir")
    os.symlink("loop", src / "loop")
    os.symlink(outside / "secret.txt", root / "home" / "token")


def _make_outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret.txt").write_text("keep me")
    (outside / "sub" / "f").write_text("keep me too")
    outside.chmod(0o755)
    return outside


def test_remove_handles_locked_dirs_and_never_follows_links(tmp_path: Path) -> None:
    outside = _make_outside(tmp_path)
    ws = Workspace(tmp_path / "ws")
    ws.create()
    _hostile_tree(ws.root, outside)
    ws.remove()
    assert not ws.root.exists()
    assert (outside / "secret.txt").read_text() == "keep me"
    assert (outside / "sub" / "f").read_text() == "keep me too"
    ws.remove()  # removing again is fine


def _remove_unprivileged(root: Path) -> subprocess.CompletedProcess:
    """Workspace.remove() in a process without the capabilities that let root
    ignore file modes, so mode 000 and read-only dirs really stand in the way."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from pathlib import Path
        from ciwatch.attemptdir import Workspace
        Workspace(Path({str(root)!r})).remove()
    """)
    argv = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        assert shutil.which("setpriv"), (
            "as root, setpriv (util-linux) is needed to drop CAP_DAC_OVERRIDE"
        )
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_remove_without_dac_override_chmods_its_way_through(tmp_path: Path) -> None:
    outside = _make_outside(tmp_path)
    ws = Workspace(tmp_path / "ws")
    ws.create()
    _hostile_tree(ws.root, outside)
    (outside / "sub").chmod(0o000)  # a locked dir outside must stay locked and intact
    done = _remove_unprivileged(ws.root)
    assert done.returncode == 0, done.stderr
    assert not ws.root.exists()
    assert (outside / "sub").stat().st_mode & 0o777 == 0
    (outside / "sub").chmod(0o755)
    assert (outside / "sub" / "f").read_text() == "keep me too"
    assert (outside / "secret.txt").read_text() == "keep me"


def test_remove_reports_what_it_could_not_delete(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    ws = Workspace(parent / "ws")
    ws.create()
    (ws.path / "f").parent.mkdir()
    (ws.path / "f").write_text("x")
    parent.chmod(0o500)  # the workspace's own entry cannot be unlinked from here
    try:
        done = _remove_unprivileged(ws.root)
    finally:
        parent.chmod(0o700)
    assert done.returncode != 0
    assert "WorkspaceError: could not remove workspace" in done.stderr
    assert "tried twice" in done.stderr and "Permission denied" in done.stderr


def test_remove_leaves_a_bind_mount_inside_the_workspace_alone(tmp_path: Path) -> None:
    outside = _make_outside(tmp_path)
    ws = Workspace(tmp_path / "ws")
    ws.create()
    point = ws.path / "my mount"  # a space: mountinfo escapes it
    point.mkdir(parents=True)
    if subprocess.run(["mount", "--bind", outside, point], capture_output=True).returncode:
        pytest.skip("bind mounts are not permitted here")
    try:
        with pytest.raises(WorkspaceError, match="a filesystem is mounted here"):
            ws.remove()
        assert (outside / "secret.txt").read_text() == "keep me"
        assert (outside / "sub" / "f").read_text() == "keep me too"
    finally:
        subprocess.run(["umount", point], check=True)
    ws.remove()
    assert not ws.root.exists()


def test_remove_refuses_the_filesystem_root() -> None:
    with pytest.raises(WorkspaceError):
        Workspace(Path("/")).remove()


def test_remove_of_a_symlinked_root_removes_only_the_link(tmp_path: Path) -> None:
    outside = _make_outside(tmp_path)
    link = tmp_path / "ws"
    os.symlink(outside, link)
    Workspace(link).remove()
    assert not os.path.lexists(link)
    assert (outside / "secret.txt").read_text() == "keep me"


# --- local repositories ----------------------------------------------------------------


def test_local_repo_info_for_work_tree_bare_and_detached(repo: Repo, tmp_path: Path) -> None:
    first = repo.commit({"a": "1"})
    repo.push("HEAD:refs/heads/main")
    (repo.work / "sub").mkdir()
    assert local_repo_info(repo.work) == (str(repo.work / ".git"), "refs/heads/main", first)
    assert local_repo_info(repo.work / "sub")[0] == str(repo.work / ".git")
    assert local_repo_info(repo.bare) == (str(repo.bare), "refs/heads/main", first)
    second = repo.commit({"a": "2"})
    git(repo.work, "checkout", "-q", "--detach", first)
    assert local_repo_info(repo.work) == (str(repo.work / ".git"), "", first)
    git(repo.work, "checkout", "-q", "-b", b"odd\xff", second)
    assert ref_bytes(local_repo_info(repo.work)[1]) == b"refs/heads/odd\xff"
    empty = tmp_path / "empty"
    git(tmp_path, "init", "-q", empty)
    with pytest.raises(GitError, match="no commits"):
        local_repo_info(empty)
    with pytest.raises(GitError):
        local_repo_info(tmp_path / "missing")


def test_a_local_work_tree_can_be_mirrored_and_checked_out(
    repo: Repo, mirrors: Mirrors, tmp_path: Path
) -> None:
    sha = repo.commit({"x.txt": "hello"})
    url, ref, head = local_repo_info(repo.work)
    m = mirrors.mirror(1, url)
    m.fetch()
    m.ensure(head)
    assert m.resolve(ref) == sha
    ws = m.checkout(head, tmp_path / "ws")
    assert (ws.path / "x.txt").read_text() == "hello"


def test_init_repo_with_files(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    target.mkdir()
    (target / ".ciwatch.yml").write_text("steps: []\n")
    sha = init_repo_with_files(target, message="example")
    assert local_repo_info(target) == (str(target / ".git"), "refs/heads/main", sha)
    assert git(target, "show", "-s", "--format=%s", sha) == "example"
