"""Workspace strategies on the synthetic 2,000-file repository, each step moving
to the next commit (two files change per commit):

- fresh:    Mirror.checkout per attempt (a new clone), then remove
- cached:   CachedCheckouts.acquire (rebuild .git, checkout, clean, verify), then remove
- in-place: `git checkout -f --detach <next>` + `git clean -ffdx` in one checkout
            (the floor: no isolation at all)

Prints medians and the cached / in-place ratio (target: at most 1.5).

    python3 bench/workspace_strategies.py [--rounds 15] [--files 2000] [--dir /tmp/x]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthrepo import make_synthetic_repo  # noqa: E402

from ciwatch.workspace import Mirrors  # noqa: E402
from ciwatch.wscache import CachedCheckouts  # noqa: E402

ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "HOME": "/nonexistent",
}


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, env=ENV, check=True, capture_output=True)
    return out.stdout.decode().strip()


def ms(samples: list[float]) -> str:
    return f"median {statistics.median(samples):7.1f} ms   max {max(samples):7.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="ciwatch-wsbench-"))
    rounds = args.rounds
    origin = base / "origin"
    make_synthetic_repo(origin, files=args.files, commits=3 * rounds + 2)
    shas = git(origin, "rev-list", "--reverse", "main").split()
    mirror = Mirrors(base / "state").mirror(1, str(origin))
    mirror.fetch()

    fresh: list[float] = []
    for i in range(rounds):
        t = time.perf_counter()
        ws = mirror.checkout(shas[i], base / "fresh" / str(i))
        fresh.append((time.perf_counter() - t) * 1000)
        ws.remove()

    # Cached and in-place rounds alternate, so both see the same load on the disk.
    cache = CachedCheckouts(base / "state")
    cache.acquire(mirror, shas[0], base / "warm").remove()  # the one fresh clone
    tree = mirror.checkout(shas[0], base / "inplace").path
    cached: list[float] = []
    inplace: list[float] = []
    for i in range(1, rounds + 1):
        t = time.perf_counter()
        lease = cache.acquire(mirror, shas[i], base / "cached" / str(i))
        cached.append((time.perf_counter() - t) * 1000)
        (lease.path / "build.log").write_text("a step's output\n")  # something to clean
        lease.remove()

        t = time.perf_counter()
        git(tree, "-c", "core.hooksPath=/dev/null", "checkout", "-q", "-f", "--detach", shas[i])
        git(tree, "clean", "-ffdxq")
        inplace.append((time.perf_counter() - t) * 1000)
        (tree / "build.log").write_text("a step's output\n")

    print(f"{args.files} files, {rounds} rounds, in {base}")
    print(f"fresh     {ms(fresh)}")
    print(f"cached    {ms(cached)}")
    print(f"in-place  {ms(inplace)}")
    ratio = statistics.median(cached) / statistics.median(inplace)
    verdict = "ok" if ratio <= 1.5 else "over target"
    print(f"cached / in-place = {ratio:.2f} (target <= 1.5: {verdict})")
    speedup = statistics.median(fresh) / statistics.median(cached)
    print(f"fresh / cached    = {speedup:.1f}x")


if __name__ == "__main__":
    main()
