"""Opening, checking, migrating and transacting on the one SQLite connection.

The connection is shared by threads behind a lock; every write is a short
`BEGIN IMMEDIATE` transaction so that a second process (the CLI next to the
daemon) waits on `busy_timeout` instead of failing half-way.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ciwatch.errors import CorruptStoreError, StoreError
from ciwatch.store.schema import Migration

BUSY_TIMEOUT_MS = 5000
# A read that fails with one of these means the file itself is damaged.
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


class Database:
    """One connection, one lock, explicit transactions (no implicit BEGIN)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.path = path

    @classmethod
    def open(cls, path: Path, migrations: Sequence[Migration]) -> Database:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Nothing may write to the file before it is known to be sound and ours:
            # a damaged or newer database must be left byte for byte as found.
            _check_integrity(conn, path)
            version = _user_version(conn, path)
            if version > len(migrations):
                raise StoreError(
                    f"database {path} has schema version {version}, newer than this "
                    f"ciwatch knows (up to {len(migrations)}); upgrade ciwatch to use it"
                )
            _configure(conn, path)
            _migrate(conn, path, migrations, version)
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on success, rolled back on any exception."""
        with self._lock, self._errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                _rollback(self._conn)
                raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction, so several queries see one snapshot."""
        with self._lock, self._errors():
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                _rollback(self._conn)

    def pragma(self, name: str) -> object:
        if not name.isidentifier():
            raise StoreError(f"not a pragma name: {name!r}")
        with self._lock, self._errors():
            return self._conn.execute(f"PRAGMA {name}").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: {exc}") from exc


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _CORRUPT_CODES:
            raise CorruptStoreError(
                f"database {path} is damaged and was left untouched: {exc}"
            ) from exc
        raise StoreError(f"cannot read database {path}: {exc}") from exc
    said = "; ".join(str(row[0]) for row in rows)
    if said != "ok":
        raise CorruptStoreError(
            f"database {path} failed its integrity check and was left untouched: {said}"
        )


def _user_version(conn: sqlite3.Connection, path: Path) -> int:
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the schema version of {path}: {exc}") from exc


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        # FULL: a commit acknowledged to a webhook survives power loss (NORMAL may not).
        conn.execute("PRAGMA synchronous = FULL")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot configure database {path}: {exc}") from exc
    if str(mode).lower() != "wal":
        raise StoreError(
            f"database {path} cannot use WAL journaling (got {mode!r}); "
            "keep the state directory on a local filesystem"
        )


def _migrate(
    conn: sqlite3.Connection, path: Path, migrations: Sequence[Migration], version: int
) -> None:
    # Foreign keys stay off while migrating (SQLite's table-rebuild recipe needs
    # that); each migration's result is checked with foreign_key_check instead.
    for number in range(version + 1, len(migrations) + 1):
        migration = migrations[number - 1]
        try:
            conn.execute("BEGIN IMMEDIATE")
            # Another process may have migrated while we waited for the write lock.
            if _user_version(conn, path) >= number:
                _rollback(conn)
                continue
            migration.run(conn)
            broken = conn.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise StoreError(f"{len(broken)} rows break foreign keys, e.g. {tuple(broken[0])}")
            # PRAGMA takes no parameters; `number` is an int from range().
            conn.execute(f"PRAGMA user_version = {number:d}")
            conn.execute("COMMIT")
        except Exception as exc:
            try:
                _rollback(conn)
            except sqlite3.Error:
                pass  # the original failure is the one worth reporting
            raise StoreError(
                f"database {path}: migration {number} ({migration.name}) failed, "
                f"schema left at version {number - 1}: {exc}"
            ) from exc
