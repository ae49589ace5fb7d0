"""The daemon's hold on its state directory: one daemon per STATE, released by
the kernel when the process dies, however it dies."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ciwatch.errors import CiwatchError


class AlreadyRunning(CiwatchError):
    """Another daemon holds the state directory."""


def hold_lock(state_dir: Path) -> int:
    """An exclusive lock on STATE/daemon.lock for the daemon's life (released by
    the kernel if it dies), so two daemons never share a state directory."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlreadyRunning(
            f"another ciwatch daemon (pid {other}) is running on {state_dir}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
