"""An idle `ciwatch serve`: memory and CPU while nothing is pushed.

The daemon watches 100 local bare repositories (`watch: true`, no hook) and
polls 100 remotes served by one `git daemon` on 127.0.0.1 every 60 s (default
config otherwise: one spare worker). Once start-up has settled (every
repository's refs recorded, the spare loaded, then 5 s more), a window of 60 s:

- RSS (VmRSS) of the daemon and, separately, of its idle spare worker(s)
- CPU of each from /proc/PID/stat over the window: utime + stime, and for the
  daemon also the git processes it started and reaped (cutime + cstime), as % of
  one core

Baselines in the same run and window: an idle `python3` (`time.sleep`), and an
idle `python3` that imported the daemon's modules (`import ciwatch.daemon`).

Where it goes: the same daemon with no repositories, with only the watched ones and
with only the polled ones (RSS, threads, CPU over 20 s, between two polls), and the
RSS of a fresh python3 after importing each large dependency.

    python3 bench/idle.py [--window 60] [--repos 100] [--remotes 100] [--part-window 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import (  # noqa: E402
    ROOT,
    DaemonProc,
    GitDaemon,
    Rows,
    children,
    git,
    wait_for,
    waiting_for_run,
)

TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> tuple[float, float]:
    """(own utime + stime, reaped children's cutime + cstime) in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / TICK
    kids = (int(fields[13]) + int(fields[14])) / TICK
    return own, kids


def status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def rss_mb(pid: int) -> float:
    return int(status(pid)["VmRSS"].split()[0]) / 1024


def workers_of(daemon_pid: int) -> list[int]:
    found = []
    for pid in children(daemon_pid):
        try:
            if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


def make_template(base: Path) -> Path:
    """A bare repository with one commit holding a pipeline."""
    work, bare = base / "template-work", base / "template.git"
    work.mkdir(parents=True)
    git(work, "init", "-q", "-b", "main")
    (work / ".ciwatch.yml").write_text("steps:\n  - run: 'true'\n")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "one")
    git(base, "clone", "-q", "--bare", str(work), str(bare))
    return bare


IMPORTS = (
    ("python3", "pass"),
    ("pydantic", "import pydantic"),
    ("APScheduler's BackgroundScheduler", "import apscheduler.schedulers.background"),
    ("watchdog", "import watchdog.observers"),
    ("ciwatch.config", "import ciwatch.config"),
    ("ciwatch.daemon", "import ciwatch.daemon"),
    ("ciwatch.cli (what `ciwatch serve` loads)", "import ciwatch.cli"),
)
_RSS_SELF = (
    "import re; print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
)


def import_rss() -> list[tuple[str, float]]:
    """RSS in MB of a fresh python3 after one import each."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = []
    for label, code in IMPORTS:
        res = subprocess.run(
            [sys.executable, "-c", f"{code}\n{_RSS_SELF}"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        out.append((label, int(res.stdout) / 1024))
    return out


def settle(d: DaemonProc, total: int) -> float:
    """Wait until every repository's refs are recorded and a spare worker is idle;
    returns the seconds it took from now."""
    t = time.monotonic()
    rows = Rows(d.state / "ciwatch.db")
    q = "SELECT COUNT(DISTINCT repo_id) FROM refs_seen"
    try:
        wait_for(lambda: rows.conn.execute(q).fetchone()[0] >= total, 60, 0.2, "refs recorded")
    finally:
        rows.close()

    def spare_loaded() -> bool:
        spare = workers_of(d.proc.pid)
        return bool(spare) and all(waiting_for_run(p) for p in spare)

    wait_for(spare_loaded, 30, 0.05, "an idle spare worker")
    return time.monotonic() - t


def part_of(base: Path, repos: list[dict], window: float) -> dict:
    """RSS (MB), threads and CPU (% of a core: own, and with reaped git processes)
    over `window` seconds of a daemon with these repositories, once settled."""
    base.mkdir(parents=True)
    d = DaemonProc(base, {"repos": repos})
    d.start()
    try:
        settle(d, len(repos))
        time.sleep(2)
        pid = d.proc.pid
        before, t = cpu(pid), time.monotonic()
        time.sleep(window)
        after, took = cpu(pid), time.monotonic() - t
        return {
            "rss": rss_mb(pid),
            "threads": status(pid)["Threads"],
            "cpu": 100 * (after[0] - before[0]) / took,
            "cpu_all": 100 * (after[0] + after[1] - before[0] - before[1]) / took,
        }
    finally:
        d.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--repos", type=int, default=100)
    ap.add_argument("--remotes", type=int, default=100)
    ap.add_argument("--part-window", type=float, default=20.0)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        template = make_template(base)
        served = base / "served"
        served.mkdir()
        repos = []
        for i in range(args.repos):
            path = base / "local" / f"r{i:03d}.git"
            shutil.copytree(template, path)
            repos.append({"name": f"local{i:03d}", "path": str(path), "watch": True})
        for i in range(args.remotes):
            shutil.copytree(template, served / f"r{i:03d}.git")
        with GitDaemon(served) as gd:
            for i in range(args.remotes):
                url = gd.url(f"r{i:03d}.git")
                repos.append({"name": f"remote{i:03d}", "url": url, "poll_interval": "60s"})
            d = DaemonProc(base, {"repos": repos})
            idle_env = {**os.environ, "PYTHONPATH": str(ROOT)}
            plain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
            loaded = subprocess.Popen(
                [sys.executable, "-c", "import time, ciwatch.daemon; time.sleep(3600)"],
                env=idle_env,
            )
            t_start = time.monotonic()
            d.start()
            try:
                settle(d, args.repos + args.remotes)
                settled = time.monotonic() - t_start
                spare = workers_of(d.proc.pid)
                time.sleep(5)
                pids = {"daemon": d.proc.pid, "plain": plain.pid, "loaded": loaded.pid}
                pids.update({f"spare {p}": p for p in spare})
                before = {k: cpu(p) for k, p in pids.items()}
                t0, wall0 = time.monotonic(), time.time()
                time.sleep(args.window)
                window = time.monotonic() - t0
                after = {k: cpu(p) for k, p in pids.items()}
                rss = {k: rss_mb(p) for k, p in pids.items()}
                hwm = int(status(d.proc.pid)["VmHWM"].split()[0]) / 1024
                threads = status(d.proc.pid)["Threads"]
                out = d.cli("status", "--json")
                polled = [
                    src
                    for src in json.loads(out.stdout).get("sources", [])
                    if src.get("kind") == "poll" and (src.get("last_ok") or 0) >= wall0
                ]
            finally:
                d.stop()
                for p in (plain, loaded):
                    p.terminate()
                    p.wait()
            # Where the memory goes: the same daemon with parts of the configuration.
            local, remote = repos[: args.repos], repos[args.repos :]
            imports = import_rss()
            w = args.part_window
            parts = {
                "no repositories": part_of(base / "part-none", [], w),
                f"only the {args.repos} watched": part_of(base / "part-local", local, w),
                f"only the {args.remotes} polled (no poll due)": part_of(
                    base / "part-remote", remote, w
                ),
            }
    print(f"load average at end: {os.getloadavg()[0]:.2f}", file=sys.stderr)

    def pct(key: str, kids: bool = False) -> float:
        own = after[key][0] - before[key][0]
        if kids:
            own += after[key][1] - before[key][1]
        return 100 * own / window

    print(
        f"idle daemon: {args.repos} watched local repositories, {args.remotes} remotes polled "
        f"every 60 s on one git daemon ({len(polled)} of them polled in the window); start-up "
        f"settled after "
        f"{settled:.1f} s, then a window of {window:.0f} s"
    )
    rss_ok = "met" if rss["daemon"] <= 40 else "MISSED"
    cpu_ok = "met" if pct("daemon", True) <= 1.0 else "MISSED"
    print(
        f"  daemon: RSS {rss['daemon']:.1f} MB (peak {hwm:.1f} MB, {threads} threads) "
        f"(target <= 40 MB: {rss_ok}); CPU {pct('daemon'):.2f}% of a core, "
        f"{pct('daemon', True):.2f}% with the git processes it started (target <= 1%: {cpu_ok})"
    )
    for key in pids:
        if key.startswith("spare"):
            print(f"  idle spare worker: RSS {rss[key]:.1f} MB; CPU {pct(key):.2f}%")
    print(
        f"  baseline: idle python3 RSS {rss['plain']:.1f} MB, CPU {pct('plain'):.2f}%; "
        f"idle python3 with ciwatch.daemon imported RSS {rss['loaded']:.1f} MB, "
        f"CPU {pct('loaded'):.2f}%"
    )
    print(f"  the daemon with part of the configuration (settled; CPU over {w:g} s):")
    for k, v in parts.items():
        print(
            f"    {k}: RSS {v['rss']:.1f} MB, {v['threads']} threads, CPU {v['cpu']:.2f}% "
            f"({v['cpu_all']:.2f}% with git)"
        )
    print(
        "  RSS of a fresh python3 after one import: "
        + "; ".join(f"{label} {mb:.1f} MB" for label, mb in imports)
    )


if __name__ == "__main__":
    main()
