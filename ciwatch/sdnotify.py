"""The systemd notify protocol: state changes as datagrams to $NOTIFY_SOCKET.

No libsystemd: the protocol is one ``KEY=VALUE`` line per field, sent as a
single datagram to the AF_UNIX socket named by ``NOTIFY_SOCKET`` (a path, or
an abstract name written with a leading ``@``). Without ``NOTIFY_SOCKET`` (not
under systemd, or ``Type=simple``) every call is a no-op.

A failed send never raises: the daemon must keep building when systemd cannot
be told about it. The first failure of a streak is logged as a warning, the
rest at debug level, so a broken socket does not flood the journal.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

# Variables systemd hands the main process only; a child (a worker, a step)
# that inherited them could speak for the service.
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

SEND_TIMEOUT = 1.0  # seconds; systemd reads at once, a stuck one must not stall the daemon


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _one_line(text: str) -> str:
    # A newline would start a new assignment: "idle\nREADY=1" must stay status text.
    return " ".join(str(text).splitlines()).replace("\0", " ")


class Notifier:
    """Tells systemd about the daemon: ready, status, watchdog, reloading, stopping."""

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: int | None = None,
        log: logging.Logger | None = None,
        monotonic: Callable[[], int] = monotonic_usec,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.log = log or logging.getLogger("ciwatch.sdnotify")
        self._address = self._sockaddr(address) if address else None
        self._watchdog_usec = watchdog_usec
        self._monotonic = monotonic
        self._send_timeout = send_timeout
        self._lock = threading.Lock()
        self._failing = False

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str],
        *,
        pid: int | None = None,
        log: logging.Logger | None = None,
        monotonic: Callable[[], int] = monotonic_usec,
    ) -> Notifier:
        """A notifier for this process from NOTIFY_SOCKET, WATCHDOG_USEC and
        WATCHDOG_PID (a watchdog meant for another pid is not ours)."""
        pid = os.getpid() if pid is None else pid
        usec: int | None = None
        try:
            usec = int(environ.get("WATCHDOG_USEC", ""))
            wd_pid = environ.get("WATCHDOG_PID")
            if usec <= 0 or (wd_pid and int(wd_pid) != pid):
                usec = None
        except ValueError:
            usec = None
        return cls(
            environ.get("NOTIFY_SOCKET") or None, watchdog_usec=usec, log=log, monotonic=monotonic
        )

    def _sockaddr(self, address: str) -> str | bytes | None:
        if address.startswith("@"):
            return b"\0" + address[1:].encode("utf-8", "surrogateescape")
        if address.startswith("/"):
            return address
        # e.g. vsock: (systemd 254+ for VMs): not a local socket we can reach.
        self.log.warning("NOTIFY_SOCKET=%r is not a unix socket; systemd will not be told", address)
        return None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half the configured WatchdogSec, as
        systemd advises; None when no watchdog is set for this process."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2e6

    # -- messages ----------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) is complete: systemd releases units ordered after us."""
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        """Free text shown by `systemctl status`."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """Still alive; without it for WatchdogSec systemd kills and restarts us."""
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        """A reload started; READY=1 ends it. MONOTONIC_USEC lets systemd 253+
        tell this reload from an older one."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={self._monotonic()}")

    def stopping(self) -> bool:
        """Shutdown started (systemd then shows "deactivating")."""
        return self.notify("STOPPING=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before the start/stop timeout fires (e.g. a long
        recovery at start, or a shutdown grace above TimeoutStopSec)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1e6))}")

    def notify(self, *fields: str) -> bool:
        """Send the fields as one datagram; True when systemd got it."""
        if self._address is None:
            return False
        data = "\n".join(fields).encode("utf-8", "replace") + b"\n"
        with self._lock:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                    s.settimeout(self._send_timeout)
                    s.sendto(data, self._address)
            except OSError as exc:
                level = logging.DEBUG if self._failing else logging.WARNING
                self._failing = True
                self.log.log(level, "cannot notify systemd (%s): %s", fields[0], exc)
                return False
            if self._failing:
                self.log.info("notifying systemd works again")
            self._failing = False
            return True
