"""`ciwatch demo`: a bare repository, the hook, the daemon, a push, a green run.

Everything lives under one directory (default ./.ciwatch/demo) and is reused
on the next start: the demo repository keeps its history, the daemon its runs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import time
from importlib import resources
from pathlib import Path
from typing import TextIO

import yaml

from ciwatch.daemon import Daemon
from ciwatch.git import Git, init_repo_with_files
from ciwatch.hookinstall import default_spool, default_url_file, install_hook
from ciwatch.logview import show_logs
from ciwatch.model import Run

_IDENT = ["-c", "user.name=ciwatch demo", "-c", "user.email=demo@localhost"]


def make_example_repo(target: Path) -> Path:
    """A work tree at `target` holding the shipped example pipeline (made once)."""
    if (target / ".git").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    src = resources.files("ciwatch") / "examples" / "demo"
    with resources.as_file(src) as folder:
        shutil.copytree(folder, target, dirs_exist_ok=True)
    init_repo_with_files(target, message="Example pipeline for ciwatch")
    return target


def web_token(base: Path) -> Path:
    """The demo's token for the web actions (cancel, retry, trigger), made once."""
    path = base / "web-token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(18) + "\n")
    return path


def prepare(base: Path, git: Git) -> tuple[Path, Path, Path]:
    """(config file, bare repository, work tree), creating what is missing."""
    bare, work, state = base / "app.git", base / "app", base / "state"
    work = make_example_repo(work)
    token = web_token(base)
    if not bare.exists():
        git.run(["init", "--quiet", "--bare", "--initial-branch=main", bare])
        git.run(["push", "--quiet", "--end-of-options", bare, "HEAD:refs/heads/main"], cwd=work)
    config = base / "ciwatch.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state_dir": "state",
                "listen": "127.0.0.1:8750",
                "concurrency": 2,
                "web": {"token_file": token.name},
                "repos": [{"name": "app", "path": "app.git"}],
            }
        )
    )
    install_hook(bare, "app", default_spool(state), default_url_file(state))
    return config, bare, work


def push_change(git: Git, work: Path, bare: Path) -> str:
    readme = work / "README.md"
    with open(readme, "a") as f:
        f.write(f"\nPushed by `ciwatch demo` at {time.strftime('%H:%M:%S')}.\n")
    git.run(["add", "README.md"], cwd=work)
    git.run([*_IDENT, "commit", "--quiet", "--no-verify", "-m", "Demo push"], cwd=work)
    git.run(["push", "--quiet", "--end-of-options", bare, "HEAD:refs/heads/main"], cwd=work)
    return git.run(["rev-parse", "HEAD"], cwd=work).decode().strip()


def wait_run(daemon: Daemon, sha: str, timeout: float, out: TextIO) -> Run | None:
    deadline = time.monotonic() + timeout
    said = ""
    while time.monotonic() < deadline and not daemon.stopping.is_set():
        runs = [r for r in daemon.store.list_runs(repo="app", limit=20) if r.sha == sha]
        if runs:
            run = runs[0]
            if run.state.value != said:
                said = run.state.value
                out.write(f"ciwatch: {run.label} {said}\n")
                out.flush()
            if run.state.finished:
                return run
        time.sleep(0.05)
    return None


def run_demo(base: Path, *, once: bool, out: TextIO) -> int:
    base = base.resolve()
    base.mkdir(parents=True, exist_ok=True)
    git = Git(base / ".git-home")
    (base / ".git-home").mkdir(exist_ok=True)
    config, bare, work = prepare(base, git)
    daemon = Daemon(config)
    daemon.start()
    signal.signal(signal.SIGINT, lambda *_: daemon.stopping.set())
    signal.signal(signal.SIGTERM, lambda *_: daemon.stopping.set())
    out.write(f"ciwatch: daemon up, watching {bare} (state in {daemon.state_dir})\n")
    url = daemon.web.url
    out.write(f"ciwatch: dashboard at {url}/ (open it to watch the runs live)\n")
    out.flush()
    sha = push_change(git, work, bare)
    out.write(f"ciwatch: pushed {sha[:12]} to main; the hook queued it\n")
    run = wait_run(daemon, sha, 120, out)
    if run is not None:
        show_logs(daemon.store, run, step=None, follow=False, out=out)
        out.write(f"ciwatch: {run.label} on the web: {url}/runs/{run.id}\n")
    ok = run is not None and run.state.value == "success"
    cfg = f"-c {config}"
    out.write(
        f"\nciwatch keeps watching. Open {url}/ and push again to see a run live:\n"
        f"  cd {work} && git commit --allow-empty -m again && git push {bare} HEAD:main\n"
        "A slow one (30 s), to follow its log or cancel it from its page (sign in with\n"
        f"the token in {base / 'web-token'}):\n"
        f"  cd {work} && echo 30 > .slow && git add .slow && git commit -m slow"
        f" && git push {bare} HEAD:main\n"
        f"  ciwatch runs {cfg}\n  ciwatch status {cfg}\n  ciwatch why {cfg} app main\n"
        "To build your own repository, add it to the config (see config.example.yaml) and run\n"
        f"  ciwatch install-hook /path/to/repo.git --name NAME {cfg}\n"
        "Ctrl-C stops the demo.\n"
    )
    out.flush()
    if once:
        daemon.stopping.set()
    daemon.serve_forever()
    return 0 if ok else 1
