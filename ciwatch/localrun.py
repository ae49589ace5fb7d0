"""Turn `ciwatch run PATH [--ref] [--sha] [--event]` into a run claimed by this process."""

from __future__ import annotations

import re
from pathlib import Path

from ciwatch.commitinfo import read_commit_info
from ciwatch.errors import CiwatchError, GitError
from ciwatch.model import Attempt, Event, EventKind, Run
from ciwatch.workspace import local_repo_info

_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


def repo_name_for(path: Path) -> str:
    name = path.resolve().name
    name = name[:-4] if name.endswith(".git") else name
    return re.sub(r"[^A-Za-z0-9._-]", "-", name).strip(".-") or "repo"


def _kind_for(ref: str) -> EventKind:
    if ref.startswith("refs/tags/"):
        return EventKind.TAG
    if ref.startswith("refs/heads/"):
        return EventKind.PUSH
    return EventKind.MANUAL


def prepare_local_run(
    store,
    mirrors,
    path: Path,
    *,
    ref: str | None,
    sha: str | None,
    event: str | None,
    worker: str,
    lease_seconds: float,
) -> tuple[Run, Attempt]:
    url, head_ref, head_sha = local_repo_info(path)
    repo = store.ensure_repo(repo_name_for(path), url)
    mirror = mirrors.mirror(repo.id, url)
    if ref or sha:
        mirror.fetch()  # to resolve the ref; HEAD alone needs only its commit (ensure)
    if ref and not ref.startswith("refs/"):
        for candidate in (f"refs/heads/{ref}", f"refs/tags/{ref}"):
            try:
                mirror.resolve(candidate)
                ref = candidate
                break
            except GitError:
                continue
        else:
            raise CiwatchError(f"no branch or tag named {ref!r} in {path}")
    if sha is not None:
        sha = sha.lower()
        if not _SHA.match(sha):
            raise CiwatchError(f"--sha {sha!r}: give a full 40-character commit id")
        mirror.ensure(sha)
    elif ref:
        sha = mirror.resolve(ref)
    else:
        sha = head_sha
    ref = ref or head_ref or "HEAD"
    kind = EventKind(event) if event else _kind_for(ref)
    ev = Event(repo=repo.name, kind=kind, ref=ref, sha=sha, source="cli")
    # Claimed as it is made: a daemon sharing this state never queues it too.
    run, attempt = store.submit_claimed(ev, worker, lease_seconds)
    try:
        mirror.ensure(sha)  # the runner would fetch it first thing anyway
        info = read_commit_info(mirror, sha)
        store.set_commit_info([(run.id, info.subject, info.author)])
    except CiwatchError:
        pass  # the runner meets the same problem and records it in the run
    return run, attempt
