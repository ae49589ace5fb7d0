"""Refs seen by the sources (watcher, poller, hook): the last sha per ref.

A complete snapshot also writes a marker row (ref = the empty blob, which no
real ref can be) so that "seen before" survives a repository with no refs at
all: the first push into a new, empty repository must build, not be taken for
a first sight. `seen_refs` never returns the marker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ciwatch.errors import StoreError
from ciwatch.model import ref_bytes, ref_from_bytes
from ciwatch.store.database import Database

_MARKER = b""


class RefsMixin:
    """The refs_seen half of Store."""

    _db: Database
    _clock: Callable[[], float]

    def seen_refs(self, repo_id: int) -> dict[str, str]:
        """The last sha recorded for every ref of the repository."""
        with self._db.read() as c:
            rows = c.execute(
                "SELECT ref, sha FROM refs_seen WHERE repo_id = ? AND ref != ?",
                (repo_id, _MARKER),
            ).fetchall()
        return {ref_from_bytes(bytes(r["ref"])): r["sha"] for r in rows}

    def has_seen_refs(self, repo_id: int) -> bool:
        """Whether a complete snapshot of the repository's refs was ever recorded
        (partial records, such as a hook's, do not count)."""
        with self._db.read() as c:
            row = c.execute(
                "SELECT 1 FROM refs_seen WHERE repo_id = ? AND ref = ?", (repo_id, _MARKER)
            ).fetchone()
        return row is not None

    def record_refs(
        self, repo_id: int, refs: Mapping[str, str], source: str, *, complete: bool
    ) -> None:
        """Remember where refs point. `complete=True`: `refs` is the whole set, so
        refs missing from it are forgotten; False: only these refs are upserted.

        A ref whose sha did not change keeps its row as it was (the source that
        first saw that sha, and when).
        """
        rows = []
        for ref, sha in refs.items():
            raw = ref_bytes(ref)
            if not raw.startswith(b"refs/") or not sha:
                raise StoreError(f"not a ref to record: {ref!r} -> {sha!r}")
            rows.append((raw, sha))
        with self._db.write() as c:
            now = self._clock()
            if complete:
                wanted = {raw for raw, _ in rows}
                stale = [
                    (repo_id, bytes(r["ref"]))
                    for r in c.execute(
                        "SELECT ref FROM refs_seen WHERE repo_id = ? AND ref != ?",
                        (repo_id, _MARKER),
                    )
                    if bytes(r["ref"]) not in wanted
                ]
                c.executemany("DELETE FROM refs_seen WHERE repo_id = ? AND ref = ?", stale)
                rows.append((_MARKER, "-"))
            c.executemany(
                """INSERT INTO refs_seen (repo_id, ref, sha, source, seen_at)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (repo_id, ref) DO UPDATE
                   SET sha = excluded.sha, source = excluded.source, seen_at = excluded.seen_at
                   WHERE refs_seen.sha != excluded.sha""",
                [(repo_id, raw, sha, source, now) for raw, sha in rows],
            )
