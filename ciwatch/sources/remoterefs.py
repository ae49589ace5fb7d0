"""A polled remote's refs: what to poll (`PollTarget`, checked before use),
`git ls-remote` with a timeout under the interval, and a failure told in one
line without the URL's credentials."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ciwatch.errors import CiwatchError, ConfigError, GitError
from ciwatch.git import Git, check_url, redact, url_protocol
from ciwatch.model import Repo, ref_from_bytes
from ciwatch.pipeline.globs import GlobError, check

__all__ = ["PollTarget", "check_targets", "describe_failure", "ls_remote"]

_SHA = re.compile(rb"(?:[0-9a-f]{40}|[0-9a-f]{64})")
_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/@\s]+)@")
_PULL = re.compile(r"^refs/(?:pull|merge-requests)/[0-9]{1,9}/head$")
MAX_LS_REMOTE = 30.0  # seconds; less when the interval is shorter


@dataclass(frozen=True)
class PollTarget:
    repo: Repo
    url: str
    interval: float
    branches: tuple[str, ...] = ()  # globs (ciwatch.pipeline.globs); () = every branch
    pull_requests: bool = False  # also refs/pull/*/head, refs/merge-requests/*/head


def ls_remote(git: Git, target: PollTarget) -> dict[str, str]:
    """The remote's branches and tags (and PR heads when asked), unpeeled."""
    args = ["-c", "protocol.version=1"] if url_protocol(target.url) == "git" else []
    args += ["ls-remote", "--refs"]
    if not target.pull_requests:
        args += ["--heads", "--tags"]  # with protocol v2 the server filters too
    timeout = max(0.1, min(0.8 * target.interval, MAX_LS_REMOTE))
    check_url(target.url, git.allowed_protocols)
    out = git.run([*args, "--end-of-options", target.url], timeout=timeout)
    refs = {}
    for line in out.split(b"\n"):
        sha, _, raw = line.partition(b"\t")
        if not _SHA.fullmatch(sha):
            continue
        ref = ref_from_bytes(raw)
        if ref.startswith(("refs/heads/", "refs/tags/")) or (
            target.pull_requests and _PULL.match(ref)
        ):
            refs[ref] = sha.decode()
    return refs


def describe_failure(exc: CiwatchError, url: str) -> str:
    """One line saying why a poll failed, without the URL's credentials: git
    also echoes them without a scheme ("unable to look up user:pw@host")."""
    stderr = getattr(exc, "stderr", "")
    text = " ".join((stderr or str(exc) or type(exc).__name__).split())[:500]
    m = _USERINFO.match(url)
    if m:
        password = m.group(1).partition(":")[2]
        for secret in (m.group(1), password):
            if secret:
                text = text.replace(secret, "***")
    return redact(text)


def check_targets(targets: list[PollTarget], protocols: tuple[str, ...]) -> None:
    problems = []
    seen: set[str] = set()
    for t in targets:
        name = t.repo.name
        if name in seen:
            problems.append(f"repo {name}: polled twice")
        seen.add(name)
        if not t.interval > 0:
            problems.append(f"repo {name}: poll_interval must be positive")
        try:
            check_url(t.url, protocols)
        except GitError as exc:
            problems.append(f"repo {name}: url: {exc}")
        for pattern in t.branches:
            try:
                check(pattern)
            except GlobError as exc:
                problems.append(f"repo {name}: branches: {exc}")
    if problems:
        raise ConfigError(problems)
