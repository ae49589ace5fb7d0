"""The cached workspace strategy against real git: reuse, cleaning, isolation, fallback."""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import time
from pathlib import Path

import pytest
from gitutil import commit, git, make_repo

from ciwatch.checkouts import FreshCheckout, FreshCheckouts
from ciwatch.errors import GitError, WorkspaceError
from ciwatch.workspace import Mirror, Mirrors
from ciwatch.wscache import CachedCheckout, CachedCheckouts, checkout_strategy

FILES = {
    ".gitignore": "build/\n*.log\n",
    "a.txt": "alpha\n",
    "d/b.txt": "beta\n",
    "d/e/c.txt": "gamma\n",
    "run.sh": "#!/bin/sh\necho hi\n",
}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(source work tree, mirror, CachedCheckouts, fresh-clone counter)."""
    src = tmp_path / "origin"
    make_repo(src, FILES)
    os.chmod(src / "run.sh", 0o755)
    commit(src, {}, "exec bit")
    state = tmp_path / "state"
    mirror = Mirrors(state, timeout=20).mirror(3, str(src))
    mirror.fetch()
    fresh_calls: list[str] = []
    real = Mirror.checkout

    def counting(self, sha, dest, **kw):
        fresh_calls.append(sha)
        return real(self, sha, dest, **kw)

    monkeypatch.setattr(Mirror, "checkout", counting)
    return src, mirror, CachedCheckouts(state), fresh_calls


def files_of(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every path under a work tree (outside .git) with its content and exec bit."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root):
            dirnames.remove(".git")
        for name in filenames + [d for d in dirnames if not os.listdir(os.path.join(dirpath, d))]:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            out[rel] = (p.read_bytes() if p.is_file() else b"<dir>", os.stat(p).st_mode & 0o111)
    return out


def assert_same_as_fresh(tree: Path, mirror: Mirror, sha: str, tmp_path: Path) -> None:
    fresh = tmp_path / f"fresh-{sha[:8]}"
    git(tmp_path, "clone", "-q", "--no-checkout", str(mirror.path), str(fresh))
    git(fresh, "checkout", "-q", "--detach", sha)
    assert git(tree, "rev-parse", "HEAD") == sha
    assert git(tree, "ls-files", "-s") == git(fresh, "ls-files", "-s")
    assert files_of(tree) == files_of(fresh)


def test_reuse_leaves_nothing_of_the_previous_run(env, tmp_path: Path) -> None:
    src, mirror, cache, fresh_calls = env
    first = git(src, "rev-parse", "HEAD")
    second = commit(src, {"a.txt": "alpha 2\n", "d/new.txt": "new\n"}, "next")
    mirror.fetch()

    ws = cache.acquire(mirror, first, tmp_path / "att1")
    assert isinstance(ws, CachedCheckout) and ws.slot == 0
    tree = ws.path
    (tree / "a.txt").write_text("tampered\n")  # tracked, modified
    (tree / "d/b.txt").unlink()  # tracked, deleted
    (tree / "untracked.txt").write_text("u")
    (tree / "build").mkdir()
    (tree / "build/out.o").write_text("ignored")
    (tree / "x.log").write_text("ignored too")
    make_repo(tree / "nested", {"n.txt": "nested repo"})
    (tree / "locked/inner").mkdir(parents=True)
    (tree / "locked/inner/f").write_text("f")
    os.chmod(tree / "locked", 0)
    (ws.home / ".profile").write_text("home of attempt 1")
    ws.remove()
    assert not (tmp_path / "att1").exists()

    ws2 = cache.acquire(mirror, second, tmp_path / "att2")
    try:
        assert isinstance(ws2, CachedCheckout) and ws2.path == tree
        assert fresh_calls == [first]  # the second use updated in place
        assert not (tree / "locked").exists() and not (tree / "nested").exists()
        assert list(ws2.home.iterdir()) == [] and list(ws2.tmp.iterdir()) == []
        assert_same_as_fresh(tree, mirror, second, tmp_path)
    finally:
        ws2.remove()


def forge_index_entry(repo: Path, name: str, oid: str) -> None:
    """Make the index claim `name` holds blob `oid`, with stat data that matches
    the file as it is now (so git itself sees nothing to refresh)."""
    index = repo / ".git" / "index"
    data = bytearray(index.read_bytes()[:-20])
    raw = name.encode()
    # An entry ends: oid (20 bytes), flags (2, low 12 bits the name length), name, NUL.
    flags_at = data.index(struct.pack(">H", len(raw)) + raw + b"\0")
    data[flags_at - 20 : flags_at] = bytes.fromhex(oid)
    index.write_bytes(bytes(data) + hashlib.sha1(data).digest())


def test_a_forged_index_does_not_hide_a_changed_file(env, tmp_path: Path) -> None:
    src, mirror, cache, fresh_calls = env
    sha = git(src, "rev-parse", "HEAD")
    ws = cache.acquire(mirror, sha, tmp_path / "a1")
    good_oid = git(ws.path, "rev-parse", "HEAD:a.txt")
    (ws.path / "a.txt").write_text("ALPHA\n")  # same size as the original
    past = time.time() - 10
    os.utime(ws.path / "a.txt", (past, past))  # not "racily clean": git trusts the stat
    git(ws.path, "update-index", "a.txt")
    forge_index_entry(ws.path, "a.txt", good_oid)
    assert git(ws.path, "status", "--porcelain") == ""  # git itself is fooled
    ws.remove()
    ws = cache.acquire(mirror, sha, tmp_path / "a2")
    try:
        assert fresh_calls == [sha]
        assert (ws.path / "a.txt").read_text() == "alpha\n"
        assert_same_as_fresh(ws.path, mirror, sha, tmp_path)
    finally:
        ws.remove()


def test_planted_hooks_and_config_never_run_and_are_gone(env, tmp_path: Path) -> None:
    src, mirror, cache, _ = env
    sha = git(src, "rev-parse", "HEAD")
    ws = cache.acquire(mirror, sha, tmp_path / "a1")
    marker = tmp_path / "pwned"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\necho ran >> {marker}\ncat\n")
    script.chmod(0o755)
    hooks = ws.path / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    for name in ("post-checkout", "reference-transaction"):
        (hooks / name).write_text(script.read_text())
        (hooks / name).chmod(0o755)
    git(ws.path, "config", "core.fsmonitor", str(script))
    git(ws.path, "config", "core.hooksPath", str(hooks))
    git(ws.path, "config", "filter.evil.smudge", str(script))
    (ws.path / ".git" / "info").mkdir(exist_ok=True)
    (ws.path / ".git" / "info" / "attributes").write_text("* filter=evil\n")
    assert not marker.exists()
    ws.remove()

    ws = cache.acquire(mirror, sha, tmp_path / "a2")
    try:
        assert not marker.exists()
        assert not (ws.path / ".git" / "hooks" / "post-checkout").exists()
        assert not (ws.path / ".git" / "info" / "attributes").exists()
        config = (ws.path / ".git" / "config").read_text()
        assert "fsmonitor" not in config and "evil" not in config
        assert git(ws.path, "config", "core.hooksPath") == "/dev/null"
        assert git(ws.path, "config", "remote.origin.url") == str(src)
        git(ws.path, "status")  # a step's own git does not run them either
        git(ws.path, "checkout", "-q", "--detach", "HEAD~1")
        assert not marker.exists()
    finally:
        ws.remove()


def test_links_planted_in_git_dir_are_replaced_not_written_through(env, tmp_path: Path) -> None:
    src, mirror, cache, fresh_calls = env
    sha = git(src, "rev-parse", "HEAD")
    outside = tmp_path / "outside"
    outside.write_text("precious\n")
    ws = cache.acquire(mirror, sha, tmp_path / "a1")
    gd = ws.path / ".git"
    (gd / "config").unlink()
    (gd / "config").symlink_to(outside)
    (gd / "index").unlink()
    os.link(outside, gd / "index")
    (gd / "objects" / "info" / "alternates").write_text(str(tmp_path) + "\n")
    ws.remove()
    ws = cache.acquire(mirror, sha, tmp_path / "a2")
    try:
        assert outside.read_text() == "precious\n"
        assert not (ws.path / ".git" / "config").is_symlink()
        alternates = (ws.path / ".git" / "objects" / "info" / "alternates").read_text()
        assert alternates.strip() == str(mirror.path / "objects")
        assert_same_as_fresh(ws.path, mirror, sha, tmp_path)
    finally:
        ws.remove()


def test_reused_checkout_sees_refs_fetched_since(env, tmp_path: Path) -> None:
    src, mirror, cache, fresh_calls = env
    sha = git(src, "rev-parse", "HEAD")
    cache.acquire(mirror, sha, tmp_path / "a1").remove()
    cache.acquire(mirror, sha, tmp_path / "a2").remove()  # the .git template exists now
    git(src, "tag", "v9.9")
    newer = commit(src, {"z.txt": "z"}, "later")
    mirror.fetch()
    ws = cache.acquire(mirror, newer, tmp_path / "a3")
    try:
        assert fresh_calls == [sha]
        assert git(ws.path, "describe", "--tags") == "v9.9-1-g" + newer[:7]
        assert git(ws.path, "rev-parse", "refs/remotes/origin/main") == newer
    finally:
        ws.remove()


def test_concurrent_attempts_get_different_slots(env, tmp_path: Path) -> None:
    src, mirror, cache, _ = env
    sha = git(src, "rev-parse", "HEAD")
    got: list = []
    barrier = threading.Barrier(2)

    def take(n: int) -> None:
        barrier.wait()
        got.append(cache.acquire(mirror, sha, tmp_path / f"t{n}"))

    threads = [threading.Thread(target=take, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(w.slot for w in got) == [0, 1]
    assert got[0].path != got[1].path
    freed = next(w for w in got if w.slot == 0)
    freed.remove()
    again = cache.acquire(mirror, sha, tmp_path / "t3")
    assert again.slot == 0  # a released slot is reused
    for w in (again, *[w for w in got if w is not freed]):
        w.remove()


def test_all_slots_busy_gives_a_fresh_checkout(env, tmp_path: Path) -> None:
    src, mirror, _, _ = env
    cache = CachedCheckouts(tmp_path / "state", max_slots=1)
    sha = git(src, "rev-parse", "HEAD")
    held = cache.acquire(mirror, sha, tmp_path / "a1")
    other = cache.acquire(mirror, sha, tmp_path / "a2")
    assert isinstance(other, FreshCheckout)
    assert other.path == tmp_path / "a2" / "src" and (other.path / "a.txt").is_file()
    other.remove()
    held.remove()
    assert not (tmp_path / "a2").exists()


def test_corrupted_cache_falls_back_to_fresh(env, tmp_path: Path) -> None:
    src, mirror, cache, fresh_calls = env
    sha = git(src, "rev-parse", "HEAD")
    ws = cache.acquire(mirror, sha, tmp_path / "a1")
    tree = ws.path
    (tree / "stray").write_text("left over")
    (ws.path / "locked").mkdir()
    (ws.path / "locked" / "f").write_text("x")
    os.chmod(ws.path / "locked", 0)
    for p in sorted((tree / ".git").rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() or p.is_symlink() else p.rmdir()
    (tree / ".git").rmdir()
    ws.remove()
    ws = cache.acquire(mirror, sha, tmp_path / "a2")
    try:
        assert fresh_calls == [sha, sha]
        assert not (tree / "stray").exists()
        assert_same_as_fresh(ws.path, mirror, sha, tmp_path)
    finally:
        ws.remove()


def test_kept_tree_moves_out_of_the_cache(env, tmp_path: Path) -> None:
    src, mirror, cache, fresh_calls = env
    sha = git(src, "rev-parse", "HEAD")
    ws = cache.acquire(mirror, sha, tmp_path / "a1")
    (ws.path / "evidence.txt").write_text("why it failed")
    kept = ws.keep()
    assert kept == tmp_path / "a1" / "src"
    assert (kept / "evidence.txt").read_text() == "why it failed"
    assert git(kept, "rev-parse", "HEAD") == sha
    ws = cache.acquire(mirror, sha, tmp_path / "a2")
    try:
        assert ws.slot == 0 and fresh_calls == [sha, sha]
        assert not (ws.path / "evidence.txt").exists()
        assert (kept / "evidence.txt").exists()  # the kept one is left alone
    finally:
        ws.remove()


def test_failed_checkout_leaves_no_attempt_dir_and_frees_the_slot(env, tmp_path: Path) -> None:
    src, mirror, cache, _ = env
    with pytest.raises(GitError):
        cache.acquire(mirror, "1" * 40, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    sha = git(src, "rev-parse", "HEAD")
    ws = cache.acquire(mirror, sha, tmp_path / "good")
    assert ws.slot == 0
    ws.remove()


def test_strategy_by_name(env, tmp_path: Path) -> None:
    src, mirror, _, _ = env
    sha = git(src, "rev-parse", "HEAD")
    assert isinstance(checkout_strategy("cached", tmp_path / "state"), CachedCheckouts)
    fresh = checkout_strategy("fresh", tmp_path / "state")
    assert isinstance(fresh, FreshCheckouts)
    ws = fresh.acquire(mirror, sha, tmp_path / "f1")
    assert (ws.path / "d/e/c.txt").read_text() == "gamma\n"
    assert ws.keep() == ws.path
    ws.remove()
    assert not (tmp_path / "f1").exists()
    with pytest.raises(WorkspaceError, match="unknown workspace strategy"):
        checkout_strategy("incremental", tmp_path / "state")
