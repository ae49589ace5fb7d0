"""Durations in pipeline files: seconds as a number, or "90s", "10m", "1h30m", "500ms"."""

from __future__ import annotations

import math
import re
from typing import Any

from ciwatch.pipeline.yamlcore import describe, quote

__all__ = ["PATTERN", "parse_duration", "format_duration"]

# Units in decreasing order, each at most once: "1h30m", "2m30s", "1.5h", "500ms".
PATTERN = (
    r"^(?=\d)(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?"
    r"(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$"
)
_REGEX = re.compile(PATTERN)
_UNITS = (3600.0, 60.0, 1.0, 0.001)
_HINT = 'a duration like 90 (seconds), "90s", "10m", "1h30m" or "500ms"'


def parse_duration(value: Any) -> float:
    """Seconds (> 0, possibly inf: the caller clamps); ValueError with a user message."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected {_HINT}, got {describe(value)}")
    if isinstance(value, str):
        match = _REGEX.match(value.strip())
        if not match or not any(match.groups()):
            raise ValueError(f"expected {_HINT}, got {quote(value)}")
        seconds = sum(
            float(g) * unit for g, unit in zip(match.groups(), _UNITS, strict=True) if g is not None
        )
    else:
        seconds = float(value)
    if math.isnan(seconds):
        raise ValueError(f"expected {_HINT}, got NaN")
    if seconds <= 0:
        raise ValueError(f"must be greater than zero, got {quote(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """A short human form: 5400 -> "1h30m", 0.5 -> "500ms", inf -> "infinity"."""
    if math.isinf(seconds):
        return "infinity"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    if abs(seconds - whole) > 1e-9 or whole < 60:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n)
