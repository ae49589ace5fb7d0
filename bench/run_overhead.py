"""Per-run overhead of `ciwatch run` against the same git work done by hand.

Repository: about 2,000 files, 20 MB, 500 commits, a one-step `true` pipeline.
Baseline (same script, same disk): `git clone --shared` from the mirror + checkout at
the sha + `sh -c true` + removing the checkout.
Prints medians of: the baseline, the whole `ciwatch run` command (interpreter start
included), and ciwatch's own time measured inside (the run minus git and the step).

    python3 bench/run_overhead.py [--runs 9] [--dir /tmp/x]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from synthrepo import make_synthetic_repo  # noqa: E402


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def baseline_once(mirror: Path, sha: str, dest: Path) -> None:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(
        ["git", "clone", "-q", "--shared", "--no-checkout", str(mirror), str(dest)],
        check=True,
        env=env,
    )
    subprocess.run(["git", "-C", str(dest), "checkout", "-q", "--detach", sha], check=True, env=env)
    subprocess.run(["sh", "-c", "true"], check=True)
    shutil.rmtree(dest)


def inside_once(repo: Path, state: Path) -> tuple[float, float, float]:
    """(total, git, step, workspace removal) seconds of one run executed in this process."""
    from ciwatch.app import App
    from ciwatch.executors.process import ProcessExecutor
    from ciwatch.git import Git
    from ciwatch.localrun import prepare_local_run
    from ciwatch.workspace import Workspace

    spent = {"git": 0.0, "step": 0.0, "rm": 0.0}
    real_call, real_run, real_rm = Git.call, ProcessExecutor.run, Workspace.remove

    def ws_remove(self):
        t = time.perf_counter()
        try:
            return real_rm(self)
        finally:
            spent["rm"] += time.perf_counter() - t

    def git_call(self, *a, **kw):
        t = time.perf_counter()
        try:
            return real_call(self, *a, **kw)
        finally:
            spent["git"] += time.perf_counter() - t

    def step_run(self, *a, **kw):
        t = time.perf_counter()
        try:
            return real_run(self, *a, **kw)
        finally:
            spent["step"] += time.perf_counter() - t

    Git.call, ProcessExecutor.run, Workspace.remove = git_call, step_run, ws_remove
    try:
        t = time.perf_counter()
        app = App.load(None, environ={**os.environ, "STATE_DIRECTORY": str(state)})
        app.state_dir = state
        runner = app.runner()
        run, attempt = prepare_local_run(
            app.store,
            runner.mirrors,
            repo,
            ref=None,
            sha=None,
            event=None,
            worker="bench",
            lease_seconds=runner.settings.lease_seconds,
        )
        final = runner.execute(run.id, worker="bench", attempt=attempt)
        app.close()
        total = time.perf_counter() - t
        assert final.state.value == "success", final
        return total, spent["git"], spent["step"], spent["rm"]
    finally:
        Git.call, ProcessExecutor.run, Workspace.remove = real_call, real_run, real_rm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--dir", type=Path)
    args = ap.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="ciwatch-bench-"))
    repo = work / "repo"
    t = time.perf_counter()
    sha = make_synthetic_repo(repo)
    print(
        "synthetic repository: 2000 files, 20 MB, 500 commits"
        f" ({time.perf_counter() - t:.1f}s to make)"
    )

    state = work / "state"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ciwatch", "run", str(repo)]
    subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True)  # makes the mirror
    mirror = next((work / ".ciwatch" / "mirrors").glob("*.git"))

    inside_once(repo, state)  # warm-up: the mirror of this state dir
    base, whole, inside = [], [], []
    # Interleaved, so that the disk's mood affects all three alike.
    for _ in range(args.runs):
        base.append(timed(lambda: baseline_once(mirror, sha, work / "base")))
        whole.append(
            timed(lambda: subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True))
        )
        inside.append(inside_once(repo, state))
    sh = statistics.median(
        timed(lambda: subprocess.run(["sh", "-c", "true"], check=True)) for _ in range(21)
    )
    # Own time: everything but git and a bare `sh -c true` spawn; the executor's
    # supervision (subreaper, script file, log) counts as ciwatch's.
    own = [tot - g - sh for tot, g, _, _ in inside]
    own_no_rm = [tot - g - sh - rm for tot, g, _, rm in inside]

    med = statistics.median
    print(f"runs per figure: {args.runs}; medians")
    print(f"baseline (clone --shared + checkout + sh -c true + rm): {med(base) * 1000:7.1f} ms")
    print(
        f"ciwatch run, whole command incl. interpreter start:    {med(whole) * 1000:7.1f} ms"
        f"  (baseline + {(med(whole) - med(base)) * 1000:.0f} ms; target <= +300 ms)"
    )
    total, gitt, step, rm = (med([x[i] for x in inside]) * 1000 for i in range(4))
    print(
        f"inside: total {total:.1f} ms, git {gitt:.1f} ms, step (executor call) {step:.1f} ms,"
        f" workspace removal {rm:.1f} ms"
    )
    print(f"bare `sh -c true` spawn: {sh * 1000:.1f} ms")
    print(f"ciwatch's own time per run: {med(own) * 1000:7.1f} ms  (target <= 30 ms)")
    print(
        f"  of which not the workspace removal (the baseline's rm): {med(own_no_rm) * 1000:.1f} ms"
    )
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
