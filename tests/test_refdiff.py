"""Hook lines and ref snapshots to events: what a push asks ciwatch to build."""

from __future__ import annotations

import pytest

from ciwatch.model import EventKind, ref_bytes
from ciwatch.sources.refdiff import (
    ZERO,
    RefChange,
    diff_refs,
    event_for,
    events_for,
    parse_hook_lines,
)

A, B, C = "a" * 40, "b" * 40, "c" * 40
S256 = "d" * 64


def line(old: str, new: str, ref: str | bytes) -> bytes:
    raw = ref if isinstance(ref, bytes) else ref.encode()
    return old.encode() + b" " + new.encode() + b" " + raw + b"\n"


PARSE_CASES = [
    # (id, stdin, expected changes, expected number of problems)
    ("update", line(A, B, "refs/heads/main"), [RefChange("refs/heads/main", A, B)], 0),
    ("new ref", line(ZERO, B, "refs/heads/new"), [RefChange("refs/heads/new", None, B)], 0),
    ("deletion dropped", line(A, ZERO, "refs/heads/gone"), [], 0),
    (
        "sha256 ids",
        line("0" * 64, S256, "refs/tags/v1"),
        [RefChange("refs/tags/v1", None, S256)],
        0,
    ),
    (
        "crlf tolerated",
        line(A, B, "refs/heads/x")[:-1] + b"\r\n",
        [RefChange("refs/heads/x", A, B)],
        0,
    ),
    ("no trailing newline", line(A, B, "refs/heads/x")[:-1], [RefChange("refs/heads/x", A, B)], 0),
    (
        "blank lines skipped",
        b"\n\n" + line(A, B, "refs/heads/x") + b"\n",
        [RefChange("refs/heads/x", A, B)],
        0,
    ),
    ("empty input", b"", [], 0),
    ("two fields", A.encode() + b" " + B.encode() + b"\n", [], 1),
    ("short sha", line("abc", B, "refs/heads/x"), [], 1),
    ("uppercase sha", line(A.upper(), B, "refs/heads/x"), [], 1),
    ("not under refs/", line(A, B, "HEAD"), [], 1),
    ("garbage", b"hello world\n\xff\xfe\x00\n", [], 2),
    (
        "good lines survive bad ones",
        b"junk\n" + line(A, B, "refs/heads/ok") + line(A, ZERO, "refs/heads/del"),
        [RefChange("refs/heads/ok", A, B)],
        1,
    ),
]


@pytest.mark.parametrize(
    "data,changes,n_problems", [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES]
)
def test_parse_hook_lines(data: bytes, changes: list[RefChange], n_problems: int) -> None:
    got, problems = parse_hook_lines(data)
    assert got == changes
    assert len(problems) == n_problems


HOSTILE = [
    b"refs/heads/--upload-pack=touch${IFS}pwned;x",
    b"refs/heads/$(touch${IFS}pwned)",
    b'refs/heads/zzz";touch${IFS}pwned;#',
    b"refs/heads/bad\xff\xfe",
    b"refs/heads/" + b"/".join([b"c" * 200] * 4),
]


@pytest.mark.parametrize(
    "raw", HOSTILE, ids=["upload-pack", "subst", "quote", "non-utf8", "800-bytes"]
)
def test_hostile_ref_names_are_carried_byte_for_byte(raw: bytes) -> None:
    changes, problems = parse_hook_lines(line(A, B, raw))
    assert problems == []
    [event] = events_for("app", changes, source="hook")
    assert ref_bytes(event.ref) == raw
    assert event.kind is EventKind.PUSH and event.sha == B


EVENT_CASES = [
    # (ref, kind, trusted, pr_number); None kind: not built
    ("refs/heads/main", EventKind.PUSH, True, None),
    ("refs/heads/feature/x", EventKind.PUSH, True, None),
    ("refs/tags/v1.0", EventKind.TAG, True, None),
    ("refs/pull/12/head", EventKind.PULL_REQUEST, False, 12),
    ("refs/merge-requests/7/head", EventKind.PULL_REQUEST, False, 7),
    ("refs/pull/12/merge", None, None, None),
    ("refs/pull/x/head", None, None, None),
    ("refs/notes/commits", None, None, None),
    ("refs/remotes/origin/main", None, None, None),
    ("refs/stash", None, None, None),
]


@pytest.mark.parametrize("ref,kind,trusted,pr", EVENT_CASES, ids=[c[0] for c in EVENT_CASES])
def test_event_for(ref: str, kind: EventKind | None, trusted: bool | None, pr: int | None) -> None:
    event = event_for("app", RefChange(ref, A, B), source="hook")
    if kind is None:
        assert event is None
        return
    assert (event.kind, event.trusted, event.pr_number) == (kind, trusted, pr)
    assert (event.repo, event.ref, event.sha, event.before, event.source) == (
        "app",
        ref,
        B,
        A,
        "hook",
    )


def test_events_for_keeps_order_and_drops_unbuilt_refs() -> None:
    changes = [
        RefChange("refs/heads/b", None, B),
        RefChange("refs/notes/x", None, C),
        RefChange("refs/tags/a", A, C),
    ]
    events = events_for("app", changes, source="watch")
    assert [(e.ref, e.sha, e.before) for e in events] == [
        ("refs/heads/b", B, None),
        ("refs/tags/a", C, A),
    ]
    assert {e.source for e in events} == {"watch"}


def test_the_same_push_from_hook_and_watcher_dedupes() -> None:
    hook = events_for("app", parse_hook_lines(line(A, B, "refs/heads/main"))[0], "hook")[0]
    watch = events_for("app", diff_refs({"refs/heads/main": A}, {"refs/heads/main": B}), "watch")[0]
    assert hook.dedupe_key == watch.dedupe_key


DIFF_CASES = [
    ("unchanged", {"refs/heads/m": A}, {"refs/heads/m": A}, []),
    ("moved", {"refs/heads/m": A}, {"refs/heads/m": B}, [RefChange("refs/heads/m", A, B)]),
    ("new", {}, {"refs/heads/n": B}, [RefChange("refs/heads/n", None, B)]),
    ("deleted: nothing to build", {"refs/heads/m": A}, {}, []),
    (
        "name order",
        {},
        {"refs/tags/z": A, "refs/heads/b": B, "refs/heads/a": C},
        [
            RefChange("refs/heads/a", None, C),
            RefChange("refs/heads/b", None, B),
            RefChange("refs/tags/z", None, A),
        ],
    ),
]


@pytest.mark.parametrize(
    "old,new,expected", [c[1:] for c in DIFF_CASES], ids=[c[0] for c in DIFF_CASES]
)
def test_diff_refs(old: dict, new: dict, expected: list[RefChange]) -> None:
    assert diff_refs(old, new) == expected
