"""The web with a large history: 100,000 runs (two steps each) and 1 GB of step
logs in the store, served by a real `ciwatch serve`; time per request of the
API, the dashboard, a run page and /metrics, measured at the client over
loopback (so HTTP is included: server time is at most this).

The store is filled with direct SQL inserts (after the real migrations), the
logs are real log files in the real format; then the daemon starts on that
state directory and the pages are asked for, interleaved, N times each.

    python3 bench/web_api.py [--runs 100000] [--log-mb 1024] [--n 200] [--dir /tmp/x]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ciwatch.store import Store  # noqa: E402

REPOS = ["app", "lib", "docs", "infra", "site"]
BRANCHES = ["main"] * 6 + ["dev", "release/2.0", "feature/login", "feature/search"]
STATES = ["success"] * 8 + ["failure", "error", "canceled"]
SOURCES = ["hook"] * 5 + ["watch", "poll", "webhook", "cron", "manual"]
LINE = b"0.%03d o compiling module %05d ... ok [########################################]\n"


def fill(state: Path, runs: int, log_mb: int, seed: int = 1) -> None:
    """The store and the log files."""
    rng = random.Random(seed)
    store = Store.open(state / "ciwatch.db")
    store.close()
    db = sqlite3.connect(state / "ciwatch.db")
    db.execute("PRAGMA synchronous = OFF")
    db.executemany(
        "INSERT INTO repos (id, name, url, default_branch) VALUES (?, ?, ?, 'main')",
        [(i + 1, n, f"/srv/git/{n}.git") for i, n in enumerate(REPOS)],
    )
    per_step = max(1, log_mb * (1 << 20) // (runs * 2))
    lines = max(1, per_step // len(LINE % (0, 0)))
    t0 = time.time() - runs * 60
    numbers = dict.fromkeys(range(1, len(REPOS) + 1), 0)
    events, rows, attempts, steps = [], [], [], []
    for i in range(1, runs + 1):
        repo = rng.randrange(len(REPOS)) + 1
        numbers[repo] += 1
        ref = f"refs/heads/{rng.choice(BRANCHES)}".encode()
        sha = f"{rng.getrandbits(160):040x}"
        source, state_ = rng.choice(SOURCES), rng.choice(STATES)
        created = t0 + i * 60
        started, finished = created + rng.random() * 5, created + 5 + rng.random() * 300
        kind = "cron" if source == "cron" else "manual" if source == "manual" else "push"
        events.append((i, repo, kind, ref, sha, None, source, 1, None, "[]", created))
        rows.append(
            (
                i,
                repo,
                numbers[repo],
                i,
                kind,
                ref,
                sha,
                source,
                1,
                state_,
                created,
                started,
                finished,
                f"commit {i}: make the thing faster",
                "Ada Lovelace",
                created,
                state_,
            )
        )
        attempts.append((i, i, 1, state_, "bench:1", started, started + 60, finished))
        for idx, name in enumerate(("build", "test")):
            sid = 2 * i + idx - 1
            path = state / "runs" / str(i) / "a1" / f"{idx}.log"
            steps.append(
                (sid, i, 1, "", idx, name, "success", 0, started, finished, str(path), per_step)
            )
    db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", events)
    db.executemany(
        """INSERT INTO runs (id, repo_id, number, event_id, kind, ref, sha, source, trusted,
                             state, created_at, started_at, finished_at, subject, author,
                             resolved_at, reported_state)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        rows,
    )
    db.executemany(
        """INSERT INTO attempts (id, run_id, number, state, worker, started_at, lease_until,
                                 finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
        attempts,
    )
    db.executemany(
        """INSERT INTO steps (id, run_id, attempt, cell, idx, name, state, exit_code,
                              started_at, finished_at, log_path, log_bytes)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        steps,
    )
    db.executemany(
        "UPDATE repos SET last_number = ? WHERE id = ?", [(n, r) for r, n in numbers.items()]
    )
    db.commit()
    db.close()
    body = b"".join(LINE % (k % 1000, k) for k in range(lines))
    for _sid, run_id, _a, _c, idx, *_rest, path, _b in steps:
        if idx == 0:
            path_dir = state / "runs" / str(run_id) / "a1"
            path_dir.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"#ciwatch-log 1 start=%d\n" % int(t0 + run_id * 60))
            f.write(body)


def serve(work: Path, state: Path) -> tuple[subprocess.Popen, str]:
    config = work / "ciwatch.yaml"
    config.write_text(f"state_dir: {state}\nlisten: 127.0.0.1:0\nconcurrency: 1\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NOTIFY_SOCKET", None)
    log = open(work / "daemon.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ciwatch", "serve", "-c", str(config)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url_file = state / "daemon.url"
    deadline = time.monotonic() + 120
    while not url_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the daemon did not start:\n{(work / 'daemon.log').read_text()}")
        time.sleep(0.05)
    return proc, url_file.read_text().split()[1]


def ms(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return f"{statistics.median(values) * 1000:7.1f} {p95 * 1000:7.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--log-mb", type=int, default=1024)
    ap.add_argument("--n", type=int, default=200, help="requests per page")
    ap.add_argument("--dir", type=Path, help="work here (kept; reused when already filled)")
    args = ap.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="ciwatch-web-bench-"))
    state = work / "state"
    if not (state / "ciwatch.db").exists():
        state.mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        fill(state, args.runs, args.log_mb)
        print(
            f"filled {args.runs} runs and {args.log_mb} MB of logs in {time.monotonic() - t:.0f}s"
        )
    logs = sum(p.stat().st_size for p in (state / "runs").rglob("*.log"))
    print(f"store: {(state / 'ciwatch.db').stat().st_size / 1e6:.0f} MB, logs {logs / 1e9:.2f} GB")
    proc, url = serve(work, state)
    try:
        http = requests.Session()
        runs = args.runs
        # Page 500 of 50 with two filters: `before` is the 24,950th match.
        with sqlite3.connect(state / "ciwatch.db") as db:
            row = db.execute(
                """SELECT id FROM runs WHERE state = 'success' AND source = 'hook'
                   ORDER BY id DESC LIMIT 1 OFFSET 24949"""
            ).fetchone()
        before = row[0] if row else runs // 2
        t = time.perf_counter()
        first = http.get(f"{url}/metrics")
        first_scrape = time.perf_counter() - t
        pages = {
            "GET /api/runs (page 1)": "/api/runs",
            "GET /api/runs?repo&branch (page 1)": "/api/runs?repo=lib&branch=dev",
            "GET /api/runs page 500, state+trigger": (
                f"/api/runs?state=success&trigger=hook&before={before}"
            ),
            "GET /api/runs/{id}": f"/api/runs/{runs // 2}",
            "GET /api/repos": "/api/repos",
            "GET /api/queue": "/api/queue",
            "GET / (dashboard)": "/",
            "GET /runs/{id} (run page)": f"/runs/{runs // 2}",
            "GET /metrics (after the first)": "/metrics",
        }
        for path in pages.values():
            r = http.get(url + path)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
        times: dict[str, list[float]] = {k: [] for k in pages}
        for _ in range(args.n):
            for name, path in pages.items():
                t = time.perf_counter()
                r = http.get(url + path)
                times[name].append(time.perf_counter() - t)
                r.raise_for_status()
        assert first.status_code == 200
        print(f"\n{'request':<40} {'median':>7} {'p95':>7}  (ms, n={args.n})")
        for name, values in times.items():
            print(f"{name:<40} {ms(values)}")
        print(f"{'GET /metrics, first scrape (history)':<40} {first_scrape * 1000:7.1f}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
