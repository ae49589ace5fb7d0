"""Workspace cleanup speed: remove_tree on a tree of a million files, against
`rm -rf` on the same tree in the same run. Also one directory holding 100,000
entries and a 10,000-level deep tree. Prints files/s for each.

    python3 bench/cleanup.py [--files 1000000] [--per-dir 1000] [--dir /dev/shm]

The tree is made on tmpfs by default (creating a million files on a disk takes
minutes and says nothing about the removal); pass --dir to measure a disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ciwatch.fstree import remove_tree  # noqa: E402


def make_tree(root: Path, files: int, per_dir: int) -> int:
    """`files` empty files, `per_dir` to a directory, directories two levels
    deep (like a build tree). Returns how many entries were made."""
    made = 0
    root.mkdir()
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        d = 0
        while made < files:
            group, name = f"g{d // 100}", f"d{d % 100}"
            if d % 100 == 0:
                os.mkdir(group, dir_fd=top)
            os.mkdir(f"{group}/{name}", dir_fd=top)
            fd = os.open(f"{group}/{name}", os.O_RDONLY | os.O_DIRECTORY, dir_fd=top)
            for i in range(min(per_dir, files - made)):
                os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
            os.close(fd)
            made += min(per_dir, files - made)
            d += 1
    finally:
        os.close(top)
    return made


def make_deep(root: Path, depth: int) -> int:
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)
    return depth


def timed(label: str, count: int, remove) -> float:
    started = time.perf_counter()
    remove()
    took = time.perf_counter() - started
    print(f"  {label:<12} {took:7.2f} s  {count / took:12,.0f} files/s")
    return took


def compare(title: str, base: Path, make) -> None:
    print(title)
    count = make(base / "a")
    mine = timed("remove_tree", count, lambda: _check(remove_tree(base / "a")))
    make(base / "b")
    rm = timed("rm -rf", count, lambda: subprocess.run(["rm", "-rf", str(base / "b")], check=True))
    print(f"  remove_tree takes {mine / rm:.2f}x the time of rm -rf")
    assert not (base / "a").exists() and not (base / "b").exists()


def _check(problems: list[str]) -> None:
    if problems:
        raise SystemExit(f"remove_tree left: {problems[:5]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--per-dir", type=int, default=1000)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    ap.add_argument("--dir", default=shm, help="where to make the trees (default: /dev/shm)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ciwatch-cleanup-", dir=args.dir))
    try:
        compare(
            f"{args.files:,} files, {args.per_dir} per directory ({base}):",
            base,
            lambda p: make_tree(p, args.files, args.per_dir),
        )
        compare("100,000 files in one directory:", base, lambda p: make_tree(p, 100_000, 100_000))
        compare("a 10,000-level deep tree:", base, lambda p: make_deep(p, 10_000))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
