"""Random access into step log files without loading them: by record number
(for line ranges and resuming a stream) and by output byte (for Range requests
on the raw log).

A `LogIndex` keeps a mark per chunk read (256 KiB): (records before it, file
offset, output bytes before it). It is built by one streaming pass and extended
as the file grows (logs are append-only), so memory is a few hundred bytes per
megabyte of log whatever its size. Output lines, nearly all of a log, are
handled a chunk at a time by one regular expression, not line by line.

The file format is described in ciwatch.logs; records are parsed with
ciwatch.logread, so both agree on every line.
"""

from __future__ import annotations

import bisect
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ciwatch.logread import LineKind, LogLine, log_start, parse_record

CHUNK = 256 * 1024
NOTE_PREFIX = b"[ciwatch] "  # how a note reads in the raw log, as in `ciwatch logs`


@dataclass(frozen=True)
class Mark:
    n: int  # records before this point
    offset: int  # file offset of the next record
    out: int  # output bytes (the raw log) before this point


def output_bytes(line: LogLine) -> bytes:
    """What a record contributes to the raw log: output as printed, a note as a line."""
    if line.kind is LineKind.NOTE:
        return NOTE_PREFIX + line.data + b"\n"
    return line.data + b"\n" if line.newline else line.data


# An output record's prefix, after the newline that ends the record before it
# (a literal first character lets the regex engine skip ahead fast).
_OUTPUT_RECORD = re.compile(rb"\n[0-9]+\.[0-9]+ o ")


def chunk_output(complete: bytes) -> tuple[bytes, int]:
    """(raw log bytes, records) of whole record lines. When every line is an
    output record (the usual case) one substitution does it; otherwise each
    line is parsed as ciwatch.logread does."""
    lines = complete.count(b"\n")
    plain, found = _OUTPUT_RECORD.subn(b"\n", b"\n" + complete)
    if found == lines:
        return plain[1:], lines
    parts, n = [], 0
    for raw in complete[:-1].split(b"\n"):
        line = parse_record(raw)
        if line is not None:
            n += 1
            parts.append(output_bytes(line))
    return b"".join(parts), n


class LogIndex:
    """Marks into one log file; `refresh()` reads what was appended since."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._marks: list[Mark] = []
        self._end = Mark(0, 0, 0)
        self._ident: tuple[int, int] | None = None
        self.start: float | None = None  # unix time the log was opened (its header)

    @property
    def end(self) -> Mark:
        """Where the complete records read so far end."""
        return self._end

    @property
    def ident(self) -> tuple[int, int] | None:
        """(device, inode) of the file indexed."""
        return self._ident

    def refresh(self) -> Mark:
        with self._lock:
            return self._refresh()

    def try_refresh(self, max_bytes: int) -> bool:
        """Refresh now if that reads at most `max_bytes` and nobody else is
        refreshing; False when the caller should refresh elsewhere (a thread)."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                return True
            if st.st_size - self._end.offset > max_bytes or st.st_size < self._end.offset:
                return False
            self._refresh()
            return True
        finally:
            self._lock.release()

    def _refresh(self) -> Mark:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._end
        if self._ident != (st.st_dev, st.st_ino) or st.st_size < self._end.offset:
            self._reset((st.st_dev, st.st_ino))
        if st.st_size > self._end.offset:
            self._scan()
        return self._end

    def _reset(self, ident: tuple[int, int]) -> None:
        self._ident = ident
        self._marks, self._end = [], Mark(0, 0, 0)
        self.start = None

    def _scan(self) -> None:
        n, offset, out = self._end.n, self._end.offset, self._end.out
        with open(self.path, "rb") as f:
            f.seek(offset)
            if offset == 0:
                head = f.readline()
                if not head.endswith(b"\n"):
                    return  # the header is still being written
                if head.startswith(b"#"):
                    offset = len(head)
                    self.start = log_start(self.path)
                else:
                    f.seek(0)
                self._marks.append(Mark(0, offset, 0))
            while True:
                chunk = f.read(CHUNK)
                last = chunk.rfind(b"\n")
                if last == -1:
                    if len(chunk) < CHUNK:
                        break  # an incomplete record: read it once it is complete
                    more = f.readline()  # a record longer than a chunk
                    if not more.endswith(b"\n"):
                        break
                    chunk += more
                    last = len(chunk) - 1
                elif last + 1 < len(chunk):
                    f.seek(offset + last + 1)
                data, records = chunk_output(chunk[: last + 1])
                n, offset, out = n + records, offset + last + 1, out + len(data)
                self._marks.append(Mark(n, offset, out))
        self._end = Mark(n, offset, out)

    def seek(self, n: int) -> Mark:
        """A mark exactly before record `n + 1` (its `out` is not computed: -1)."""
        mark = self.mark_for_record(n)
        skip = n - mark.n
        if skip <= 0:
            return mark
        offset = mark.offset
        with open(self.path, "rb") as f:
            f.seek(offset)
            while skip > 0:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                pos = -1
                while skip > 0:
                    pos = chunk.find(b"\n", pos + 1)
                    if pos == -1:
                        break
                    skip -= 1
                if skip == 0:
                    offset += pos + 1
                else:
                    offset += len(chunk)
        return Mark(n - skip, offset, -1)

    def mark_for_record(self, n: int) -> Mark:
        """The last mark at or before record number `n` (records are 1-based)."""
        marks = self._marks or [Mark(0, 0, 0)]
        i = bisect.bisect_right([m.n for m in marks], n) - 1
        return marks[max(i, 0)]

    def mark_for_output(self, pos: int) -> Mark:
        marks = self._marks or [Mark(0, 0, 0)]
        i = bisect.bisect_right([m.out for m in marks], pos) - 1
        return marks[max(i, 0)]


def records(
    path: Path, mark: Mark, end_offset: int | None = None
) -> Iterator[tuple[int, int, LogLine]]:
    """(record number, file offset after it, record) from `mark` on, up to
    `end_offset` (the end of the complete records known), read in chunks."""
    n, offset = mark.n, mark.offset
    with open(path, "rb") as f:
        f.seek(offset)
        buf = b""
        while end_offset is None or offset < end_offset:
            want = CHUNK if end_offset is None else min(CHUNK, end_offset - offset - len(buf))
            chunk = f.read(want) if want > 0 else b""
            if not chunk and not buf:
                return
            buf += chunk
            last = buf.rfind(b"\n")
            if last == -1:
                if not chunk:
                    return  # an incomplete last record: not yet
                continue
            lines, buf = buf[:last].split(b"\n"), buf[last + 1 :]
            for raw in lines:
                offset += len(raw) + 1
                line = parse_record(raw)
                if line is None:
                    continue
                n += 1
                yield n, offset, line
            if not chunk:
                return


def output_from(path: Path, mark: Mark, start: int, stop: int) -> Iterator[bytes]:
    """The raw log's bytes [start, stop), from a mark at or before `start`."""
    pos = mark.out
    with open(path, "rb") as f:
        f.seek(mark.offset)
        buf = b""
        while pos < stop:
            chunk = f.read(CHUNK)
            if not chunk:
                return
            buf += chunk
            last = buf.rfind(b"\n")
            if last == -1:
                continue
            data, _ = chunk_output(buf[: last + 1])
            buf = buf[last + 1 :]
            end = pos + len(data)
            if end > start:
                yield data[max(0, start - pos) : stop - pos]
            pos = end


class LogIndexes:
    """A bounded cache of indexes, most recently used kept."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._items: OrderedDict[str, LogIndex] = OrderedDict()

    def get(self, path: Path) -> LogIndex:
        key = str(path)
        with self._lock:
            index = self._items.get(key)
            if index is None:
                index = self._items[key] = LogIndex(Path(path))
                while len(self._items) > self.keep:
                    self._items.popitem(last=False)
            else:
                self._items.move_to_end(key)
        index.refresh()
        return index
