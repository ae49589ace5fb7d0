"""The one place that runs git: a minimal environment, argv lists, timeouts.

Everything that reaches git from outside (URLs, ref names, shas, paths) is
checked here before git starts. Refs are always fully qualified and placed after
``--end-of-options``; shas are hex only. System and user config are not read,
and hooks or fsmonitor named in any repository's config never run.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ciwatch.errors import GitError
from ciwatch.model import ref_from_bytes

DEFAULT_PROTOCOLS = ("file", "git", "http", "https", "ssh")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

# Given on every call, so neither a repository's config nor its hooks dir can
# make git run a program (hooks also fire on fetch: reference-transaction).
SAFE_CONFIG = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "submodule.recurse=false",
    "gc.autoDetach=false",
    "advice.detachedHead=false",
)

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.S)
_TRANSPORT = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)::", re.S)
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")
_SSH_SCHEMES = {"ssh", "git+ssh", "ssh+git"}


class GitCommandError(GitError):
    """git ran and failed. `argv` is the redacted command, `stderr` its tail."""

    def __init__(
        self, message: str, argv: str = "", stderr: str = "", returncode: int | None = None
    ) -> None:
        super().__init__(message)
        self.argv = argv
        self.stderr = stderr
        self.returncode = returncode


class NotInCommitError(GitError):
    """The path is missing from the commit, or is a directory (FileNotFoundError-like)."""

    def __init__(self, message: str, sha: str = "", path: str = "") -> None:
        super().__init__(message)
        self.sha = sha
        self.path = path


def is_zero_sha(sha: str | None) -> bool:
    return bool(sha) and set(sha) == {"0"}


def check_sha(sha: str) -> str:
    """A full object id, lowercase hex (40 for SHA-1, 64 for SHA-256)."""
    if not isinstance(sha, str) or not _SHA.fullmatch(sha.lower()):
        raise GitError(f"not a full commit sha: {sha!r}")
    return sha.lower()


def check_ref(ref: str) -> str:
    """A fully qualified ref name git would accept (git check-ref-format rules)."""
    raw = ref.encode("utf-8", "surrogateescape") if isinstance(ref, str) else b""
    bad = (
        not raw.startswith(b"refs/")
        or raw.endswith((b"/", b".", b".lock"))
        or any(c < 0x20 or c == 0x7F for c in raw)
        or any(ch in raw for ch in (b" ", b"~", b"^", b":", b"?", b"*", b"[", b"\\"))
        or b".." in raw
        or b"@{" in raw
        or b"//" in raw
        or any(part.startswith(b".") or part.endswith(b".lock") for part in raw.split(b"/"))
    )
    if bad:
        raise GitError(f"not a valid fully qualified ref name: {ref!r}")
    return ref


def redact(text: str) -> str:
    """Drop userinfo (user:password@) from every URL in `text`."""
    return _USERINFO.sub(r"\1***@", text)


def url_protocol(url: str) -> str:
    """The protocol git would use for `url`: file, ssh, git, http, https, ext, ..."""
    m = _SCHEME.match(url)
    if m:
        scheme = m.group(1).lower()
        return "ssh" if scheme in _SSH_SCHEMES else scheme
    m = _TRANSPORT.match(url)
    if m:
        return m.group(1).lower()
    colon, slash = url.find(":"), url.find("/")
    if colon > 0 and (slash < 0 or colon < slash):
        return "ssh"  # scp-like host:path
    return "file"


def check_url(url: str, allowed: Sequence[str]) -> str:
    """Refuse a URL git must never see; return its protocol. Runs before git does."""
    shown = redact(url)
    if not isinstance(url, str) or not url:
        raise GitError("empty repository URL")
    if url.startswith("-"):
        raise GitError(f"repository URL may not start with '-': {shown!r}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise GitError(f"repository URL holds control characters: {shown!r}")
    proto = url_protocol(url)
    if _TRANSPORT.match(url) and not _SCHEME.match(url) and proto not in allowed:
        raise GitError(f"git transport {proto}:: is not allowed: {shown!r}")
    if proto not in allowed:
        allowed_list = ", ".join(allowed)
        raise GitError(f"protocol {proto!r} is not allowed (allowed: {allowed_list}): {shown!r}")
    if proto == "ssh":
        m = _SCHEME.match(url)
        authority = m.group(2).split("/", 1)[0] if m else url.split(":", 1)[0]
        host = authority.rsplit("@", 1)[-1]
        user = authority.rsplit("@", 1)[0] if "@" in authority else ""
        if host.startswith(("-", "[-")) or user.startswith("-"):
            raise GitError(f"ssh host or user may not start with '-': {shown!r}")
    return proto


def _arg(a: str | bytes | os.PathLike) -> bytes:
    return a if isinstance(a, bytes) else os.fsencode(a)


def render_argv(args: Sequence[str | bytes | os.PathLike]) -> str:
    """A printable, redacted form of a git command for error messages."""
    parts = []
    for a in args:
        text = _arg(a).decode("utf-8", "replace")
        parts.append(shlex.quote(redact(text if len(text) <= 200 else text[:200] + "…")))
    return "git " + " ".join(parts)


@dataclass(frozen=True)
class GitResult:
    returncode: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True)
class Git:
    """How ciwatch runs git. `home` is an empty directory of ours (git's HOME)."""

    home: Path
    allowed_protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    timeout: float = 600.0
    search_path: str = field(default_factory=lambda: os.environ.get("PATH") or DEFAULT_PATH)
    extra_env: tuple[tuple[str, str], ...] = ()
    executable: str = "git"

    def env(self) -> dict[str, str]:
        env = {
            "PATH": self.search_path,
            "HOME": str(self.home),
            "LANG": "C",
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_LITERAL_PATHSPECS": "1",  # a path is a path, never a glob or :(magic)
            "GIT_ALLOW_PROTOCOL": ":".join(self.allowed_protocols),
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
        }
        env.update(self.extra_env)
        return env

    def call(
        self,
        args: Sequence[str | bytes | os.PathLike],
        *,
        git_dir: Path | None = None,
        work_tree: Path | None = None,
        cwd: Path | None = None,
        timeout: float | None = None,
    ) -> GitResult:
        """Run git; any exit status is returned (a timeout raises GitError)."""
        argv: list[bytes] = [_arg(self.executable)]
        for item in SAFE_CONFIG:
            argv += [b"-c", item.encode()]
        if git_dir is not None:
            argv.append(b"--git-dir=" + os.fsencode(git_dir))
        if work_tree is not None:
            argv.append(b"--work-tree=" + os.fsencode(work_tree))
        argv += [_arg(a) for a in args]
        where = cwd or git_dir or self.home
        return _run_git(argv, self.env(), where, timeout or self.timeout, args)

    def run(self, args: Sequence[str | bytes | os.PathLike], **kw) -> bytes:
        """Run git and return its stdout; a non-zero exit raises GitCommandError."""
        res = self.call(args, **kw)
        if res.returncode != 0:
            cmd = render_argv(args)
            tail = redact(res.stderr[-2000:].decode("utf-8", "replace").strip())
            raise GitCommandError(
                f"{cmd} failed (exit {res.returncode}): {tail}", cmd, tail, res.returncode
            )
        return res.stdout


def _run_git(
    argv: list[bytes], env: dict[str, str], cwd: Path, timeout: float, shown: Sequence
) -> GitResult:
    """The only function that starts git. Its own session, so a timeout kills
    the whole tree it spawned (upload-pack, ssh, remote helpers)."""
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise GitError(f"cannot start git: {exc}") from exc
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise GitCommandError(
            f"{render_argv(shown)} timed out after {timeout:g}s", render_argv(shown)
        ) from None
    return GitResult(proc.returncode, out, err)


def local_repo_info(path: Path, *, git: Git | None = None) -> tuple[str, str, str]:
    """For `ciwatch run PATH`: (git dir to mirror from, HEAD's ref or "" when
    detached, HEAD's sha). PATH may be a work tree (or inside one) or a bare repo."""
    path = Path(os.path.abspath(path))
    if not path.is_dir():
        raise GitError(f"not a directory: {path}")
    g = git or Git(Path("/nonexistent"))
    # One call: the commit, the git dir, HEAD's full name ("HEAD" when detached).
    res = g.call(
        [
            "rev-parse",
            "HEAD^{commit}",
            "--path-format=absolute",
            "--git-common-dir",
            "--symbolic-full-name",
            "HEAD",
        ],
        cwd=path,
    )
    lines = res.stdout.split(b"\n")
    if res.returncode != 0 or len(lines) < 3:
        if b"not a git repository" in res.stderr:
            raise GitError(f"{path} is not a git repository")
        raise GitError(f"{path} has no commits yet")
    sha, git_dir, head = lines[0].decode().strip(), lines[1], lines[2]
    ref = ref_from_bytes(head) if head.startswith(b"refs/") else ""
    return git_dir.decode("utf-8", "surrogateescape"), ref, check_sha(sha)


def init_repo_with_files(path: Path, *, message: str, git: Git | None = None) -> str:
    """Make `path` a repository (branch main) whose one commit holds the files
    already there; returns the commit's sha. Used for the shipped example."""
    g = git or Git(Path("/nonexistent"))
    ident = ["-c", "user.name=ciwatch", "-c", "user.email=ciwatch@localhost"]
    g.run(["init", "--quiet", "--initial-branch=main"], cwd=path)
    wt = {"git_dir": Path(path) / ".git", "work_tree": Path(path), "cwd": Path(path)}
    g.run(["add", "--all"], **wt)
    g.run([*ident, "commit", "--quiet", "--no-verify", "-m", message], **wt)
    return check_sha(g.run(["rev-parse", "--verify", "HEAD"], **wt).decode().strip())
