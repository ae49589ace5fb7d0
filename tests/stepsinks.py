"""Helpers for executor tests: a log sink that keeps everything, and a process finder."""

from __future__ import annotations

import os
import time


class Sink:
    """A LogSink keeping the output bytes, ciwatch's notes, and when output first came."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.notes: list[str] = []
        self.first_write: float | None = None

    def write(self, data: bytes) -> None:
        if self.first_write is None:
            self.first_write = time.monotonic()
        self.data += data

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def text(self) -> str:
        return self.data.decode()


def procs_with(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line holds `marker`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != b"Z":
            found.append(int(name))
    return found
