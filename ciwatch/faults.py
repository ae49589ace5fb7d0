"""Crash-test hooks: `CIWATCH_FAULT=<point>` makes the process die at that point.

Only the composition root reads the variable and passes the resulting
function down; with it unset the function does nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping


def fault_from(environ: Mapping[str, str]) -> Callable[[str], None]:
    wanted = environ.get("CIWATCH_FAULT", "")
    if not wanted:
        return lambda point: None

    def fault(point: str) -> None:
        if point == wanted:
            os._exit(137)  # as if killed by SIGKILL: nothing flushed, nothing cleaned

    return fault
