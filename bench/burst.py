"""A burst of pushes through `ciwatch serve`: 20 commits pushed one after another.

A 20-file repository with a one-step `true` pipeline and no concurrency group, so
every push is built (none superseded), at `concurrency: 1`; the hook installed,
`watch: false`. Measured: from the moment the last `git push` returned until all
20 runs are finished (runs.finished_at), and from the first push's start.

Baseline, in the same run: the same 20 builds done by hand one after another,
each `git clone --shared --no-checkout MIRROR` + `git checkout --detach SHA` +
`sh -c true` + removing the checkout.

Where the time goes, per run (medians): waiting in the queue for the previous
run, the gap between two runs (the worker's reply, a scheduler pass, the next
worker reading the run id), the run itself; and how many worker processes
executed the burst (workers take several runs).

    python3 bench/burst.py [--commits 20] [--spares 1,4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import (  # noqa: E402
    GIT_ENV,
    ROOT,
    DaemonProc,
    Rows,
    dispatched_times,
    git,
    make_repos,
    ms,
    new_commit,
    timed_push,
    wait_spares,
)

PIPELINE = "steps:\n  - run: 'true'\n"


def by_hand(mirror: Path, shas: list[str], scratch: Path) -> float:
    """Seconds for the builds done by hand, one after another."""
    t = time.perf_counter()
    for sha in shas:
        dest = scratch / "bl"
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
        subprocess.run(["sh", "-c", "true"], cwd=dest, check=True)
        shutil.rmtree(dest)
    return time.perf_counter() - t


def spare_start(config: Path, times: int = 5) -> tuple[float, float]:
    """(wall, CPU) seconds from starting `ciwatch worker` until it blocks reading its
    standard input, fully loaded: what each run costs when workers run one run each.
    Medians."""
    walls, cpus = [], []
    tick = os.sysconf("SC_CLK_TCK")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(times):
        t = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ciwatch", "worker", "-c", str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout.readline() == b"ready\n"  # loaded, about to wait
        walls.append(time.perf_counter() - t)
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpus.append((int(fields[11]) + int(fields[12])) / tick)
        proc.stdin.close()
        proc.wait()
    return statistics.median(walls), statistics.median(cpus)


def burst(base: Path, commits: int, spares: int) -> dict:
    bare = base / "app.git"
    work = make_repos(base, PIPELINE, bare)
    config = {
        "concurrency": 1,
        "daemon": {"spare_workers": spares},
        "repos": [{"name": "app", "path": str(bare), "watch": False}],
    }
    d = DaemonProc(base, config)
    out = d.cli("install-hook", str(bare), "--name", "app")
    assert out.returncode == 0, out.stderr
    d.start()
    try:
        # one push first, so the mirror is not cold for the burst
        new_commit(work, 999)
        timed_push(work, str(bare))
        d.wait_runs_finished(1)
        wait_spares(d.proc.pid, spares)
        shas = [new_commit(work, i) for i in range(commits)]
        # commits made ahead; the pushes go one after another, each of one commit
        for i, sha in enumerate(shas):
            git(work, "branch", "-f", f"c{i}", sha)
        first = last = 0.0
        for i in range(commits):
            t0, t1 = push_branch(work, str(bare), f"c{i}")
            first = first or t0
            last = t1
        runs = d.wait_runs_finished(commits + 1, timeout=120)
        runs = [r for r in runs if r.sha in set(shas)]
        dispatched = dispatched_times(d.log)
        rows = Rows(d.state / "ciwatch.db")
        try:
            q = "SELECT run_id, started_at FROM attempts WHERE number = 1"
            attempts = dict(rows.conn.execute(q).fetchall())
            q = "SELECT run_id, worker FROM attempts WHERE number = 1"
            workers = dict(rows.conn.execute(q).fetchall())
            resolved = dict(rows.conn.execute("SELECT id, resolved_at FROM runs").fetchall())
        finally:
            rows.close()
    finally:
        d.stop()
    mirror = d.state / "mirrors" / "1.git"
    scratch = base / "scratch"
    scratch.mkdir()
    hand = by_hand(mirror, shas, scratch)
    spare_wall, spare_cpu = spare_start(d.config_path)
    runs.sort(key=lambda r: r.id)
    done = max(r.finished_at for r in runs)
    gaps, to_dispatch, to_claim, waits, lengths = [], [], [], [], []
    for prev, run in zip(runs, runs[1:], strict=False):
        gaps.append(attempts[run.id] - prev.finished_at)  # previous finished -> next claimed
        sent = dispatched.get(run.sha[:12])
        if sent is not None:
            to_dispatch.append(sent - prev.finished_at)
            to_claim.append(attempts[run.id] - sent)
    for run in runs:
        waits.append(attempts[run.id] - resolved[run.id])
        lengths.append(run.finished_at - attempts[run.id])
    return {
        "states": sorted({r.state.value for r in runs}),
        "n": len(runs),
        "after_last": done - last,
        "from_first": done - first,
        "pushing": last - first,
        "hand": hand,
        "gap": statistics.median(gaps),
        "gap_max": max(gaps),
        "wait": statistics.median(waits),
        "to_dispatch": statistics.median(to_dispatch),
        "to_claim": statistics.median(to_claim),
        "spare_wall": spare_wall,
        "spare_cpu": spare_cpu,
        "length": statistics.median(lengths),
        "workers": len({workers[r.id] for r in runs}),
    }


def push_branch(work: Path, remote: str, branch: str) -> tuple[float, float]:
    t0 = time.time()
    subprocess.run(
        ["git", "push", "-q", remote, f"{branch}:refs/heads/main"],
        cwd=work,
        env=GIT_ENV,
        check=True,
        capture_output=True,
    )
    return t0, time.time()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=20)
    ap.add_argument("--spares", default="1,4", help="daemon.spare_workers values to run")
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for spares in [int(x) for x in args.spares.split(",")]:
            r = burst(Path(tmp) / f"spares{spares}", args.commits, spares)
            met = "met" if r["after_last"] <= 1.3 else "MISSED"
            print(
                f"\n{r['n']} pushes, concurrency 1, spare_workers {spares} "
                f"(runs ended {', '.join(r['states'])}):\n"
                f"  last push returned -> all runs finished: {r['after_last']:.2f} s "
                f"(target <= 1.3 s: {met})\n"
                f"  first push started -> all finished: {r['from_first']:.2f} s "
                f"(the pushes themselves took {r['pushing']:.2f} s)\n"
                f"  baseline, the {r['n']} builds by hand one after another: {r['hand']:.2f} s\n"
                f"  per run (medians): previous run finished -> next claimed "
                f"{ms(r['gap'])} ms (max {ms(r['gap_max'])}); resolved -> claimed "
                f"{ms(r['wait'])} ms; claimed -> finished {ms(r['length'])} ms\n"
                f"  the gap between runs: previous finished -> next dispatched (the worker's "
                f"reply, a scheduler pass) {ms(r['to_dispatch'])} ms; dispatched -> claimed "
                f"(reading the run, claiming it) {ms(r['to_claim'])} ms"
                " (dispatch stamps: ms, logged after the new spare is spawned)\n"
                f"  a worker's start-up, alone: {ms(r['spare_wall'])} ms wall, "
                f"{ms(r['spare_cpu'])} ms CPU (median of 5)\n"
                f"  worker processes that executed the {r['n']} runs: {r['workers']}"
            )
    print(f"load average at end: {os.getloadavg()[0]:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
