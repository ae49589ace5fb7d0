"""A synthetic repository for benchmarks: N files, about S bytes, C commits (git fast-import)."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path


def make_synthetic_repo(
    path: Path,
    *,
    files: int = 2000,
    size: int = 20 << 20,
    commits: int = 500,
    pipeline: str = "steps:\n  - run: 'true'\n",
    seed: int = 1,
) -> str:
    """Create a work-tree repository at `path`; returns the head sha."""
    rnd = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, env=env)
    per_file = size // files
    stream = bytearray()
    mark = 0

    def blob(data: bytes) -> int:
        nonlocal mark
        mark += 1
        stream.extend(b"blob\nmark :%d\ndata %d\n" % (mark, len(data)) + data + b"\n")
        return mark

    names = [f"src/pkg{i % 40:02d}/mod{i:04d}.txt" for i in range(files)]
    marks = {n: blob(rnd.randbytes(per_file)) for n in names}
    marks[".ciwatch.yml"] = blob(pipeline.encode())
    when = 1_700_000_000
    for c in range(commits):
        changed = (
            marks if c == 0 else {n: blob(rnd.randbytes(per_file)) for n in rnd.sample(names, 2)}
        )
        msg = f"commit {c}".encode()
        stream.extend(b"commit refs/heads/main\n")
        stream.extend(b"committer Bench <bench@example.invalid> %d +0000\n" % (when + c))
        stream.extend(b"data %d\n%s\n" % (len(msg), msg))
        # Later commits on the same branch follow the previous one by themselves.
        for name, m in changed.items():
            stream.extend(b"M 100644 :%d %s\n" % (m, name.encode()))
    subprocess.run(
        ["git", "fast-import", "--quiet"], input=bytes(stream), cwd=path, check=True, env=env
    )
    subprocess.run(["git", "checkout", "-q", "-f", "main"], cwd=path, check=True, env=env)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, check=True, env=env, capture_output=True, text=True
    ).stdout.strip()
