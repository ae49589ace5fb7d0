"""Per-run overhead of an empty pipeline under each executor: process, sandbox, container.

Repository: the 2,000-file synthetic one (bench/synthrepo.py) with a one-step `true`
pipeline, run in this process through the same composition root as `ciwatch run`
(App -> Runner), with the `cached` workspace strategy so that the checkout does not
drown the executor's share. The three executors take turns, run after run, so that
the machine's mood affects them alike. Prints medians of the whole run and of the
step (the executor call), each against the process executor, and of a bare
`podman run --rm IMAGE true` for scale.

The container executor runs the step in a busybox image built locally (see
tests/containerimage.py) with podman; `--engine-arg` replaces the extra `run`
arguments (default: the ones the tests use: runc and explicit ulimits).

    python3 bench/executor_overhead.py [--runs 15] [--dir /tmp/x]
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
sys.path.insert(0, str(ROOT / "tests"))

from containerimage import ENGINE_ARGS, busybox_image  # noqa: E402
from synthrepo import make_synthetic_repo  # noqa: E402

from ciwatch.app import App  # noqa: E402
from ciwatch.config import Config  # noqa: E402
from ciwatch.localrun import prepare_local_run  # noqa: E402

KINDS = ("process", "sandbox", "container")


class Timed:
    """An executor that records how long each step took."""

    def __init__(self, inner, spent: list[float]) -> None:
        self.inner = inner
        self.spent = spent

    def run(self, spec, sink, cancel):
        t = time.perf_counter()
        try:
            return self.inner.run(spec, sink, cancel)
        finally:
            self.spent.append(time.perf_counter() - t)


def config_for(kind: str, state: Path, image: str, engine_args: list[str]) -> Config:
    executor: dict = {"kind": kind}
    if kind == "container":
        executor.update(engine="podman", image=image, engine_args=engine_args, pull="never")
    return Config.model_validate(
        {"state_dir": str(state), "executor": executor, "workspace": {"strategy": "cached"}}
    )


def run_once(kind: str, repo: Path, work: Path, image: str, engine_args, steps) -> float:
    """Seconds for one whole run: executor set-up, checkout, the step, records."""
    state = work / f"state-{kind}"
    t = time.perf_counter()
    app = App(config_for(kind, state, image, engine_args), work, state, dict(os.environ))
    runner = app.runner()
    runner.executor = Timed(runner.executor, steps)
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
    took = time.perf_counter() - t
    assert final.state.value == "success", (kind, final)
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--engine-arg", action="append", dest="engine_args")
    args = ap.parse_args()
    engine_args = args.engine_args if args.engine_args is not None else list(ENGINE_ARGS)
    work = args.dir or Path(tempfile.mkdtemp(prefix="ciwatch-bench-"))
    repo = work / "repo"
    make_synthetic_repo(repo)
    image = busybox_image()
    totals: dict[str, list[float]] = {k: [] for k in KINDS}
    steps: dict[str, list[float]] = {k: [] for k in KINDS}
    for kind in KINDS:  # warm-up: each state dir's mirror and cached tree
        run_once(kind, repo, work, image, engine_args, [])
    for _ in range(args.runs):
        for kind in KINDS:
            totals[kind].append(run_once(kind, repo, work, image, engine_args, steps[kind]))
    bare = []  # the engine alone, for scale
    for _ in range(args.runs):
        t = time.perf_counter()
        subprocess.run(
            ["podman", "run", "--rm", *engine_args, image, "true"], check=True, capture_output=True
        )
        bare.append(time.perf_counter() - t)
    med = statistics.median
    base_total, base_step = med(totals["process"]), med(steps["process"])
    print(f"2,000-file repository, one `true` step, cached workspace; medians of {args.runs}")
    print(f"{'executor':<10} {'whole run':>10} {'step':>9} {'run vs process':>15} {'step +':>9}")
    for kind in KINDS:
        total, step = med(totals[kind]), med(steps[kind])
        print(
            f"{kind:<10} {total * 1000:8.1f}ms {step * 1000:7.1f}ms"
            f" {total / base_total:14.2f}x {(step - base_step) * 1000:7.1f}ms"
        )
    print(f"bare `podman run --rm IMAGE true`: {med(bare) * 1000:.1f}ms")
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
