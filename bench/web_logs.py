"""Step logs over the daemon's web server: memory for a 50 MB log, CPU for a
hundred live followers.

1. A step prints 50 MB (about 870,000 lines of 60 bytes). With the run
   finished, the daemon serves: the run page (the failing step open, its last
   lines rendered), the raw log (all 50 MB), a Range of it from the middle, the
   line records of its last 1,000 lines and the SSE stream from the first line
   to the end (every record, as a reconnecting browser with no Last-Event-ID
   would get them). The daemon's VmRSS is read from /proc before and after each
   answer, and VmHWM (its peak) at the end.
2. A step prints a line every 20 ms (--tick) for ~25 s. 100 clients follow its SSE
   stream at once (raw sockets, all in this process); the daemon's CPU time
   (utime + stime from /proc/<pid>/stat) is measured over 10 s while they all
   follow, and every client's lines are checked to be complete and in order.

Targets: RSS growth under 20 MB for (1); under one core for (2).

    python3 bench/web_logs.py [--mb 50] [--clients 100] [--seconds 10] [--tick 0.02]
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from daemonutil import DaemonProc, wait_for  # noqa: E402
from gitutil import git, make_repo  # noqa: E402


def status(pid: int, key: str) -> int:
    """A /proc/<pid>/status figure in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mb(kib: int) -> str:
    return f"{kib / 1024:.1f} MB"


def start(tmp: Path, pipeline: str) -> tuple[DaemonProc, str]:
    bare, work = tmp / "app.git", tmp / "work"
    git(tmp, "init", "-q", "--bare", "-b", "main", str(bare))
    make_repo(work, {".ciwatch.yml": "steps: [{run: 'true'}]\n"})
    git(work, "push", "-q", str(bare), "HEAD:refs/heads/main")
    d = DaemonProc(
        tmp,
        {
            "repos": [{"name": "app", "path": str(bare)}],
            "limits": {"log_cap": "200MB"},
            "daemon": {"spare_workers": 1},
        },
    )
    assert d.cli("install-hook", str(bare), "--name", "app").returncode == 0
    d.start()
    url = (d.state / "daemon.url").read_text().split()[1]
    (work / ".ciwatch.yml").write_text(pipeline)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "bench")
    git(work, "push", "-q", str(bare), "HEAD:refs/heads/main")
    return d, url


def step_of(url: str, state: str | None = None, timeout: float = 120) -> tuple[int, int]:
    """(run id, step id) of the newest run once its step is in `state` (any)."""

    def found():
        runs = requests.get(url + "/api/runs", timeout=10).json()["runs"]
        if not runs:
            return None
        run = requests.get(f"{url}/api/runs/{runs[0]['id']}", timeout=10).json()
        steps = run["steps"]
        if steps and (state is None or steps[0]["state"] == state):
            return run["id"], steps[0]["id"]
        return None

    return wait_for(found, timeout, 0.2, what=f"a step {state or ''}")


def drain(resp: requests.Response) -> int:
    n = 0
    for chunk in resp.iter_content(1 << 16):
        n += len(chunk)
    return n


def big_log(mb_total: int) -> None:
    lines = mb_total * 1_000_000 // 60
    pipeline = (
        "steps:\n  - name: print\n    run: |\n"
        f"      seq -f 'line %09.0f of the build output, padded to sixty bytes' {lines}\n"
        "      exit 1\n"
    )
    with tempfile.TemporaryDirectory(prefix="ciwatch-bench-") as t:
        d, url = start(Path(t), pipeline)
        try:
            run_id, step_id = step_of(url, "failure")
            pid = d.proc.pid
            size = requests.get(f"{url}/api/runs/{run_id}", timeout=10).json()["steps"][0][
                "log_bytes"
            ]
            print(f"step log: {size / 1e6:.1f} MB output, daemon pid {pid}")
            requests.get(url + "/", timeout=10)  # warm: templates, first imports
            base = status(pid, "VmRSS")
            print(f"daemon RSS before: {mb(base)}")
            rows = []

            def measure(what: str, fn) -> None:
                t0 = time.perf_counter()
                got = fn()
                took = time.perf_counter() - t0
                rss = status(pid, "VmRSS")
                rows.append((what, got, took, rss))

            log = f"{url}/api/steps/{step_id}/log"
            measure(
                "run page", lambda: len(requests.get(f"{url}/runs/{run_id}", timeout=60).content)
            )
            measure("raw log, whole", lambda: drain(requests.get(log, stream=True, timeout=120)))
            measure(
                "raw log, Range from the middle (10 MB)",
                lambda: drain(
                    requests.get(
                        log,
                        headers={"Range": f"bytes={size // 2}-{size // 2 + 10_000_000 - 1}"},
                        stream=True,
                        timeout=120,
                    )
                ),
            )
            measure(
                "lines, last 1,000",
                lambda: len(requests.get(log + "/lines?tail=1000", timeout=60).content),
            )
            measure(
                "SSE stream, every record",
                lambda: drain(requests.get(log + "/stream", stream=True, timeout=300)),
            )
            print("| answer | bytes sent | time | daemon RSS after | growth |")
            print("| --- | --- | --- | --- | --- |")
            for what, got, took, rss in rows:
                print(
                    f"| {what} | {got / 1e6:.1f} MB | {took:.2f} s | {mb(rss)} | {mb(rss - base)} |"
                )
            peak = status(pid, "VmHWM")
            print(f"daemon peak RSS (VmHWM): {mb(peak)}; growth over the start: {mb(peak - base)}")
        finally:
            d.stop()


class Follower:
    """One SSE client on a raw socket: counts the records, checks their order."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.sock = socket.create_connection((host, port))
        head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
        self.sock.sendall(head.encode() + b"\r\n")
        self.sock.setblocking(False)
        self.buf = b""
        self.last = 0
        self.records = 0
        self.ended = False
        self.bad = ""

    def feed(self, data: bytes) -> None:
        self.buf += data
        while b"\n\n" in self.buf:
            event, self.buf = self.buf.split(b"\n\n", 1)
            if b"event: end" in event:
                self.ended = True
            for line in event.split(b"\n"):
                if line.startswith(b"data: ["):
                    for rec in json.loads(line[6:]):
                        if rec["n"] != self.last + 1:
                            self.bad = f"got {rec['n']} after {self.last}"
                        self.last = rec["n"]
                        self.records += 1


def followers(clients: int, seconds: float, tick: float) -> None:
    total = int((seconds + 15) / tick)
    pipeline = (
        "steps:\n  - name: live\n    run: |\n"
        f'      i=0; while [ $i -lt {total} ]; do i=$((i+1)); echo "tick $i"; sleep {tick}; done\n'
    )
    with tempfile.TemporaryDirectory(prefix="ciwatch-bench-") as t:
        d, url = start(Path(t), pipeline)
        try:
            _run_id, step_id = step_of(url, "running")
            pid = d.proc.pid
            host, port = url.removeprefix("http://").rsplit(":", 1)
            sel = selectors.DefaultSelector()
            conns = [
                Follower(host, int(port), f"/api/steps/{step_id}/log/stream")
                for _ in range(clients)
            ]
            for c in conns:
                sel.register(c.sock, selectors.EVENT_READ, c)

            def pump(until: float) -> None:
                while time.monotonic() < until and not all(c.ended for c in conns):
                    for key, _ in sel.select(0.1):
                        data = key.fileobj.recv(1 << 16)
                        if data:
                            key.data.feed(data)
                        else:
                            sel.unregister(key.fileobj)

            pump(time.monotonic() + 2)  # every client connected and caught up
            rss0, cpu0, t0 = status(pid, "VmRSS"), cpu_seconds(pid), time.monotonic()
            got0 = sum(c.records for c in conns)
            pump(t0 + seconds)
            cpu1, t1 = cpu_seconds(pid), time.monotonic()
            got1 = sum(c.records for c in conns)
            rss1 = status(pid, "VmRSS")
            pump(time.monotonic() + 120)  # to the end of the step
            ended = sum(c.ended for c in conns)
            bad = [c.bad for c in conns if c.bad]
            lines = [c.last for c in conns]
            for c in conns:
                c.sock.close()
            cores = (cpu1 - cpu0) / (t1 - t0)
            print(f"{clients} followers for {t1 - t0:.1f} s, a line every {tick * 1000:.0f} ms")
            print(f"daemon CPU: {cpu1 - cpu0:.2f} s in {t1 - t0:.1f} s = {cores:.2f} cores")
            rate = (got1 - got0) / (t1 - t0)
            print(f"records delivered in the window: {got1 - got0} ({rate:.0f}/s)")
            print(f"daemon RSS {mb(rss0)} -> {mb(rss1)}")
            print(f"streams ended with the step: {ended}/{clients}")
            print(f"lines each client got: {min(lines)}..{max(lines)}")
            print(f"out-of-order or missing records: {len(bad)} {bad[:3]}")
        finally:
            d.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--tick", type=float, default=0.02, help="seconds between live lines")
    args = ap.parse_args()
    print(f"== a {args.mb} MB log ==")
    big_log(args.mb)
    print(f"\n== {args.clients} live followers ==")
    followers(args.clients, args.seconds, args.tick)


if __name__ == "__main__":
    main()
