"""Sizes in pipeline files: bytes as a number, or "512K", "64M", "1.5G", "2T".

Units are binary (K = 1024 bytes); "M", "MB", "MiB" and "m" all mean 2**20.
"""

from __future__ import annotations

import re
from typing import Any

from ciwatch.pipeline.yamlcore import describe, quote

__all__ = ["PATTERN", "MAX_BYTES", "parse_size", "format_size"]

PATTERN = r"^\s*\d+(?:\.\d+)?\s*(?:[KkMmGgTt](?:i?[Bb])?|[Bb])?\s*$"
_REGEX = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([KkMmGgTt])(?:i?[Bb])?|[Bb])?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_HINT = 'a size like 1048576 (bytes), "512K", "64M" or "2G"'
# Beyond any machine's memory or disk, and well inside a 64-bit resource limit.
MAX_BYTES = 1 << 60


def parse_size(value: Any) -> int:
    """Bytes (> 0); ValueError with a user message."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected {_HINT}, got {describe(value)}")
    if isinstance(value, str):
        match = _REGEX.match(value)
        if not match:
            raise ValueError(f"expected {_HINT}, got {quote(value)}")
        number = float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    else:
        number = float(value)
    if number != number:  # NaN
        raise ValueError(f"expected {_HINT}, got NaN")
    if number < 1:
        raise ValueError(f"must be at least 1 byte, got {quote(value)}")
    if number > MAX_BYTES:
        raise ValueError(f"{quote(value)} is more than {format_size(MAX_BYTES)}")
    return int(number)


def format_size(size: float) -> str:
    """A short human form: 67108864 -> "64 MiB", 1536 -> "1.5 KiB", 100 -> "100 B"."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{round(size / factor, 2):g} {unit}"
    return f"{int(size)} B"
