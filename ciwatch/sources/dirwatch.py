"""Notice at once when a file is renamed or written into one directory.

Raw inotify (through ctypes) on Linux: watchdog 7.x holds an unpaired
IN_MOVED_FROM for 0.5 s (DESIGN §10), and files that must be read whole arrive
by rename. watchdog's observer elsewhere. Only "something arrived" is reported;
the caller lists the directory itself, so a lost or merged notification costs
nothing but latency.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

_IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_Q_OVERFLOW, _IN_IGNORED = 0x8, 0x80, 0x4000, 0x8000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then the name, NUL-padded


class DirWatch(Protocol):
    def stop(self) -> None: ...


def watch_dir(
    path: Path,
    on_change: Callable[[], None],
    wanted: Callable[[str], bool],
    log: logging.Logger,
    kind: str = "auto",
) -> DirWatch | None:
    """Call `on_change` when a file whose name is `wanted` is renamed into or
    closed after writing in `path`. kind: auto | inotify | watchdog. None when
    no watch could be set up (each failure logged)."""
    for k in ("inotify", "watchdog") if kind == "auto" else (kind,):
        try:
            if k == "inotify":
                return _Inotify(path, on_change, wanted, log)
            return _Watchdog(path, on_change, wanted)
        except (OSError, ImportError, AttributeError) as exc:
            log.info("%s: cannot watch with %s: %s", path, k, exc)
    return None


class _Inotify:
    def __init__(
        self,
        path: Path,
        on_change: Callable[[], None],
        wanted: Callable[[str], bool],
        log: logging.Logger,
    ) -> None:
        self.path, self._on_change, self._wanted, self._log = path, on_change, wanted, log
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        if libc.inotify_add_watch(fd, os.fsencode(path), _IN_CLOSE_WRITE | _IN_MOVED_TO) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch: {os.strerror(err)}")
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="ciwatch-dirwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        self._thread = None
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)

    def _run(self) -> None:
        poller = select.poll()  # not select(): the daemon may hold fds above 1024
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            try:
                buf = os.read(self._fd, 65536)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    continue
                self._log.error("%s: inotify read failed: %s; no more watching", self.path, exc)
                return
            if self._relevant(buf):
                self._on_change()

    def _relevant(self, buf: bytes) -> bool:
        offset = 0
        while offset + _EVENT.size <= len(buf):
            _wd, mask, _cookie, length = _EVENT.unpack_from(buf, offset)
            name = buf[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & (_IN_Q_OVERFLOW | _IN_IGNORED):
                return True  # events were lost or the watch went away: look anyway
            if self._wanted(os.fsdecode(name)):
                return True
        return False


class _Watchdog:
    def __init__(
        self, path: Path, on_change: Callable[[], None], wanted: Callable[[str], bool]
    ) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                name = os.path.basename(os.fsdecode(getattr(event, "dest_path", "") or ""))
                name = name or os.path.basename(os.fsdecode(event.src_path))
                if event.event_type in ("moved", "created", "closed") and wanted(name):
                    on_change()

        self._observer = Observer()
        self._observer.schedule(Handler(), str(path), recursive=False)
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
