"""From ref snapshots to events (pure): what moved, what is new, what to build.

Shared by every source that sees refs (hook lines, the bare-repo watcher, the
poller, reconciliation at start), so a push means the same event whichever
source saw it first, and deduplication in the store can make it one run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ciwatch.model import Event, EventKind

ZERO = "0" * 40
_PULL = re.compile(r"^refs/(?:pull|merge-requests)/([0-9]{1,9})/head$")
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


@dataclass(frozen=True)
class RefChange:
    ref: str
    before: str | None  # None: a new ref
    after: str


def is_zero(sha: str | None) -> bool:
    return not sha or set(sha) == {"0"}


def diff_refs(old: Mapping[str, str], new: Mapping[str, str]) -> list[RefChange]:
    """Refs that are new or point elsewhere now, in name order. Deletions are
    not changes to build."""
    out = []
    for ref in sorted(new):
        after = new[ref]
        before = old.get(ref)
        if before != after:
            out.append(RefChange(ref, before, after))
    return out


def parse_hook_lines(data: bytes) -> tuple[list[RefChange], list[str]]:
    """`old new ref` lines as git gives a post-receive hook. Returns the changes
    (deletions dropped) and a problem per malformed line."""
    changes, problems = [], []
    for n, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        parts = line.split(b" ", 2)
        if len(parts) != 3:
            problems.append(f"line {n}: expected 'old new ref'")
            continue
        old, new = parts[0].decode("ascii", "replace"), parts[1].decode("ascii", "replace")
        ref = parts[2].rstrip(b"\r").decode("utf-8", "surrogateescape")
        if not _SHA.match(old) or not _SHA.match(new) or not ref.startswith("refs/"):
            problems.append(f"line {n}: not a ref update")
            continue
        if is_zero(new):
            continue  # a deletion: nothing to build
        changes.append(RefChange(ref, None if is_zero(old) else old, new))
    return changes, problems


def event_for(repo: str, change: RefChange, source: str) -> Event | None:
    """The event a ref change asks for, or None for refs ciwatch does not build
    (notes, stashes, remotes, …). PR heads are untrusted: no secrets."""
    ref = change.ref
    if ref.startswith("refs/heads/"):
        kind, trusted, pr = EventKind.PUSH, True, None
    elif ref.startswith("refs/tags/"):
        kind, trusted, pr = EventKind.TAG, True, None
    elif m := _PULL.match(ref):
        kind, trusted, pr = EventKind.PULL_REQUEST, False, int(m.group(1))
    else:
        return None
    return Event(
        repo=repo,
        kind=kind,
        ref=ref,
        sha=change.after,
        before=change.before,
        source=source,
        trusted=trusted,
        pr_number=pr,
    )


def events_for(repo: str, changes: Iterable[RefChange], source: str) -> list[Event]:
    return [e for c in changes if (e := event_for(repo, c, source)) is not None]
