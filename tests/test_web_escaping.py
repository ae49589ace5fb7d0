"""Hostile text in a real browser: branch names, commit subjects, step names and
log lines carrying markup, `javascript:` links and terminal escape sequences
are shown as the text they are, both when the server renders the page and
when the page's script adds them live. Asserted in the DOM, with a flag that
any script they smuggled in would set."""

from __future__ import annotations

import pytest
from daemonutil import wait_for
from gitutil import git
from test_daemon_e2e import setup_repo
from webui import (  # noqa: F401 (fixtures)
    WebDaemon,
    browser_fixture,
    gate,
    page_fixture,
    strict_page_fixture,
)

BRANCHES = [
    "<script>window.__pwned=1</script>",
    'x"><svg/onload=window.__pwned=2>',
]
SUBJECT = (
    '"><img src=x onerror=window.__pwned=3> <script>window.__pwned=4</script> &amp; javascript:x'
)
STEPS = ["<img src=x onerror=window.__pwned=6>", "javascript:window.__pwned=7"]
ESC = "\x1b"
LOG = [
    ("<script>window.__pwned=8</script>", "<script>window.__pwned=8</script>"),
    ('"><img src=x onerror=window.__pwned=9>', '"><img src=x onerror=window.__pwned=9>'),
    ("javascript:window.__pwned=10", "javascript:window.__pwned=10"),
    (
        f"{ESC}[31mred{ESC}[0m and {ESC}]8;;javascript:window.__pwned=11{ESC}\\link{ESC}]8;;{ESC}\\",
        "red and link",
    ),
    (f"{ESC}]0;title\a{ESC}[2Jafter clear", "after clear"),
    (
        '<a href="javascript:window.__pwned=12">click</a>',
        '<a href="javascript:window.__pwned=12">click</a>',
    ),
    ("progress 10%\rprogress 100%", "progress 100%"),
]
SHOWN = [shown for _raw, shown in LOG]

# What the page may never contain, and where links may point.
AUDIT = """() => {
  const main = document.querySelector("main");
  const bad = main.querySelectorAll(
    "script, iframe, object, embed, svg, img:not(.badge), [onerror], [onload], [onclick], [onmouseover]");
  const foreign = [...document.querySelectorAll("a[href], [src]")]
    .map(n => new URL(n.getAttribute("href") || n.getAttribute("src"), location.href))
    .filter(u => u.origin !== location.origin)
    .map(u => u.href);
  return {bad: [...bad].map(n => n.outerHTML), foreign, pwned: window.__pwned ?? null};
}"""
CLEAN = {"bad": [], "foreign": [], "pwned": None}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    flag, wait = gate(tmp, "hostile")
    steps = (
        f"steps:\n  - name: '{STEPS[0]}'\n    run: |\n      cat log.txt\n      {wait}\n      cat log.txt\n"
        f"  - name: '{STEPS[1]}'\n    run: cat log.txt; exit 1\n"
    )
    bare, work = setup_repo(tmp, steps)
    (work / "log.txt").write_text("".join(raw + "\n" for raw, _ in LOG))
    git(work, "add", "log.txt")
    git(work, "commit", "-q", "-m", SUBJECT + "\n\nbody <b>not shown</b>")
    d = WebDaemon(tmp, {"repos": [{"name": "app", "path": str(bare)}]})
    assert d.cli("install-hook", str(bare), "--name", "app").returncode == 0
    d.start()
    try:
        yield d, bare, work, flag
    finally:
        d.stop()


def texts(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "ns => ns.map(n => n.textContent)")


def log_texts(page, step_id: int) -> list[str]:
    return texts(page, f"#log-{step_id} .l .x")


def test_hostile_text_stays_text_on_the_dashboard_and_the_run_page(hostile, page):
    d, bare, work, flag = hostile
    page.goto(d.url + "/")  # open before the pushes: the rows arrive through the script
    for branch in BRANCHES:
        git(work, "push", "-q", str(bare), f"HEAD:refs/heads/{branch}")

    rows = page.locator("tr.run")
    wait_for(lambda: rows.count() == 2, 20, what="both runs on the dashboard")
    page.wait_for_function(
        "[...document.querySelectorAll('tr.run .subject')].every(n => n.textContent)"
    )
    assert sorted(texts(page, "tr.run td.ref")) == sorted(BRANCHES)
    assert texts(page, "tr.run .subject") == [SUBJECT, SUBJECT]
    page.wait_for_function("document.querySelectorAll('.branches li[data-branch]').length === 2")
    assert sorted(texts(page, ".branches a.branch")) == sorted(BRANCHES)
    assert page.evaluate(AUDIT) == CLEAN

    # The run page, opened while its first step runs: the second step, its
    # state and its log arrive live.
    run = d.wait_run(branch=BRANCHES[0], state="running")
    page.locator("tr.run", has=page.locator("td.ref", has_text="script")).locator("a").click()
    page.wait_for_url(f"{d.url}/runs/{run['id']}")
    first = wait_for(
        lambda: (d.api("GET", f"/api/runs/{run['id']}").json()["steps"] or [None])[0],
        20,
        what="the first step",
    )
    page.wait_for_function(f"document.querySelectorAll('#log-{first['id']} .l').length === 7")
    flag.touch()
    page.wait_for_selector('#run[data-state="failure"]')
    page.wait_for_function("document.querySelectorAll('details.step').length === 2")
    second = d.api("GET", f"/api/runs/{run['id']}").json()["steps"][1]
    page.wait_for_function(f"document.querySelectorAll('#log-{second['id']} .l').length === 7")
    page.wait_for_function(f"document.querySelectorAll('#log-{first['id']} .l').length === 14")
    check_run_page(page, first["id"], second["id"], both_logs=True)

    # The same, rendered by the server.
    page.reload()
    check_run_page(page, first["id"], second["id"], both_logs=False)
    page.goto(d.url + "/")
    assert sorted(texts(page, "tr.run td.ref")) == sorted(BRANCHES)
    assert texts(page, "tr.run .subject") == [SUBJECT, SUBJECT]
    assert sorted(texts(page, ".branches a.branch")) == sorted(BRANCHES)
    assert page.evaluate(AUDIT) == CLEAN
    page.goto(d.url + "/?" + "branch=" + BRANCHES[1].replace("%", "%25").replace("&", "%26"))
    assert texts(page, "tr.run td.ref") == [BRANCHES[1]]
    assert page.input_value(".filters input[name=branch]") == BRANCHES[1]
    assert page.evaluate(AUDIT) == CLEAN


def check_run_page(page, first: int, second: int, both_logs: bool) -> None:
    assert page.text_content("#run .ref") == BRANCHES[0]
    assert page.text_content("#subject") == SUBJECT
    assert texts(page, "details.step .name") == STEPS
    assert page.title().startswith("app#")
    assert log_texts(page, second) == SHOWN
    if both_logs:
        assert log_texts(page, first) == SHOWN + SHOWN
    red = page.eval_on_selector_all(
        f"#log-{second} .x span", "ns => ns.map(n => [n.className, n.textContent])"
    )
    assert ["fg1", "red"] in red
    assert page.evaluate(AUDIT) == CLEAN


def test_pages_forbid_inline_scripts_and_framing(hostile, strict_page):
    page = strict_page
    d, *_ = hostile
    for path in ("/", "/runs/1"):
        response = page.goto(d.url + path)
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
    # Even an inline script that got into a page would not run.
    page.goto(d.url + "/")
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.__pwned = 99'; document.body.append(s); }"
    )
    assert page.evaluate("window.__pwned ?? null") is None
    missing = page.goto(d.url + "/runs/%3Cscript%3E")
    assert missing.status == 404
    assert page.text_content(".problem") == "no run '<script>'"
