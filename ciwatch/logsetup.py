"""Logging of the daemon and its workers: to stderr, journald-friendly, masked."""

from __future__ import annotations

import logging
import sys
from collections import deque
from collections.abc import Mapping

from ciwatch.masking import Masker


class MaskSecrets(logging.Filter):
    """Log lines pass through the same masking as step logs."""

    def __init__(self, masker: Masker) -> None:
        super().__init__()
        self.masker = masker

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.masker.mask_text(record.getMessage())
        record.args = None
        return True


def setup_logging(
    level: str | int, environ: Mapping[str, str], *, pid: bool = False
) -> logging.Handler:
    """One stderr handler for the "ciwatch" loggers; journald stamps lines itself,
    elsewhere each line says when."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(levelname)s %(name)s" + ("[%(process)d]" if pid else "") + ": %(message)s"
    if not environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger("ciwatch")
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    root.propagate = False
    return handler


class RecentErrors(logging.Handler):
    """The last warnings and errors, for `ciwatch status`."""

    def __init__(self, keep: int = 30) -> None:
        super().__init__(logging.WARNING)
        self.records: deque[dict] = deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        where = record.name.removeprefix("ciwatch.")
        self.records.appendleft(
            {"at": record.created, "where": where, "message": record.getMessage()}
        )

    def items(self) -> list[dict]:
        return list(self.records)
