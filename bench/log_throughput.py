"""Log throughput: a step printing 200 MB in short lines, 3 secrets to mask,
through ProcessExecutor + StepLog. Prints MB/s and ciwatch's peak RSS.

Targets: >= 100 MB/s, peak RSS < 80 MB. Two runs: without a cap (all 200 MB
stored on disk) and with a 4 MiB cap (head + tail kept). No asserts; the
figures are printed.

    python3 bench/log_throughput.py [--mb 200] [--dir DIR]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ciwatch.executors.base import CancelToken, StepSpec  # noqa: E402
from ciwatch.executors.process import ProcessExecutor  # noqa: E402
from ciwatch.logs import StepLog  # noqa: E402
from ciwatch.masking import Masker  # noqa: E402
from ciwatch.pipeline.plan import PlanStep  # noqa: E402

SECRETS = ["s3cr3t-Token_value-42", "hunter2hunter2xyz", "ghp_9a8b7c6d5e4f3g2h1i0jKLMNOP"]
BLOCK = 1 << 20


def make_block() -> tuple[bytes, int]:
    """About 1 MiB of short build-like lines; every 500th line holds a secret."""
    lines, size, i, hits = [], 0, 0, 0
    while size < BLOCK:
        line = b"[%06d] compiling src/module_%d.c ... ok (%d ms)" % (i, i % 97, i % 1000)
        if i % 500 == 0:
            line += b" token=" + SECRETS[hits % 3].encode()
            hits += 1
        lines.append(line + b"\n")
        size += len(lines[-1])
        i += 1
    return b"".join(lines), hits


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_once(root: Path, blocks: int, cap: int, label: str) -> None:
    spec = StepSpec(
        step=PlanStep(
            index=0,
            name="print a lot",
            script=f'i=0; while [ "$i" -lt {blocks} ]; do cat block.txt; i=$((i+1)); done',
        ),
        workdir=root,
        env={"PATH": "/usr/bin:/bin"},
        script_dir=root / "scripts",
    )
    log_path = root / f"{label}.log"
    log = StepLog(log_path, Masker(SECRETS), cap, time.time)
    start = time.perf_counter()
    result = ProcessExecutor().run(spec, log, CancelToken())
    summary = log.close()
    elapsed = time.perf_counter() - start
    peak = rss_mb()  # before the check below, which reads the file back
    mb = summary.bytes_seen / 1e6
    leaked = any(s.encode() in chunk for s in SECRETS for chunk in _chunks(log_path))
    print(
        f"{label:>10}: {result.state.value}, {mb:.0f} MB in {elapsed:.2f}s "
        f"= {mb / elapsed:.0f} MB/s; "
        f"stored {summary.bytes_stored / 1e6:.1f} MB, truncated={summary.truncated}, "
        f"secret in file: {leaked}; peak RSS so far {peak:.1f} MB"
    )
    log_path.unlink()


def _chunks(path: Path):
    overlap = max(len(s) for s in SECRETS)
    prev = b""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            yield prev + chunk
            prev = chunk[-overlap:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="output size in MiB")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a tmp dir)"
    )
    args = parser.parse_args()
    baseline = rss_mb()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        block, hits = make_block()
        (root / "block.txt").write_bytes(block)
        print(
            f"step prints {args.mb} x {len(block)} bytes, lines of ~50 bytes, "
            f"{hits * args.mb} secrets to mask; baseline RSS {baseline:.1f} MB"
        )
        run_once(root, args.mb, 0, "no cap")
        run_once(root, args.mb, 4 << 20, "4 MiB cap")


if __name__ == "__main__":
    main()
