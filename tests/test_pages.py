"""The HTML pages over real HTTP from a real store, without a browser: what the
first paint holds, filters and paging, bad input, headers, static files."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests

from ciwatch.logs import StepLog
from ciwatch.masking import Masker
from ciwatch.model import Event, EventKind, RunState, StepResult, StepState
from ciwatch.store import Store
from ciwatch.web.logindex import LogIndexes
from ciwatch.web.pages import TAIL_LINES, pages_router
from ciwatch.web.readmodel import ReadModel
from ciwatch.web.server import WebServer, create_app


class Parsed(HTMLParser):
    """Elements by id and class, with their text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.stack: list[dict] = []
        self.all: list[dict] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        node = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.all.append(node)
        if tag not in ("br", "img", "input", "link", "meta"):
            self.stack.append(node)

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for node in self.stack:
            node["text"] += data

    def find(self, cls: str | None = None, tag: str | None = None, **attrs) -> list[dict]:
        out = []
        for n in self.all:
            if tag and n["tag"] != tag:
                continue
            if cls and cls not in (n["attrs"].get("class") or "").split():
                continue
            if all(n["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items()):
                out.append(n)
        return out


@pytest.fixture
def site(tmp_path):
    clock = [1_700_000_000.0]
    store = Store.open(tmp_path / "ciwatch.db", clock=lambda: clock[0])
    store.ensure_repo("app", str(tmp_path), "main")
    store.ensure_repo("lib", str(tmp_path), "main")
    read = ReadModel(store, clock=lambda: 1_700_000_100.0, why=lambda run: ["  waiting: paused"])
    app = create_app(
        pages_router(
            read,
            step=store.get_step,
            session=lambda request: (False, False),
            indexes=LogIndexes(),
        )
    )
    server = WebServer(app, "127.0.0.1", 0)
    server.start()
    try:
        yield store, server.url, tmp_path, clock
    finally:
        server.stop()
        store.close()


def push(store: Store, repo: str, branch: str, n: int, source: str = "hook"):
    run, _ = store.submit(
        Event(
            repo=repo,
            kind=EventKind.PUSH,
            ref=f"refs/heads/{branch}",
            sha=f"{n:040x}",
            source=source,
        )
    )
    return run


def get(url: str, **kw) -> tuple[requests.Response, Parsed]:
    r = requests.get(url, timeout=10, **kw)
    return r, Parsed(r.text)


def test_the_dashboard_lists_filters_and_pages_runs(site):
    store, url, _, _ = site
    for i in range(1, 131):
        push(
            store,
            "app" if i % 2 else "lib",
            "main" if i % 3 else "dev",
            i,
            "hook" if i % 5 else "cron",
        )
    r, page = get(url + "/")
    assert r.status_code == 200
    rows = page.find("run", tag="tr")
    assert len(rows) == 50 and rows[0]["attrs"]["data-run"] == "130"
    older = page.find(tag="a", rel="next")[0]["attrs"]["href"]
    assert older == "?before=81"
    _, page2 = get(url + "/" + older)
    assert [int(r["attrs"]["data-run"]) for r in page2.find("run", tag="tr")] == list(
        range(80, 30, -1)
    )
    assert any(a["text"] == "newest" for a in page2.find(tag="a"))

    _, filtered = get(url + "/", params={"repo": "lib", "branch": "dev", "trigger": "cron"})
    ids = [int(r["attrs"]["data-run"]) for r in filtered.find("run", tag="tr")]
    assert ids == [i for i in range(130, 0, -1) if i % 2 == 0 and i % 3 == 0 and i % 5 == 0]
    refs = {r["text"] for r in filtered.find("ref", tag="td")}
    assert refs == {"dev"}
    # The form shows the filters it applied; the table knows them for its live updates.
    assert (
        filtered.find(tag="input", name="branch", placeholder="any")[0]["attrs"]["value"] == "dev"
    )
    assert (
        filtered.find(tag="table")[0]["attrs"]["data-query"] == "repo=lib&branch=dev&trigger=cron"
    )


def test_bad_filters_are_named_and_the_page_still_answers(site):
    store, url, _, _ = site
    push(store, "app", "main", 1)
    r, page = get(url + "/", params={"state": "green", "trigger": "<x>", "before": "-1"})
    assert r.status_code == 400
    problems = [
        p["text"]
        for p in page.find(tag="p")
        if p["text"].startswith(("state", "trigger", "before"))
    ]
    assert problems == [
        "state 'green' is not one of: queued, running, success, failure, error, canceled, skipped",
        "trigger '<x>' is not one of: hook, watch, reconcile, poll, webhook, cron, manual, cli",
        "before '-1' is not a run id",
    ]
    assert len(page.find("run", tag="tr")) == 1  # the filters that were fine still apply
    assert "<x>" not in r.text  # shown escaped
    r, page = get(url + "/repos/nope")
    assert r.status_code == 404 and page.find("problem")[0]["text"] == "no repository 'nope'"
    for bad in ("/runs/999", "/runs/abc", "/runs/99999999999999999999999"):
        r, page = get(url + bad)
        assert r.status_code == 404, bad
        assert page.find("problem")[0]["text"].startswith("no run")


def test_the_run_page_paints_the_failed_step_with_its_last_lines(site):
    store, url, tmp, clock = site
    run = push(store, "app", "main", 1)
    attempt = store.start_attempt(run.id, "w", 60)

    def step(idx: int, name: str, lines: int, state: StepState) -> int:
        path = tmp / f"{idx}.log"
        sid = store.start_step(run.id, 1, "", idx, name, str(path))
        log = StepLog(path, Masker([]), 0, lambda: clock[0])
        for i in range(1, lines + 1):
            clock[0] += 0.5
            log.write(b"\x1b[31merror\x1b[0m %d\n" % i if i == lines else b"line %d\n" % i)
        log.close()
        store.finish_step(
            sid,
            StepResult(
                state=state, exit_code=0 if state is StepState.SUCCESS else 2, reason="exit code 2"
            ),
        )
        return sid

    ok = step(0, "build", 3, StepState.SUCCESS)
    bad = step(1, "test", 1000, StepState.FAILURE)
    store.finish_run(run.id, RunState.FAILURE, "step 'test' failed", attempt_id=attempt.id)

    r, page = get(f"{url}/runs/{run.id}")
    assert r.status_code == 200
    assert "open" in page.find(tag="details", id=f"step-{bad}")[0]["attrs"]
    assert "open" not in page.find(tag="details", id=f"step-{ok}")[0]["attrs"]
    lines = page.find("l", tag="div")
    assert [int(n["attrs"]["data-n"]) for n in lines] == list(range(1000 - TAIL_LINES + 1, 1001))
    assert lines[-1]["attrs"]["id"] == f"L{bad}-1000"
    assert page.find("t", tag="span")[-1]["text"] == "8:20"  # 1000 lines half a second apart
    assert page.find("fg1", tag="span")[-1]["text"] == "error"
    fold = page.find("fold", tag="a")[0]
    assert fold["text"] == f"show {1000 - TAIL_LINES} earlier lines"
    assert fold["attrs"]["href"] == f"/api/steps/{bad}/log"  # without a script: the raw log
    assert page.find(tag="dd", id="reason")[0]["text"] == "step 'test' failed"
    assert "hidden" in page.find(id="why")[0]["attrs"]
    assert "exit 2" in page.find(tag="details", id=f"step-{bad}")[0]["text"]


def test_a_queued_run_says_why_it_waits(site):
    store, url, _, _ = site
    run = push(store, "app", "main", 1)
    store.set_wait_reason(run.id, "waiting for a free slot (2 of 2 running)")
    r, page = get(f"{url}/runs/{run.id}")
    why = page.find(id="why")[0]
    assert "hidden" not in why["attrs"]
    assert page.find(id="wait-reason")[0]["text"] == "waiting for a free slot (2 of 2 running)"
    assert page.find(id="why-lines")[0]["text"] == "waiting: paused"
    assert "the run has not started" in page.find(id="no-steps")[0]["text"]


def test_headers_and_static_files(site):
    _, url, _, _ = site
    r = requests.get(url + "/", timeout=10)
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    js = re.search(r'src="(/static/ciwatch\.js\?v=[0-9a-f]+)"', r.text).group(1)
    css = re.search(r'href="(/static/ciwatch\.css\?v=[0-9a-f]+)"', r.text).group(1)
    got = requests.get(url + js, timeout=10)
    assert got.headers["content-type"].startswith("text/javascript")
    assert got.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert requests.get(url + css, timeout=10).headers["content-type"].startswith("text/css")
    again = requests.get(url + js, headers={"If-None-Match": got.headers["etag"]}, timeout=10)
    assert again.status_code == 304
    unversioned = requests.get(url + "/static/ciwatch.js", timeout=10)
    assert unversioned.headers["cache-control"] == "no-cache"
    for missing in ("/static/../pages.py", "/static/nope.js", "/static/%2e%2e%2fpages.py"):
        assert requests.get(url + missing, timeout=10).status_code == 404
    shipped = Path(__file__).resolve().parent.parent / "ciwatch" / "web" / "static" / "ciwatch.js"
    assert got.content == shipped.read_bytes()
