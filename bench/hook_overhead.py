"""What ciwatch's post-receive hook adds to a `git push`, and how soon the daemon
hands a spooled push to the intake.

1. Pushes of one new commit into two local bare repositories, one with the
   installed hook and one without, interleaved in the same run: medians and the
   difference (target: at most 10 ms).
2. Spool file rename -> `intake.submit` called, through HookSpool's watch
   (inotify, and the watchdog fallback): median, p95 and max.

    python3 bench/hook_overhead.py [--pushes 41] [--files 200] [--dir /tmp/x]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ciwatch.hookinstall import coreutils_sync_file, install_hook  # noqa: E402
from ciwatch.sources.hookspool import HookSpool, spool_header  # noqa: E402

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "b",
    "GIT_AUTHOR_EMAIL": "b@example.invalid",
    "GIT_COMMITTER_NAME": "b",
    "GIT_COMMITTER_EMAIL": "b@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=ENV, check=True, capture_output=True)


def timed_push(work: Path, remote: Path) -> float:
    t = time.perf_counter()
    git(work, "push", "-q", str(remote), "HEAD:refs/heads/main")
    return time.perf_counter() - t


def push_overhead(base: Path, pushes: int, fsync: bool) -> tuple[float, float]:
    """(median without the hook, median with it) in seconds."""
    work = base / "work"
    git(base, "init", "-q", "-b", "main", str(work))
    plain, hooked = base / "plain.git", base / "hooked.git"
    for bare in (plain, hooked):
        git(base, "init", "-q", "--bare", str(bare))
    spool = base / "spool"
    install_hook(hooked, "app", spool, base / "daemon.url", fsync=fsync)
    without, with_hook = [], []
    for i in range(pushes + 1):
        git(work, "commit", "-q", "--allow-empty", "-m", f"c{i}")
        order = [(plain, without), (hooked, with_hook)]
        if i % 2:
            order.reverse()  # neither side always pays for a cold cache first
        for remote, times in order:
            times.append(timed_push(work, remote))
        for f in spool.glob("*.push"):
            f.unlink()
    # the first push of each creates the branch and warms caches: not counted
    return statistics.median(without[1:]), statistics.median(with_hook[1:])


class Clocked:
    """An intake that notes when each event arrives."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.event = threading.Event()

    def submit(self, event):
        self.arrived.setdefault(event.sha, time.perf_counter())
        self.event.set()
        return None, True


def spool_latency(base: Path, files: int, watcher: str) -> list[float]:
    spool = base / f"spool-{watcher}"
    intake = Clocked()
    hs = HookSpool(spool, intake, lambda n: n == "app", watcher=watcher, rescan_interval=5)
    hs.start()
    sent: dict[str, float] = {}
    try:
        for i in range(files):
            sha = f"{i + 1:040x}"
            line = f"{'0' * 40} {sha} refs/heads/main\n".encode()
            intake.event.clear()
            tmp = spool / f".{i}.tmp"
            tmp.write_bytes(spool_header("app") + line)
            sent[sha] = time.perf_counter()
            os.rename(tmp, spool / f"{i}-bench.push")  # as the hook's `mv` does
            intake.event.wait(6)
            time.sleep(0.002)
    finally:
        hs.stop()
    return sorted((intake.arrived.get(s, t + 99) - t) * 1000 for s, t in sent.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pushes", type=int, default=41)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        fsync = coreutils_sync_file()
        for label, use_fsync in (("with fsync", True), ("without fsync", False)):
            if use_fsync and not fsync:
                print("sync FILE is not available here: the hook is installed without fsync")
                continue
            d = base / label.replace(" ", "-")
            d.mkdir()
            plain, hooked = push_overhead(d, args.pushes, use_fsync)
            print(
                f"git push, one commit ({label}, median of {args.pushes}): "
                f"without hook {plain * 1000:.1f} ms, with hook {hooked * 1000:.1f} ms, "
                f"hook adds {(hooked - plain) * 1000:.1f} ms (target <= 10 ms)"
            )
        for watcher in ("inotify", "watchdog"):
            lat = spool_latency(base, args.files, watcher)
            p95 = lat[int(len(lat) * 0.95) - 1]
            print(
                f"spool rename -> intake.submit ({watcher}, {len(lat)} files): "
                f"median {statistics.median(lat):.2f} ms, p95 {p95:.2f} ms, max {lat[-1]:.2f} ms"
            )


if __name__ == "__main__":
    main()
