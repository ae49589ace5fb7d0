"""The notify protocol against real AF_UNIX datagram sockets, read back byte for byte."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from ciwatch.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path):
    """A socket bound where systemd's would be; yields (path, receive())."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)

    def receive() -> bytes:
        return sock.recv(65536)

    yield str(path), receive
    sock.close()


def test_ready_status_and_stopping_arrive_as_systemd_reads_them(listener):
    path, receive = listener
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready() is True
    assert receive() == b"READY=1\n"
    assert n.ready(status="serving 2 repositories")
    assert receive() == b"READY=1\nSTATUS=serving 2 repositories\n"
    assert n.status("running 1, queued 3")
    assert receive() == b"STATUS=running 1, queued 3\n"
    assert n.watchdog()
    assert receive() == b"WATCHDOG=1\n"
    assert n.stopping()
    assert receive() == b"STOPPING=1\n"
    assert n.extend_timeout(90)
    assert receive() == b"EXTEND_TIMEOUT_USEC=90000000\n"


def test_status_text_cannot_inject_other_assignments(listener):
    path, receive = listener
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    n.status("queued refs/heads/x\nREADY=1\nMAINPID=1\0WATCHDOG=trigger")
    lines = receive().decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("STATUS=queued refs/heads/x")
    assert "READY=1" not in lines and not any(line.startswith("MAINPID") for line in lines)


def test_reloading_carries_the_monotonic_clock_in_microseconds(listener):
    path, receive = listener
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = receive().decode().splitlines()
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after


def test_abstract_socket_names_start_with_at():
    name = f"ciwatch-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        n = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert sock.recv(1024) == b"READY=1\n"
    finally:
        sock.close()


def test_a_child_process_notifies_through_its_environment(listener):
    path, receive = listener
    code = "import os; from ciwatch.sdnotify import Notifier; Notifier.from_environ(os.environ).ready('up')"
    env = {**os.environ, "NOTIFY_SOCKET": path}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)
    assert receive() == b"READY=1\nSTATUS=up\n"


def test_without_notify_socket_every_call_is_a_silent_no_op(caplog):
    n = Notifier.from_environ({})
    with caplog.at_level(logging.DEBUG):
        assert not n.enabled
        assert n.ready() is False
        assert n.status("x") is False
        assert n.watchdog() is False
        assert n.reloading() is False
        assert n.stopping() is False
    assert caplog.records == []


def test_a_failing_socket_never_raises_and_is_logged_once_per_outage(tmp_path, caplog):
    path = tmp_path / "later.sock"
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(path)})
    with caplog.at_level(logging.DEBUG, logger="ciwatch.sdnotify"):
        for _ in range(5):
            assert n.watchdog() is False
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "WATCHDOG=1" in warnings[0].getMessage()

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    try:
        assert n.watchdog() is True
        assert sock.recv(1024) == b"WATCHDOG=1\n"
    finally:
        sock.close()
    # The socket is gone again: a new outage is worth a new warning.
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="ciwatch.sdnotify"):
        path.unlink()
        assert n.watchdog() is False
    assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [logging.WARNING]


def test_a_non_unix_notify_address_disables_notification(caplog):
    with caplog.at_level(logging.WARNING, logger="ciwatch.sdnotify"):
        n = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled and n.ready() is False
    assert "vsock:2:1234" in caplog.text


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_this_process(environ, expected):
    n = Notifier.from_environ({"NOTIFY_SOCKET": "/nonexistent", **environ}, pid=4242)
    assert n.watchdog_interval() == expected


def test_watchdog_pid_defaults_to_this_process():
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environ(mine).watchdog_interval() == 1.0


def test_many_threads_notify_at_once_and_every_datagram_arrives_whole(listener):
    path, receive = listener
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(receive() for _ in range(50)))
    reader.start()
    threads = [threading.Thread(target=n.status, args=(f"status {i}",)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader.join(5)
    assert sorted(got) == sorted(f"STATUS=status {i}\n".encode() for i in range(50))


def test_a_receiver_that_stops_reading_costs_a_bounded_wait(listener):
    path, _ = listener  # bound, never read: its queue fills up
    n = Notifier(path, send_timeout=0.2)
    sent = 0
    while n.watchdog():
        sent += 1
        assert sent < 10_000
    start = time.monotonic()
    assert n.status("still here") is False
    assert time.monotonic() - start < 1.0
