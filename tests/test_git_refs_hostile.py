"""Hostile ref names and URLs against real git (RELIABILITY.md 2.1, checklist A).

Every hostile branch is pushed for real into a bare repository, mirrored,
resolved and checked out. A `git` wrapper first in PATH records the exact argv
of every call; bait (a `./helper` program, a `./t` template dir with hooks) sits
in every directory git runs in, so a ref parsed as an option would leave a trace.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from ciwatch.attemptdir import workspace_dir
from ciwatch.errors import GitError
from ciwatch.model import ref_bytes, ref_from_bytes
from ciwatch.workspace import Mirrors

REAL_GIT = shutil.which("git") or "/usr/bin/git"

HOSTILE = [
    b"--upload-pack=touch${IFS}pwned;git-upload-pack",
    b"-x",
    b"-c",
    b"--upl",
    b"-u./helper",
    b"-cprotocol.ext.allow=always",
    b"--template=./t",
    b"--output=./f",
    b"$(id)",
    b"`id`",
    b"a;id",
    b"a|b&c",
    b"{a,b}",
    b"a'b\"c",
    b'zzz";echo${IFS}"hello";#',
    b"bad\xff\xfe",
    b"/".join([b"x" * 199] * 4),  # an 800-byte ref, components under NAME_MAX
    b"HEAD",
    b"@",
    b"%2e%2e",
    "ｍain".encode(),  # fullwidth look-alike
]
REFS = [b"refs/heads/" + n for n in HOSTILE] + [b"refs/tags/" + HOSTILE[0]]
BAIT_NAMES = {"pwned", "f", "hello", "BAIT-RAN"}


def _git(*args: bytes | str | Path, cwd: Path, input: bytes | None = None) -> bytes:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(cwd),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    argv = [REAL_GIT, *[a if isinstance(a, bytes) else os.fsencode(a) for a in args]]
    return subprocess.run(
        argv, cwd=cwd, env=env, input=input, check=True, capture_output=True
    ).stdout


def _plant_bait(d: Path, marker: Path) -> None:
    """Programs that leave `marker` if git ever runs them."""
    d.mkdir(parents=True, exist_ok=True)
    script = f"#!/bin/sh\necho ran >> '{marker}'\n"
    helper = d / "helper"
    helper.write_text(script)
    helper.chmod(0o755)
    hooks = d / "t" / "hooks"
    hooks.mkdir(parents=True, exist_ok=True)
    for name in ("post-checkout", "reference-transaction", "post-merge", "pre-commit"):
        (hooks / name).write_text(script)
        (hooks / name).chmod(0o755)


class World:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.marker = base / "BAIT-RAN"
        self.calls = base / "calls"
        self.calls.mkdir()
        bindir = base / "bin"
        bindir.mkdir()
        wrapper = bindir / "git"
        wrapper.write_text(
            "#!/bin/sh\n"
            f"f=$(mktemp '{self.calls}/c.XXXXXXXX')\n"
            'for a in "$@"; do printf "%s\\0" "$a" >> "$f"; done\n'
            f'exec {REAL_GIT} "$@"\n'
        )
        wrapper.chmod(0o755)
        self.remote = base / "remote.git"
        _git("init", "-q", "--bare", self.remote, cwd=base)
        work = base / "work"
        _git("init", "-q", work, cwd=base)
        self.sha: dict[bytes, str] = {}
        pushes = []
        for i, ref in enumerate(REFS):
            blob = _git("hash-object", "-w", "--stdin", cwd=work, input=f"{i}\n".encode())
            tree = _git("mktree", cwd=work, input=b"100644 blob " + blob.strip() + b"\twhich.txt\n")
            commit = _git("commit-tree", "-m", f"commit {i}", tree.strip(), cwd=work)
            self.sha[ref] = commit.decode().strip()
            pushes.append(commit.strip() + b":" + ref)
        _git("push", "-q", self.remote, *pushes, cwd=work)
        self.state = base / "state"
        self.mirrors = Mirrors(self.state, search_path=f"{bindir}:{os.environ['PATH']}")
        self.mirror = self.mirrors.mirror(1, str(self.remote))
        for d in (base, self.mirror.path, self.state):
            _plant_bait(d, self.marker)

    def argvs(self) -> list[list[bytes]]:
        out = []
        for f in sorted(self.calls.iterdir()):
            out.append(f.read_bytes().split(b"\0")[:-1])
            f.unlink()
        return out

    def files(self) -> set[Path]:
        """Everything under the test dir except ref storage, objects and workspaces
        (where hostile names and new objects legitimately appear)."""
        skip = {"refs", "objects", "calls", "workspaces"}
        return {p for p in self.base.rglob("*") if not skip & set(p.relative_to(self.base).parts)}

    def strays(self) -> list[Path]:
        """Files named like a payload's output, or any file that was not there before."""
        named = [p for p in self.files() if p.name in BAIT_NAMES]
        return named + sorted(self.files() - self.before)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    w = World(tmp_path_factory.mktemp("hostile"))
    w.before = w.files()
    w.mirror.fetch()
    w.argvs()
    return w


PREFIX = [
    b"-c",
    b"core.hooksPath=/dev/null",
    b"-c",
    b"core.fsmonitor=false",
    b"-c",
    b"submodule.recurse=false",
    b"-c",
    b"gc.autoDetach=false",
    b"-c",
    b"advice.detachedHead=false",
]


def test_pushing_hostile_names_really_created_them(world: World) -> None:
    listed = _git("for-each-ref", "--format=%(refname)", cwd=world.remote).split(b"\n")
    for ref in REFS:
        assert ref in listed


def test_full_fetch_mirrors_every_hostile_ref(world: World) -> None:
    for ref in REFS:
        assert world.mirror.resolve(ref_from_bytes(ref)) == world.sha[ref]
    assert not world.strays()


@pytest.mark.parametrize("ref", REFS, ids=[r.decode("utf-8", "replace")[:40] for r in REFS])
def test_hostile_ref_fetch_resolve_checkout(world: World, ref: bytes) -> None:
    name = ref_from_bytes(ref)
    world.mirror.fetch([name])
    sha = world.mirror.resolve(name)
    assert sha == world.sha[ref]
    n = REFS.index(ref)
    ws = world.mirror.checkout(sha, workspace_dir(world.state, 1, n + 1, 1))
    try:
        assert (ws.path / "which.txt").read_text() == f"{n}\n"
        assert sorted(p.name for p in ws.path.iterdir()) == [".git", "which.txt"]
        calls = world.argvs()
        # The exact argv of the two calls that carry the ref.
        mirror_dir = b"--git-dir=" + os.fsencode(world.mirror.path)
        assert [
            *PREFIX,
            mirror_dir,
            b"fetch",
            b"--quiet",
            b"--no-tags",
            b"--no-recurse-submodules",
            b"--no-write-fetch-head",
            b"--end-of-options",
            os.fsencode(world.remote),
            b"+" + ref + b":" + ref,
        ] in calls
        assert [
            *PREFIX,
            mirror_dir,
            b"rev-parse",
            b"--verify",
            b"--end-of-options",
            ref + b"^{commit}",
        ] in calls
        # And in no call does the name stand where git parses options.
        for argv in calls:
            for i, arg in enumerate(argv):
                if ref[len(b"refs/x/") :] in arg and arg not in (b"refs/heads", b"refs/tags"):
                    assert b"--end-of-options" in argv[:i], argv
                    assert arg.lstrip(b"+").startswith(b"refs/"), argv
    finally:
        ws.remove()
    assert not world.strays()
    assert not world.marker.exists()


def test_a_name_not_fully_qualified_is_refused_before_git_runs(world: World) -> None:
    world.argvs()
    for bad in (
        "-x",
        "--upload-pack=touch pwned",
        "main",
        "refs/heads/main~1",
        "refs/heads/a..b",
        "refs/heads/x^{tree}",
        "refs/heads/a@{1}",
        "refs/heads/a:b",
    ):
        with pytest.raises(GitError):
            world.mirror.resolve(bad)
        with pytest.raises(GitError):
            world.mirror.fetch([bad])
    assert world.argvs() == []


def test_non_utf8_ref_round_trips(world: World) -> None:
    ref = b"refs/heads/bad\xff\xfe"
    name = ref_from_bytes(ref)
    assert ref_bytes(name) == ref
    assert world.mirror.resolve(name) == world.sha[ref]


def test_a_sha_that_is_not_hex_is_refused(world: World, tmp_path: Path) -> None:
    world.argvs()
    for bad in ("-x", "HEAD", "0" * 39, "g" * 40, "--output=./f", world.sha[REFS[0]] + "^"):
        with pytest.raises(GitError):
            world.mirror.checkout(bad, tmp_path / "ws")
        with pytest.raises(GitError):
            world.mirror.read_blob(bad, "which.txt", 100)
    assert world.argvs() == []
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% pwned",
        "ext::sh -c touch% >&2",
        "fd::3",
        "fd::0,1/x",
        "ssh://-oProxyCommand=touch%20pwned/repo",
        "ssh://user@-oProxyCommand=touch%20pwned/repo",
        "ssh://[-oProxyCommand=touch pwned]/repo",
        "-oProxyCommand=touch pwned:repo",
        "git@-oProxyCommand=x:repo",
        "--upload-pack=touch pwned",
        "-u./helper",
        "https://example.org/repo\n.git",
        "foo::bar",
    ],
)
def test_disallowed_urls_are_refused_before_git_runs(world: World, url: str) -> None:
    world.argvs()
    with pytest.raises(GitError):
        world.mirrors.mirror(2, url)
    assert world.argvs() == []
    assert not (world.state / "mirrors" / "2.git").exists()
    assert not world.strays()


def test_protocol_allowlist_is_configurable(tmp_path: Path) -> None:
    https_only = Mirrors(tmp_path / "s", allowed_protocols=("https",))
    for url in ("file:///etc", "/etc", "git://127.0.0.1/x", "ssh://h/x", "h:x"):
        with pytest.raises(GitError, match="not allowed"):
            https_only.mirror(1, url)
    with pytest.raises(GitError) as info:
        https_only.mirror(1, "http://user:hunter2@127.0.0.1/x.git")
    assert "hunter2" not in str(info.value)


def test_git_itself_refuses_a_submodule_with_an_ext_url(world: World, tmp_path: Path) -> None:
    """The allowlist also reaches git (GIT_ALLOW_PROTOCOL): a submodule URL from
    the commit cannot name ext::, even when submodules are turned on."""
    work = tmp_path / "sub-work"
    _git("init", "-q", work, cwd=tmp_path)
    (work / ".gitmodules").write_text(
        f'[submodule "s"]\n\tpath = s\n\turl = ext::sh -c touch% {tmp_path}/pwned\n'
    )
    _git("add", ".gitmodules", cwd=work)
    _git("update-index", "--add", "--cacheinfo", f"160000,{world.sha[REFS[1]]},s", cwd=work)
    _git("commit", "-q", "-m", "sub", cwd=work)
    sha = _git("rev-parse", "HEAD", cwd=work).decode().strip()
    mirror = world.mirrors.mirror(3, str(work))
    mirror.ensure(sha)
    plain = mirror.checkout(sha, tmp_path / "plain")
    assert not any((plain.path / "s").iterdir())  # submodules off unless asked
    plain.remove()
    with pytest.raises(GitError):
        mirror.checkout(sha, tmp_path / "with-subs", submodules=True)
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "with-subs").exists()  # a failed checkout leaves nothing


def test_local_clone_has_no_hardlinks_into_the_source(world: World) -> None:
    """CVE-2024-32020/32021: objects arrive through the pack protocol, never linked."""
    source = {(s.st_dev, s.st_ino) for s in _stats(world.remote / "objects")}
    mine = list(_stats(world.mirror.path / "objects"))
    assert mine
    assert not source & {(s.st_dev, s.st_ino) for s in mine}
    assert all(s.st_nlink == 1 for s in mine)


def _stats(root: Path):
    for p in root.rglob("*"):
        st = p.lstat()
        if stat.S_ISREG(st.st_mode):
            yield st
