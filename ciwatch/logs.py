"""Step logs on disk: one file per step, masked, capped, readable while written.

File format (version 1), one record per line::

    #ciwatch-log 1 start=<unix time the step log was opened>
    <elapsed> <kind> <raw bytes>\\n

``elapsed`` is seconds since ``start`` (3 decimals); it is taken per chunk of
output received, so lines read together share a time. ``kind`` is ``o`` (an
output line that ended with a newline), ``p`` (an output fragment with no
newline after it: a partial last line, or a piece of a very long line) or ``n``
(a note of ciwatch's own). The bytes are stored raw, as the step printed them
after masking (non-UTF-8 kept exactly); the output stream is rebuilt by joining
``o`` records with a newline after each and ``p`` records without.

Masking happens before anything is stored, shown or counted against the cap.
With a cap, the first half is written as it comes and the last half is kept in
a bounded buffer, written at close after a note saying how many bytes were left
out; memory stays bounded whatever the step prints.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ciwatch.masking import Masker

HEADER_PREFIX = b"#ciwatch-log 1"

# A line longer than this with no newline yet is stored as a fragment ("p"), so
# that neither memory nor a single record grows without bound.
LINE_MAX = 64 * 1024

# The tail buffer merges small chunks beyond this many entries (bounded memory
# for a step that prints one byte at a time).
_TAIL_MAX_CHUNKS = 4096
_SMALL_CHUNK = 8 * 1024


@dataclass(frozen=True)
class LogSummary:
    bytes_seen: int  # output bytes the step printed (before masking)
    bytes_stored: int  # output bytes written to the file (after masking)
    truncated: bool
    bytes_omitted: int = 0  # masked output bytes left out by the cap
    error: str = ""  # set when the file could not be written (e.g. disk full)


class StepLog:
    """A LogSink writing one step's log file.

    `cap_bytes` <= 0 means no cap. `on_output` receives masked output as it
    arrives (for live display); `on_note` the masked note texts. Not
    thread-safe: one writer (the executor) per log.
    """

    def __init__(
        self,
        path: Path,
        masker: Masker,
        cap_bytes: int,
        clock: Callable[[], float],
        on_output: Callable[[bytes], None] | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._masker = masker
        self._stream = masker.stream()
        self._clock = clock
        self._on_output = on_output
        self._on_note = on_note
        self._start = clock()
        capped = cap_bytes > 0
        self._head_left = cap_bytes - cap_bytes // 2 if capped else -1
        self._tail_cap = cap_bytes // 2 if capped else 0
        self._tail: deque[tuple[float, bytes | str]] = deque()  # bytes: output, str: note
        self._tail_size = 0
        self._early_notes: list[tuple[float, str]] = []  # notes pushed out of the tail
        self._omitted = 0
        self._partial = b""
        self._seen = 0
        self._stored = 0
        self._error = ""
        self._closed = False
        self._fd = -1
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o640)
        except OSError as exc:
            # Like a full disk: the step still runs; the summary says why there is no log.
            self._error = f"opening {self.path}: {exc.strerror}"
        self._put(b"%s start=%.6f\n" % (HEADER_PREFIX, self._start))

    # -- LogSink -----------------------------------------------------------

    def write(self, data: bytes) -> None:
        self._seen += len(data)
        masked = self._stream.feed(data)
        if masked:
            self._output(masked)

    def note(self, text: str) -> None:
        text = self._masker.mask_text(text)
        if self._on_note is not None:
            self._on_note(text)
        t = self._elapsed()
        if self._head_left == 0:
            self._tail.append((t, text))
        else:
            self._write_note(t, text)

    def close(self) -> LogSummary:
        if not self._closed:
            self._closed = True
            rest = self._stream.flush()
            if rest:
                self._output(rest)
            self._write_tail()
            self._flush_partial(self._elapsed())
            if self._fd >= 0:
                try:
                    os.close(self._fd)
                except OSError as exc:
                    self._error = self._error or f"closing {self.path}: {exc.strerror}"
        return LogSummary(
            bytes_seen=self._seen,
            bytes_stored=self._stored,
            truncated=self._omitted > 0,
            bytes_omitted=self._omitted,
            error=self._error,
        )

    # -- internals ---------------------------------------------------------

    def _elapsed(self) -> float:
        return max(0.0, self._clock() - self._start)

    def _output(self, masked: bytes) -> None:
        if self._on_output is not None:
            try:
                self._on_output(masked)
            except OSError:
                self._on_output = None  # a closed terminal must not stop the step
        t = self._elapsed()
        if self._head_left < 0:
            self._frame(t, masked)
        elif self._head_left > 0:
            if len(masked) <= self._head_left:
                self._head_left -= len(masked)
                self._frame(t, masked)
                return
            # End the head on a line boundary when there is one.
            cut = masked.rfind(b"\n", 0, self._head_left) + 1 or self._head_left
            self._tail_cap += self._head_left - cut  # head room left unused goes to the tail
            self._head_left = 0
            self._frame(t, masked[:cut])
            self._to_tail(t, masked[cut:])
        else:
            self._to_tail(t, masked)

    def _to_tail(self, t: float, data: bytes) -> None:
        if not data:
            return
        tail = self._tail
        if tail and len(tail) >= _TAIL_MAX_CHUNKS:
            last_t, last = tail[-1]
            if isinstance(last, bytes) and len(last) < _SMALL_CHUNK:
                tail[-1] = (last_t, last + data)
                self._tail_size += len(data)
                self._trim_tail()
                return
        tail.append((t, data))
        self._tail_size += len(data)
        self._trim_tail()

    def _trim_tail(self) -> None:
        tail = self._tail
        while self._tail_size > self._tail_cap and tail:
            t, item = tail[0]
            if isinstance(item, str):
                tail.popleft()
                if len(self._early_notes) < 1000:
                    self._early_notes.append((t, item))
                continue
            excess = self._tail_size - self._tail_cap
            if len(item) <= excess:
                tail.popleft()
                self._tail_size -= len(item)
                self._omitted += len(item)
            else:
                tail[0] = (t, item[excess:])
                self._tail_size -= excess
                self._omitted += excess

    def _write_tail(self) -> None:
        tail = self._tail
        for t, text in self._early_notes:
            self._write_note(t, text)
        if self._omitted:
            # Start the tail at a line boundary; the bytes skipped are counted.
            if tail and isinstance(tail[0][1], bytes):
                t0, first = tail[0]
                nl = first.find(b"\n")
                if nl != -1 and nl + 1 < len(first):
                    tail[0] = (t0, first[nl + 1 :])
                    self._omitted += nl + 1
                elif nl != -1:
                    tail.popleft()
                    self._omitted += len(first)
            when = tail[0][0] if tail else self._elapsed()
            self._write_note(when, f"log truncated: {self._omitted} bytes omitted")
        while tail:
            t, item = tail.popleft()
            if isinstance(item, str):
                self._write_note(t, item)
            else:
                self._frame(t, item)

    def _frame(self, t: float, data: bytes) -> None:
        if self._partial:
            data = self._partial + data
            self._partial = b""
        nl = data.rfind(b"\n")
        if nl == -1:
            self._partial = data
            if len(data) > LINE_MAX:
                self._flush_partial(t)
            return
        prefix = b"%.3f o " % t
        self._put(prefix + data[:nl].replace(b"\n", b"\n" + prefix) + b"\n", nl + 1)
        self._partial = data[nl + 1 :]
        if len(self._partial) > LINE_MAX:
            self._flush_partial(t)

    def _flush_partial(self, t: float) -> None:
        if self._partial:
            data, self._partial = self._partial, b""
            self._put(b"%.3f p " % t + data + b"\n", len(data))

    def _write_note(self, t: float, text: str) -> None:
        self._flush_partial(t)
        prefix = b"%.3f n " % t
        body = text.encode("utf-8", "surrogateescape").splitlines() or [b""]
        self._put(b"".join(prefix + line + b"\n" for line in body))

    def _put(self, record: bytes, output_bytes: int = 0) -> None:
        if self._error:
            self._omitted += output_bytes
            return
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            # A full disk must not stop the step; the summary says what happened.
            self._error = f"writing {self.path}: {exc.strerror}"
            self._omitted += output_bytes
            return
        self._stored += output_bytes
