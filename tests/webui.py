"""The pages' browser tests: a headless Chromium driven by Playwright, and a
real daemon on a known port (so a restart keeps its URL and the forge's
target_url is followable).

    from webui import browser_fixture, page_fixture  # noqa: F401 (the fixtures)

Chromium is Debian's (`.ci/run` installs it); a missing one fails the tests.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import requests
from daemonutil import DaemonProc, wait_for
from gitutil import git

CHROMIUM = os.environ.get("CIWATCH_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
TOKEN = "web-token-for-tests-7d1f"


@pytest.fixture(scope="module", name="browser")
def browser_fixture():
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's `chromium` package "
            "(.ci/run does) or set CIWATCH_CHROMIUM"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _page(browser, *, bypass_csp: bool):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=bypass_csp)
    context.set_default_timeout(15_000)
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))

    def dialog(d):
        problems.append(f"a dialog opened: {d.message!r}")
        d.dismiss()

    pg.on("dialog", dialog)
    yield pg
    context.close()
    assert not problems, problems


@pytest.fixture(name="page")
def page_fixture(browser):
    """A fresh context (no cookies) per test; any script error or dialog fails it.
    The pages' CSP is bypassed on purpose: a markup injection must show up as a
    script that ran, not be hidden by the policy (`strict_page` keeps the policy),
    and Playwright's own polling predicates need eval."""
    yield from _page(browser, bypass_csp=True)


@pytest.fixture(name="strict_page")
def strict_page_fixture(browser):
    """A page that obeys the pages' Content-Security-Policy."""
    yield from _page(browser, bypass_csp=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDaemon(DaemonProc):
    """A daemon on a fixed free port, its public URL that port, a web token set."""

    def __init__(self, workdir: Path, config: dict, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (workdir / "web-token").write_text(TOKEN + "\n")
        config = {
            "listen": f"127.0.0.1:{self.port}",
            "public_url": self.url,
            "concurrency": 4,
            "web": {"token_file": str(workdir / "web-token")},
            **config,
        }
        super().__init__(workdir, config, env)

    def start(self, wait: bool = True, env: dict | None = None) -> WebDaemon:
        (self.state / "daemon.url").unlink(missing_ok=True)  # a killed daemon leaves it
        super().start(wait, env)
        wait_for(self._answers, 15, what="the web server")
        return self

    def _answers(self) -> bool:
        try:
            return requests.get(self.url + "/healthz/live", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def api(self, method: str, path: str, **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {TOKEN}", **kw.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kw)

    def run_where(self, **match) -> dict | None:
        """The newest run whose JSON fields equal `match` (e.g. branch=, sha=)."""
        for run in requests.get(self.url + "/api/runs", timeout=10).json()["runs"]:
            if all(run.get(k) == v for k, v in match.items()):
                return run
        return None

    def wait_run(self, timeout: float = 30, state: str | None = None, **match) -> dict:
        def found():
            run = self.run_where(**match)
            return run if run and (state is None or run["state"] == state) else None

        return wait_for(found, timeout, 0.1, what=f"a run {match} {state or ''}")


def push_branch(work: Path, bare: Path, branch: str, files: dict, message: str) -> str:
    """Commit `files` on top of main and push the commit as `branch`."""
    git(work, "checkout", "-q", "-B", branch, "main")
    for name, text in files.items():
        p = work / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    git(work, "add", "-A")
    git(work, "commit", "-q", "--allow-empty", "-m", message)
    git(work, "push", "-q", "-f", str(bare), f"HEAD:refs/heads/{branch}")
    sha = git(work, "rev-parse", "HEAD")
    git(work, "checkout", "-q", "main")
    return sha


def gate(tmp: Path, name: str) -> tuple[Path, str]:
    """A flag file and the shell line that waits (at most 60 s) for it: a step
    holds there until the test opens the gate."""
    flag = tmp / f"gate-{name}-{time.monotonic_ns()}"
    return flag, f'i=0; while [ ! -e "{flag}" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done'
