"""The checks a YAML file's bytes pass before any parsing: size, encoding, characters.

Helpers for ciwatch.yamlsafe. Each problem is a Diagnostic with a 1-based
line and column; the text comes back decoded, without a UTF-8 byte order mark.
"""

from __future__ import annotations

import re
from itertools import islice

from ciwatch.pipeline.plan import Diagnostic

__all__ = ["decode", "bad_characters", "line_col"]

# What YAML allows in a stream (the rest must be written as escapes).
_NOT_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
_UNICODE_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xfe\xff", "UTF-16"),
    (b"\xff\xfe", "UTF-16"),
)


def decode(
    data: bytes, filename: str, max_bytes: int, label: str
) -> tuple[str | None, Diagnostic | None]:
    """(text, None), or (None, the reason the bytes cannot be YAML text)."""

    def fail(message: str, line: int = 1, col: int = 1) -> tuple[None, Diagnostic]:
        return None, Diagnostic(filename, line, col, "", message)

    if len(data) > max_bytes:  # first: nothing else is looked at in a huge file
        return fail(f"{label} is {_size(len(data))}; the limit is {_limit(max_bytes)}")
    for bom, name in _UNICODE_BOMS:
        if data.startswith(bom):
            return fail(
                f"{label} is {name}-encoded (byte order mark {bom.hex(' ').upper()}); "
                "save it as UTF-8"
            )
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        return fail(f"{label} is binary (NUL byte at byte offset {nul}, line {line})", line)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        col = len(data[start : exc.start].decode("utf-8", "replace")) + 1
        return fail(
            f"{label} is not valid UTF-8: byte 0x{data[exc.start]:02x} at byte offset "
            f"{exc.start} (line {line})",
            line,
            col,
        )
    return (text[1:] if text.startswith("\ufeff") else text), None


def bad_characters(text: str, filename: str, limit: int) -> list[Diagnostic]:
    """Characters YAML refuses (control characters), at most `limit` of them."""
    out = []
    for match in islice(_NOT_PRINTABLE.finditer(text), limit):
        line, col = line_col(text, match.start())
        out.append(
            Diagnostic(
                filename,
                line,
                col,
                "",
                f"character U+{ord(match[0]):04X} is "
                "not allowed in YAML; write it as an escape in a double-quoted "
                "string",
            )
        )
    return out


def line_col(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of a character index."""
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _size(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f} MB"
    return f"{n / 1000:.1f} kB" if n >= 1000 else f"{n} bytes"


def _limit(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"
