"""A commit's subject line and author, read from the commit object in a mirror
(`git cat-file commit`, argv only): shown next to each run.

The text is data from whoever pushed: it is decoded (the commit's own
`encoding` header, else UTF-8, bad bytes replaced), bounded, and stored as
text. Nothing here interprets it.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from ciwatch.git import check_sha

SUBJECT_MAX = 1000
AUTHOR_MAX = 200


@dataclass(frozen=True)
class CommitInfo:
    subject: str | None
    author: str | None  # the author's name, without the e-mail address


def _decode(raw: bytes, encoding: str) -> str:
    try:
        codecs.lookup(encoding)
    except LookupError:
        encoding = "utf-8"
    return raw.decode(encoding, "replace")


def parse_commit(raw: bytes) -> CommitInfo:
    """Subject (the message's first non-empty line) and author name of a raw
    commit object."""
    header, _, message = raw.partition(b"\n\n")
    author: bytes | None = None
    encoding = "utf-8"
    for line in header.split(b"\n"):
        if line.startswith(b"author ") and author is None:
            # "author Name <email> 1700000000 +0100"
            author = line[len(b"author ") :].partition(b" <")[0]
        elif line.startswith(b"encoding "):
            encoding = line[len(b"encoding ") :].decode("ascii", "replace").strip()
    first = next((ln for ln in message.split(b"\n") if ln.strip()), None)
    subject = _decode(first.strip(), encoding)[:SUBJECT_MAX] if first is not None else None
    name = _decode(author, encoding).strip()[:AUTHOR_MAX] if author else None
    return CommitInfo(subject or None, name or None)


def read_commit_info(mirror, sha: str) -> CommitInfo:
    """The commit's info from `mirror` (which must hold the commit). GitError
    when it cannot be read."""
    raw = mirror.git.run(["cat-file", "commit", check_sha(sha)], git_dir=mirror.path)
    return parse_commit(raw)
