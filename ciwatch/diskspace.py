"""Free space on the filesystems runs write to, and whether a run may start.

The scheduler calls a `DiskCheck` before it starts runs: while a filesystem
has less free space than its rule asks, runs stay queued with the reason the
check returns ("waiting for disk space: 1.2 GiB free on /var/lib/ciwatch/
workspaces, 2 GiB required"). Free space is what an unprivileged writer may
use (statvfs f_bavail): the blocks reserved for root do not help a build.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


@dataclass(frozen=True)
class FreeSpace:
    free: int  # bytes an unprivileged process may still write
    total: int  # bytes of the whole filesystem


@dataclass(frozen=True)
class SpaceRule:
    """At least `min_bytes`, and at least `min_percent` of the filesystem's size,
    must be free on the filesystem holding `path` (0 and 0: no rule)."""

    path: Path
    min_bytes: int = 0
    min_percent: float = 0.0

    def required(self, total: int) -> int:
        return max(self.min_bytes, math.ceil(total * self.min_percent / 100))


def human_size(n: int) -> str:
    """1288490188 -> "1.2 GiB"; one decimal below 100 of a unit, so the text
    (stored as a wait reason) changes only when the amount really does."""
    size = float(max(n, 0))
    for unit in _UNITS:
        if size < 1024 or unit == _UNITS[-1]:
            break
        size /= 1024
    if unit == "B":
        return f"{int(size)} B"
    text = f"{size:.1f}" if size < 100 else f"{size:.0f}"
    return f"{text.removesuffix('.0')} {unit}"


def measure(path: Path) -> FreeSpace:
    """Free space on the filesystem that holds `path`, or would hold it: a
    directory not made yet is measured at its nearest existing parent."""
    p = Path(os.path.abspath(path))
    while True:
        try:
            st = os.statvfs(p)
        except FileNotFoundError:
            if p == p.parent:
                raise
            p = p.parent
            continue
        return FreeSpace(free=st.f_bavail * st.f_frsize, total=st.f_blocks * st.f_frsize)


class DiskCheck:
    """Called before runs start: "" when every rule is met, else why runs wait.

    A filesystem that cannot be measured does not hold runs back (a run on it
    fails with its own clear error); the failure is logged once per cause.
    """

    def __init__(
        self,
        rules: Sequence[SpaceRule],
        measure: Callable[[Path], FreeSpace] = measure,
        log: logging.Logger | None = None,
    ) -> None:
        self.rules = tuple(r for r in rules if r.min_bytes > 0 or r.min_percent > 0)
        self._measure = measure
        self._log = log or logging.getLogger("ciwatch.diskspace")
        self._unmeasured: set[str] = set()

    def __call__(self) -> str:
        for rule in self.rules:
            try:
                space = self._measure(rule.path)
            except OSError as exc:
                why = f"{rule.path}: {exc.strerror or exc}"
                if why not in self._unmeasured:
                    self._unmeasured.add(why)
                    self._log.warning("cannot measure free space on %s", why)
                continue
            need = rule.required(space.total)
            if space.free < need:
                return (
                    f"waiting for disk space: {human_size(space.free)} free on {rule.path}, "
                    f"{human_size(need)} required"
                )
        return ""
