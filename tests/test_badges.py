"""Status badges over real HTTP from a real store: the colour follows the
branch's newest run, the answer is cache-friendly, unknowns are grey, and
nothing in the SVG comes from the request."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import requests

from ciwatch.model import Event, EventKind, RunState
from ciwatch.store import Store
from ciwatch.web.badges import COLOURS, UNKNOWN, badge_svg, badges_router, branch_state
from ciwatch.web.server import WebServer, create_app

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def served(tmp_path):
    store = Store.open(tmp_path / "ciwatch.db")
    store.ensure_repo("app", str(tmp_path), "trunk")
    app = create_app(badges_router(lambda repo, branch: branch_state(store, repo, branch)))
    server = WebServer(app, "127.0.0.1", 0)
    server.start()
    try:
        yield store, server.url
    finally:
        server.stop()
        store.close()


def push(store: Store, branch: str, sha: str):
    run, _ = store.submit(
        Event(repo="app", kind=EventKind.PUSH, ref=f"refs/heads/{branch}", sha=sha, source="hook")
    )
    return run


def shown(resp: requests.Response) -> tuple[str, str]:
    """(message text, message colour) as an SVG reader sees them."""
    root = ET.fromstring(resp.content)
    rects = root.findall(f"{SVG}g/{SVG}rect")
    texts = [t.text for t in root.iter(f"{SVG}text")]
    return texts[-1], rects[1].get("fill")


def test_the_badge_follows_the_newest_run_of_the_default_branch(served):
    store, url = served
    run = push(store, "trunk", "1" * 40)
    r = requests.get(f"{url}/badge/app.svg", timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/svg+xml"
    assert r.headers["cache-control"] == "no-cache"
    assert shown(r) == ("queued", COLOURS[RunState.QUEUED])

    attempt = store.start_attempt(run.id, "w", 60)
    assert shown(requests.get(f"{url}/badge/app.svg", timeout=5)) == (
        "running",
        COLOURS[RunState.RUNNING],
    )
    store.finish_run(run.id, RunState.FAILURE, "exit 1", attempt_id=attempt.id)
    failing = requests.get(f"{url}/badge/app.svg", timeout=5)
    assert shown(failing) == ("failure", COLOURS[RunState.FAILURE])

    # A newer run of the branch decides, whatever other branches do.
    newer = push(store, "trunk", "2" * 40)
    store.finish_run(newer.id, RunState.SUCCESS)
    push(store, "topic", "3" * 40)
    assert shown(requests.get(f"{url}/badge/app.svg", timeout=5)) == (
        "success",
        COLOURS[RunState.SUCCESS],
    )
    topic = requests.get(f"{url}/badge/app.svg", params={"branch": "topic"}, timeout=5)
    assert shown(topic) == ("queued", COLOURS[RunState.QUEUED])
    assert len({COLOURS[s] for s in COLOURS}) == len(COLOURS)  # every state its own colour


def test_revalidation_is_answered_304_until_the_state_changes(served):
    store, url = served
    run = push(store, "trunk", "1" * 40)
    first = requests.get(f"{url}/badge/app.svg", timeout=5)
    etag = first.headers["etag"]
    again = requests.get(f"{url}/badge/app.svg", headers={"If-None-Match": etag}, timeout=5)
    assert (again.status_code, again.content) == (304, b"")
    assert again.headers["etag"] == etag
    listed = requests.get(
        f"{url}/badge/app.svg", headers={"If-None-Match": f'"x", W/{etag}'}, timeout=5
    )
    assert listed.status_code == 304

    store.start_attempt(run.id, "w", 60)
    changed = requests.get(f"{url}/badge/app.svg", headers={"If-None-Match": etag}, timeout=5)
    assert changed.status_code == 200 and changed.headers["etag"] != etag


@pytest.mark.parametrize(
    "path,params",
    [
        ("/badge/nope.svg", {}),
        ("/badge/app.svg", {"branch": "never-built"}),
        ("/badge/%3Cscript%3Ealert(1)%3C%2Fscript%3E.svg", {}),
        ("/badge/a/b/../c.svg", {"branch": "<x>"}),
        ("/badge/app.svg", {"branch": "x" * 5000}),
    ],
)
def test_unknown_repositories_and_branches_get_a_grey_unknown_badge(served, path, params):
    _store, url = served
    r = requests.get(url + path, params=params, timeout=5)
    assert r.status_code == 200
    assert shown(r) == ("unknown", UNKNOWN)
    assert b"script" not in r.content and b"<x>" not in r.content


def test_badge_text_is_escaped_and_bounded():
    svg = badge_svg('<script>alert("x")</script>&', "a\x1b[31m" + "y" * 100, "#000")
    root = ET.fromstring(svg)  # well-formed XML: nothing broke out of its text node
    assert not list(root.iter(f"{SVG}script"))
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts[0] == '<script>alert("x")</script>&'
    assert texts[-1].startswith("a?[31m") and len(texts[-1]) == 40 and texts[-1].endswith("…")
    assert root.get("width") == str(int(root.get("width")))  # a number, sized to the text
