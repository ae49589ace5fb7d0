"""Numbers and times as the pages show them (ciwatch.js formats the same way)."""

from __future__ import annotations

import time


def duration(seconds: float | None) -> str:
    """ "0.8s", "42s", "3m05s", "2h10m"; "" when unknown."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{int(seconds)}s"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def when(t: float | None) -> str:
    """A unix time as the server's local date and time; "" when unknown."""
    if t is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def cpu(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.2g}s" if seconds < 1 else duration(seconds)


def mem(kib: int | None) -> str:
    """Peak memory in decimal units, like `ciwatch runs`: "12 MB"."""
    if kib is None:
        return ""
    return size(kib * 1024)


def size(n: int | None) -> str:
    if n is None:
        return ""
    if n >= 10**9:
        return f"{n / 10**9:.1f} GB"
    if n >= 10**6:
        return f"{n / 10**6:.0f} MB"
    if n >= 10**3:
        return f"{n / 10**3:.0f} kB"
    return f"{n} B"


def elapsed(t: float | None, start: float | None) -> str:
    """A log line's time since its step started: "0:03", "12:40", "1:02:03"."""
    if t is None or start is None:
        return ""
    s = max(0, int(t - start))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
