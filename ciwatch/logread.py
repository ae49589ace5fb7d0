"""Reading step logs: records, following a log as it grows, terminal rendering.

The file format is described in ciwatch.logs, which writes it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType


class LineKind(StrEnum):
    OUTPUT = "output"
    NOTE = "note"


KIND_CODE = MappingProxyType({b"o": LineKind.OUTPUT, b"p": LineKind.OUTPUT, b"n": LineKind.NOTE})


@dataclass(frozen=True)
class LogLine:
    time: float  # seconds since the step log was opened
    kind: LineKind
    data: bytes  # without the line's newline
    newline: bool = True  # False for a fragment that the next record continues


# -- reading ---------------------------------------------------------------


def parse_record(raw: bytes) -> LogLine | None:
    """One stored line (without its newline) -> LogLine; None for the header."""
    if raw.startswith(b"#"):
        return None
    stamp, _, rest = raw.partition(b" ")
    code, _, data = rest.partition(b" ")
    kind = KIND_CODE.get(code)
    try:
        t = float(stamp)
    except ValueError:
        kind = None
    if kind is None:  # not written by us: show it as output rather than lose it
        return LogLine(0.0, LineKind.OUTPUT, raw)
    return LogLine(t, kind, data, newline=code != b"p")


def read_log(path: Path) -> Iterator[LogLine]:
    """Every record of a log file, in order (streamed, not loaded whole)."""
    with open(path, "rb") as f:
        for raw in f:
            line = parse_record(raw[:-1] if raw.endswith(b"\n") else raw)
            if line is not None:
                yield line


def raw_output(lines: Iterable[LogLine]) -> Iterator[bytes]:
    """The step's (masked) output bytes as printed, rebuilt from its records."""
    for line in lines:
        if line.kind is LineKind.OUTPUT:
            yield line.data + b"\n" if line.newline else line.data


def log_start(path: Path) -> float | None:
    """The wall-clock time the log was opened (from its header)."""
    with open(path, "rb") as f:
        head = f.readline()
    m = re.match(rb"#ciwatch-log 1 start=([0-9.]+)", head)
    return float(m.group(1)) if m else None


def follow(
    path: Path,
    is_done: Callable[[], bool],
    poll: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[LogLine]:
    """Records as they are written, until `is_done()` and everything is read."""
    while not os.path.exists(path):
        if is_done():
            if not os.path.exists(path):
                return
            break
        sleep(poll)
    with open(path, "rb") as f:
        buf = b""
        while True:
            done = is_done()  # asked before reading: what was written before is read
            chunk = f.read(1 << 20)
            if chunk:
                buf += chunk
                nl = buf.rfind(b"\n")
                if nl != -1:
                    lines, buf = buf[:nl].split(b"\n"), buf[nl + 1 :]
                    for raw in lines:
                        line = parse_record(raw)
                        if line is not None:
                            yield line
                continue
            if done:
                if buf:
                    line = parse_record(buf)
                    if line is not None:
                        yield line
                return
            sleep(poll)


# -- terminal rendering ----------------------------------------------------

_SGR = re.compile(r"\x1b\[[0-9;:]*m")  # colours: dropped rather than shown escaped


def _escape_table() -> MappingProxyType:
    table: dict[int, str] = {}
    for code in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]:
        if code != 0x09:  # keep TAB
            table[code] = f"\\x{code:02x}"
    table[0x0D] = "\\r"
    table[0x1B] = "\\e"
    # Bidirectional overrides can make a line read differently from what it is.
    for code in [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F]:
        table[code] = f"\\u{code:04x}"
    return MappingProxyType(table)


_ESCAPES = _escape_table()


def render(line: LogLine, timestamps: bool = False) -> str:
    """A line safe to print on a terminal: invalid UTF-8 becomes U+FFFD, colour
    codes are dropped, other escape sequences, CR and control characters are
    shown as text (never interpreted). No trailing newline."""
    text = _SGR.sub("", line.data.decode("utf-8", "replace")).translate(_ESCAPES)
    if line.kind is LineKind.NOTE:
        text = f"[ciwatch] {text}"
    if timestamps:
        text = f"{line.time:9.3f} {text}"
    return text
