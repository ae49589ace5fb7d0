"""Push-to-first-step latency of `ciwatch serve`, by source: hook, watcher, poller.

A 20-file repository whose one-step pipeline runs `date +%s.%N > MARKS/$CIWATCH_SHA`.
For each source a fresh daemon (default config, `workspace.keep_all` so that the
checkout's timestamps can be read afterwards) gets one push at a time:

- hook: the post-receive hook installed, `watch: false`
- watcher: no hook, `watch: true`
- poller: the bare repository served by a real `git daemon`, polled every 1 s

Latency = the step's own `date` minus the moment just before `git push`. Before
each push the daemon's spare worker is idle (blocked reading its standard input):
pushes a few seconds apart, as people make them. The first push of each source
(a cold mirror) is not counted.

Baseline, measured between the pushes: the same workspace preparation and spawn by
hand, `git clone --shared --no-checkout MIRROR` + `git checkout --detach SHA` +
`sh -c 'date +%s.%N > FILE'`, from the start of the clone to the `date`.

Where the time goes (per phase, medians over the counted pushes) comes from the
store rows (events.received_at, runs.resolved_at, attempts.started_at,
steps.started_at), the daemon's debug log ("dispatched", millisecond stamps) and
the kept workspace (its `tmp/` is made just before the clone, `src/.git/index` is
written last by the checkout).

A diagnostic fourth run, `hook-late-spare`: the hook again, with the daemon started
so that the spare it starts at each dispatch waits 0.5 s before starting Python,
to see what that interpreter start costs the run it competes with for the CPU.

    python3 bench/latency.py [--pushes 50] [--poll-pushes 30] [--late-pushes 20]
    python3 bench/latency.py --quick    # the hook only, 20 pushes
                             [--sources hook,watcher,poller,hook-late-spare]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests", ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from daemonutil import DaemonProc, wait_for  # noqa: E402
from gitdaemon import GitDaemon  # noqa: E402
from synthrepo import make_synthetic_repo  # noqa: E402

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "b",
    "GIT_AUTHOR_EMAIL": "b@example.invalid",
    "GIT_COMMITTER_NAME": "b",
    "GIT_COMMITTER_EMAIL": "b@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}
_LOGLINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ \S+: (\S+) \(([0-9a-f]{12})\): dispatched"
)


# -- helpers shared with bench/burst.py ------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True)
    return out.stdout.decode().strip()


def make_repos(base: Path, pipeline: str, bare: Path) -> Path:
    """A 20-file work tree (10 commits) and a bare repository holding its main; returns
    the work tree."""
    work = base / "work"
    make_synthetic_repo(work, files=20, size=20 * 2048, commits=10, pipeline=pipeline)
    bare.parent.mkdir(parents=True, exist_ok=True)
    git(base, "init", "-q", "--bare", "-b", "main", str(bare))
    git(work, "push", "-q", str(bare), "main:refs/heads/main")
    return work


def new_commit(work: Path, i: int) -> str:
    """A commit changing one of the 20 files; returns its sha."""
    f = work / "src" / f"pkg{i % 20:02d}" / f"mod{i % 20:04d}.txt"
    f.write_bytes(os.urandom(2048))
    git(work, "commit", "-q", "-a", "-m", f"change {i}")
    return git(work, "rev-parse", "HEAD")


def timed_push(work: Path, remote: str) -> tuple[float, float]:
    """(wall time just before `git push`, wall time it returned)."""
    t0 = time.time()
    subprocess.run(
        ["git", "push", "-q", remote, "HEAD:refs/heads/main"],
        cwd=work,
        env=GIT_ENV,
        check=True,
        capture_output=True,
    )
    return t0, time.time()


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                found += [
                    int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
                ]
            except OSError:
                pass
    except OSError:
        pass
    return found


def waiting_for_run(pid: int) -> bool:
    """A worker blocked on its input: in pselect6 on the run-id pipe (x86-64
    syscall 270), or in read(0, ...) as single-run workers did."""
    try:
        syscall = Path(f"/proc/{pid}/syscall").read_text()
    except OSError:
        return False
    return syscall.startswith(("270 ", "0 0x0 "))


def idle_workers(daemon_pid: int) -> list[int]:
    """The daemon's worker processes waiting for a run: idle spares."""
    idle = []
    for pid in children(daemon_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"worker" in cmd and waiting_for_run(pid):
            idle.append(pid)
    return idle


def wait_spares(daemon_pid: int, n: int = 1, timeout: float = 20.0) -> None:
    wait_for(lambda: len(idle_workers(daemon_pid)) >= n, timeout, 0.01, "an idle spare worker")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def read_marker(path: Path, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = path.read_text().strip()
            if text:
                return float(text)
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no marker {path} after {timeout}s")
        time.sleep(0.005)


class Rows:
    """Read-only queries on the daemon's store."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)

    def state(self, sha: str) -> str | None:
        row = self.conn.execute("SELECT state FROM runs WHERE sha = ?", (sha,)).fetchone()
        return row[0] if row else None

    def wait_finished(self, sha: str, timeout: float = 30.0) -> None:
        done = ("success", "failure", "error", "canceled", "skipped")
        wait_for(lambda: self.state(sha) in done, timeout, 0.02, f"run of {sha[:12]} finished")

    def timeline(self, sha: str) -> dict[str, float | int | None]:
        row = self.conn.execute(
            """SELECT r.id, r.number, r.repo_id, e.received_at, r.created_at, r.resolved_at,
                      a.started_at, s.started_at, r.finished_at
               FROM runs r JOIN events e ON e.id = r.event_id
               LEFT JOIN attempts a ON a.run_id = r.id AND a.number = 1
               LEFT JOIN steps s ON s.run_id = r.id AND s.attempt = 1 AND s.idx = 0
               WHERE r.sha = ?""",
            (sha,),
        ).fetchone()
        keys = (
            "run_id",
            "number",
            "repo_id",
            "stored",
            "created",
            "resolved",
            "claimed",
            "executor",
            "finished",
        )
        return dict(zip(keys, row, strict=True))

    def close(self) -> None:
        self.conn.close()


def dispatched_times(log: Path) -> dict[str, float]:
    """sha[:12] -> when the daemon logged it dispatched (millisecond stamps)."""
    out: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = _LOGLINE.match(line)
        if m:
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
            out.setdefault(m.group(4), when + int(m.group(2)) / 1000 + 0.0005)
    return out


def checkout_times(state: Path, repo_id: int, number: int) -> tuple[float, float] | None:
    """(workspace made just before the clone, checkout's index written) of a kept workspace."""
    cell = state / "workspaces" / str(repo_id) / f"{number}-1" / "cell0"
    try:
        return (cell / "tmp").stat().st_mtime, (cell / "src" / ".git" / "index").stat().st_mtime
    except OSError:
        return None


def baseline_trial(mirror: Path, sha: str, scratch: Path) -> tuple[float, float]:
    """clone --shared + checkout + sh running `date`: (seconds to the `date`, of which
    from starting sh to the `date`)."""
    dest, marker = scratch / "bl", scratch / "bl.mark"
    shutil.rmtree(dest, ignore_errors=True)
    t0 = time.time()
    subprocess.run(
        ["git", "clone", "-q", "--shared", "--no-checkout", str(mirror), str(dest)],
        env=GIT_ENV,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["git", "checkout", "-q", "--detach", "--force", sha],
        cwd=dest,
        env=GIT_ENV,
        check=True,
        capture_output=True,
    )
    t1 = time.time()
    subprocess.run(["sh", "-c", 'date +%s.%N > "$1"', "sh", str(marker)], cwd=dest, check=True)
    at = float(marker.read_text())
    shutil.rmtree(dest, ignore_errors=True)
    return at - t0, at - t1


REPLAY = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import ciwatch.worker, ciwatch.app, ciwatch.cli  # what an idle spare has imported
from pathlib import Path
from ciwatch import pipeline
from ciwatch.pipeline.plan import Limits
from ciwatch.workspace import Mirrors
state, repo_id, url, sha, before, scratch = sys.argv[2:8]
mirror = Mirrors(Path(state)).mirror(int(repo_id), url)
blob = lambda: mirror.read_blob(sha, ".ciwatch.yml", 1 << 20)
data = blob()
calls = {
    "has_commit (cat-file -e): the worker's mirror.ensure": lambda: mirror.has_commit(sha),
    "read_blob (ls-tree + cat-file)": blob,
    "pipeline.parse": lambda: pipeline.parse(data, ".ciwatch.yml", Limits()),
    "changed_paths (cat-file -e + diff-tree)": lambda: mirror.changed_paths(before, sha, "main"),
    "checkout (clone --shared, 2x config, checkout, rev-parse)": None,
    "the resolver's fetch (+ ls-remote --symref), nothing new": lambda: mirror.fetch(),
}
out = {}
for name, call in calls.items():
    times = []
    for i in range(11):
        t = time.perf_counter()
        if call is None:
            ws = mirror.checkout(sha, Path(scratch) / f"replay{i}")
            times.append(time.perf_counter() - t)
            ws.remove()
        else:
            call()
            times.append(time.perf_counter() - t)
    out[name] = [times[0], statistics.median(times[1:])]
print(json.dumps(out))
"""


def replay(state: Path, repo_id: int, url: str, sha: str, before: str, scratch: Path) -> dict:
    """The git and parsing work of one run, timed alone in a fresh interpreter that
    imported what an idle spare worker has: {call: [first call, median of 10 more]}."""
    argv = [sys.executable, "-c", REPLAY, str(ROOT), str(state), str(repo_id), url, sha, before]
    out = subprocess.run([*argv, str(scratch)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


# -- the benchmark ---------------------------------------------------------------------

# (key, what, measured from): "dispatched" is logged after the run id is written to
# the spare and a new spare is started, so the claim is measured from "resolved".
PHASES = (
    ("stored", "intake: event and run stored", "t0"),
    ("push", "git push returned", "t0"),
    ("resolved", "resolved (mirror fetched, pipeline read)", "stored"),
    ("dispatched", "dispatched (logged, ms stamps)", "resolved"),
    ("claimed", "worker claimed (attempt row)", "resolved"),
    ("co_start", "worker: pipeline compiled, checkout starts", "claimed"),
    ("co_done", "checkout done", "co_start"),
    ("executor", "executor starts the step (steps row)", "co_done"),
    ("step", "step process runs (`date`)", "executor"),
)

LAUNCHER = r"""
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from ciwatch.commands.serve import setup_logging
from ciwatch.daemon import Daemon
setup_logging("debug", os.environ)
# A spare started at a dispatch waits before starting Python: it does not compete
# with the run just dispatched for the CPU.
late = 'sleep "$CIWATCH_BENCH_SPARE_DELAY"; exec "$0" -m ciwatch worker "$@"'
d = Daemon(Path(sys.argv[2]), worker_argv=["sh", "-c", late, sys.executable])
d.start()
signal.signal(signal.SIGTERM, lambda *_: d.stopping.set())
d.serve_forever()
"""


class LateSpares(DaemonProc):
    """The daemon as `ciwatch serve` runs it, except that a spare worker starts
    `delay` seconds after it is spawned (a diagnostic: no contention for the CPU
    between a dispatched run and the next spare's interpreter start)."""

    def __init__(self, workdir: Path, config: dict, delay: float) -> None:
        super().__init__(workdir, config, env={"CIWATCH_BENCH_SPARE_DELAY": str(delay)})

    def start(self, wait: bool = True, env: dict | None = None) -> DaemonProc:
        full = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        full.pop("NOTIFY_SOCKET", None)
        self._logf = open(self.log, "ab")
        argv = [sys.executable, "-c", LAUNCHER, str(ROOT), str(self.config_path)]
        self.proc = subprocess.Popen(
            argv, env=full, stdout=self._logf, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        wait_for(lambda: (self.state / "daemon.url").exists(), 30, what="the daemon")
        return self


def run_source(
    source: str, base: Path, pushes: int, gd: GitDaemon | None, late_spare: float = 0.0
) -> dict:
    marks = base / "marks"
    marks.mkdir(parents=True)
    pipeline = f"steps:\n  - name: mark\n    run: date +%s.%N > {marks}/$CIWATCH_SHA\n"
    if source == "poller":
        assert gd is not None
        bare = gd.base / f"{base.name}.git"
        repo = {"name": "app", "url": gd.url(bare.name), "poll_interval": "1s"}
    else:
        bare = base / "app.git"
        repo = {"name": "app", "path": str(bare), "watch": source == "watcher"}
    hook = source.startswith("hook")
    work = make_repos(base, pipeline, bare)
    plain = base / "plain.git"  # no hook, nobody watching: what the push alone costs
    git(base, "clone", "-q", "--bare", str(bare), str(plain))
    config = {"workspace": {"keep_all": True}, "repos": [repo]}
    d = LateSpares(base, config, late_spare) if late_spare else DaemonProc(base, config)
    if hook:
        out = d.cli("install-hook", str(bare), "--name", "app")
        assert out.returncode == 0, out.stderr
    d.start()
    rows = Rows(d.state / "ciwatch.db")
    scratch = base / "scratch"
    scratch.mkdir()
    samples, baseline, spawn, pushes_alone = [], [], [], []
    try:
        if source == "poller":  # the first poll records the refs; pushes after it count
            has_refs = "SELECT 1 FROM refs_seen LIMIT 1"
            wait_for(lambda: rows.conn.execute(has_refs).fetchone(), 20, 0.05, "first poll")
        for i in range(pushes + 1):
            sha = new_commit(work, i)
            wait_spares(d.proc.pid)
            t0, t1 = timed_push(work, str(bare))
            step = read_marker(marks / sha, 30)
            rows.wait_finished(sha)
            if i == 0:
                continue  # a cold mirror: not counted
            samples.append({"sha": sha, "t0": t0, "push": t1, "step": step})
            mirror = d.state / "mirrors" / f"{rows.timeline(sha)['repo_id']}.git"
            wait_spares(d.proc.pid)  # the baseline does not compete with a spare's start
            total, sh = baseline_trial(mirror, sha, scratch)
            baseline.append(total)
            spawn.append(sh)
            p0, p1 = timed_push(work, str(plain))
            pushes_alone.append(p1 - p0)
        dispatched = dispatched_times(d.log)
        for s in samples:
            tl = rows.timeline(s["sha"])
            s.update({k: tl[k] for k in ("stored", "resolved", "claimed", "executor")})
            s["dispatched"] = dispatched.get(s["sha"][:12])
            co = checkout_times(d.state, tl["repo_id"], tl["number"])
            s["co_start"], s["co_done"] = co if co else (None, None)
        extra = {}
        if hook and samples and not late_spare:
            last = rows.timeline(samples[-1]["sha"])
            before = samples[-2]["sha"] if len(samples) > 1 else sha
            d.stop()
            url = str(bare.resolve())
            extra = replay(d.state, last["repo_id"], url, samples[-1]["sha"], before, scratch)
    finally:
        rows.close()
        d.stop()
    return {
        "samples": samples,
        "baseline": baseline,
        "spawn": spawn,
        "replay": extra,
        "push_alone": pushes_alone,
    }


def report(source: str, res: dict, interval: float = 0.0) -> None:
    lat = [s["step"] - s["t0"] for s in res["samples"]]
    bl = res["baseline"]
    bmed, bp95 = statistics.median(bl), pct(bl, 0.95)
    med, p95 = statistics.median(lat), pct(lat, 0.95)
    print(
        f"\n{source}: {len(lat)} pushes: push -> step median {ms(med)} ms, p95 {ms(p95)} ms, "
        f"max {ms(max(lat))} ms; baseline median {ms(bmed)} ms, p95 {ms(bp95)} ms "
        f"-> median baseline +{ms(med - bmed)} ms, p95 baseline +{ms(p95 - bp95)} ms"
    )
    if source.startswith("hook"):
        ok = med - bmed <= 0.020 and p95 - bp95 <= 0.040
        print(f"  target: median <= baseline + 20 ms, p95 <= baseline + 40 ms: {_met(ok)}")
    elif source == "watcher":
        print(f"  target: median <= baseline + 60 ms: {_met(med - bmed <= 0.060)}")
    else:
        ok_med = med <= interval + bmed + 0.060
        ok_p95 = p95 <= interval + bp95 + 0.060
        print(
            f"  target: <= {interval:g} s + baseline + 60 ms: median {_met(ok_med)}, "
            f"p95 {_met(ok_p95)}"
        )
        seen = [s["step"] - s["stored"] for s in res["samples"]]
        print(
            f"  from the event stored (the poll that saw the push) to the step: median "
            f"{ms(statistics.median(seen))} ms, p95 {ms(pct(seen, 0.95))} ms"
        )
    pa = statistics.median(res["push_alone"])
    print(
        f"  baseline's parts: clone + checkout {ms(bmed - statistics.median(res['spawn']))} ms, "
        f"`sh -c date` {ms(statistics.median(res['spawn']))} ms (medians); `git push` alone "
        f"(a bare repository without hook): {ms(pa)} ms; latency - push alone - baseline: "
        f"{ms(med - pa - bmed)} ms"
    )
    print("  phase: median at (from the push start) | median and p95 of (phase - the one named)")
    for key, label, since in PHASES:
        pairs = [
            (s[key] - s["t0"], s[key] - s[since] if since != "t0" else s[key] - s["t0"])
            for s in res["samples"]
            if s.get(key) is not None and (since == "t0" or s.get(since) is not None)
        ]
        if not pairs:
            print(f"    {label:44s} n/a")
            continue
        at = statistics.median(a for a, _ in pairs)
        delta = [d for _, d in pairs]
        print(
            f"    {label:44s} {ms(at):>6s} ms | {ms(statistics.median(delta)):>6s} ms, "
            f"p95 {ms(pct(delta, 0.95)):>6s} ms  - {since}"
        )
    if res.get("replay"):
        print("  the same work alone in a fresh interpreter (first call | median of 10 more):")
        for name, (first, warm) in res["replay"].items():
            print(f"    {name:58s} {ms(first):>6s} | {ms(warm):>6s} ms")


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pushes", type=int, default=50)
    ap.add_argument("--poll-pushes", type=int, default=30)
    ap.add_argument("--sources", default="hook,watcher,poller,hook-late-spare")
    ap.add_argument("--late-pushes", type=int, default=20)
    ap.add_argument("--spare-delay", type=float, default=0.5)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="the hook only, 20 pushes (~30 s)")
    args = ap.parse_args()
    if args.quick:
        args.sources, args.pushes = "hook", 20
    sources = args.sources.split(",")
    print(f"load average at start: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        results = {}
        with GitDaemon(base / "served") as gd:
            for source in sources:
                n = {"poller": args.poll_pushes, "hook-late-spare": args.late_pushes}.get(
                    source, args.pushes
                )
                late = args.spare_delay if source == "hook-late-spare" else 0.0
                started = time.monotonic()
                results[source] = run_source(source, base / source, n, gd, late)
                print(f"[{source}: {time.monotonic() - started:.0f} s]", file=sys.stderr)
        print(f"load average at end: {os.getloadavg()[0]:.2f}", file=sys.stderr)
        for source in sources:
            report(source, results[source], interval=1.0)


if __name__ == "__main__":
    main()
