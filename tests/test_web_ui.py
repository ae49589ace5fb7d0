"""The dashboard and the run page in a real headless Chromium, against a real
daemon with real pushes through the hook: a push appears without a reload,
its log streams while the step prints, cancel stops it, the badge changes
colour, a cross-site form is refused, a forge's status link opens the run,
and a browser that loses the daemon resumes the log where it left off."""

from __future__ import annotations

import http.server
import re
import threading

import pytest
from daemonutil import wait_for
from fakeforge import FakeForge
from test_daemon_e2e import setup_repo
from webui import TOKEN, WebDaemon, browser_fixture, gate, page_fixture, push_branch  # noqa: F401 (fixtures)

from ciwatch.model import RunState
from ciwatch.web.badges import COLOURS

PIPE = "steps:\n  - name: build\n    run: sh ./build.sh\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One daemon for the module, reporting to a fake Gitea."""
    tmp = tmp_path_factory.mktemp("webui")
    bare, work = setup_repo(tmp, PIPE)
    forge = FakeForge("gitea").start()
    (tmp / "forge-token").write_text(forge.token + "\n")
    d = WebDaemon(
        tmp,
        {
            "forges": {
                "home": {
                    "kind": "gitea",
                    "url": forge.url,
                    "api_url": forge.url,
                    "token_file": str(tmp / "forge-token"),
                }
            },
            # The hook alone sees pushes, so each run's trigger is known ("hook").
            "repos": [
                {
                    "name": "app",
                    "path": str(bare),
                    "watch": False,
                    "forge": "home",
                    "forge_repo": "team/app",
                }
            ],
        },
    )
    out = d.cli("install-hook", str(bare), "--name", "app")
    assert out.returncode == 0, out.stderr
    d.start()
    try:
        yield d, bare, work, tmp, forge
    finally:
        d.stop()
        forge.stop()


def lines_of(page, step_id: int) -> list[tuple[int, str]]:
    got = page.eval_on_selector_all(
        f"#log-{step_id} .l",
        "ls => ls.map(l => [Number(l.dataset.n), l.querySelector('.x').textContent])",
    )
    return [tuple(x) for x in got]


def running_step(d: WebDaemon, run_id: int) -> dict:
    def find():
        steps = d.api("GET", f"/api/runs/{run_id}").json()["steps"]
        return steps[0] if steps and steps[0]["state"] == "running" else None

    return wait_for(find, 20, 0.1, what=f"a running step of run {run_id}")


def sign_in(page) -> None:
    page.fill("#signin input[name=token]", TOKEN)
    page.click("#signin button")
    page.wait_for_selector("#signedin", state="visible")


def badge_fill(page, selector: str) -> str:
    """The message colour of the badge an <img> shows, fetched by the page."""
    svg = page.evaluate(
        "sel => fetch(document.querySelector(sel).src).then(r => r.text())", selector
    )
    return re.findall(r'<rect x="\d+" width="\d+" height="20" fill="(#[0-9a-f]+)"', svg)[0]


def test_a_push_appears_without_a_reload_and_its_log_streams(site, page):
    d, bare, work, tmp, _forge = site
    page.goto(d.url + "/")
    page.evaluate("window.__sameDocument = 'yes'")
    flag, wait = gate(tmp, "stream")
    script = f'for i in 1 2 3; do echo "tick $i"; done\n{wait}\nfor i in 4 5 6; do echo "tick $i"; done\n'
    sha = push_branch(work, bare, "live-1", {"build.sh": script}, "Stream me")

    row = page.locator("tr.run", has=page.locator("td.ref", has_text="live-1"))
    row.wait_for()
    assert row.locator(".subject").text_content() == "Stream me"
    assert row.locator(".sha").text_content() == sha[:10]
    assert row.locator(".source").text_content() == "hook"
    assert page.evaluate("window.__sameDocument") == "yes"  # no reload happened

    run = d.wait_run(branch="live-1", state="running")
    row.locator("a.label").click()
    page.wait_for_url(f"{d.url}/runs/{run['id']}")
    s = running_step(d, run["id"])
    page.wait_for_function(f"document.querySelectorAll('#log-{s['id']} .l').length === 3")
    assert page.get_attribute(f"#step-{s['id']}", "data-state") == "running"
    assert page.get_attribute("#run", "data-state") == "running"
    flag.touch()  # the step prints the rest while the page watches
    page.wait_for_selector(f"#L{s['id']}-6")
    page.wait_for_selector('#run[data-state="success"]')
    assert lines_of(page, s["id"]) == [(i, f"tick {i}") for i in range(1, 7)]
    assert page.text_content("#run h1 .state") == "success"
    assert page.get_attribute(f"#step-{s['id']}", "data-state") == "success"
    # Each line has its own link, and following it marks the line.
    page.click(f"#L{s['id']}-4 a.n")
    assert page.url.endswith(f"#L{s['id']}-4")


def test_cancel_stops_the_run_and_the_badge_changes_colour(site, page, marker):
    d, bare, work, tmp, _forge = site
    dashboard = page.context.new_page()
    dashboard.goto(d.url + "/")
    push_branch(work, bare, "main", {"build.sh": f"echo started\nsleep {marker}\n"}, "Long")
    run = d.wait_run(branch="main", state="running", subject="Long")
    wait_for(
        lambda: badge_fill(dashboard, ".repo img.badge") == COLOURS[RunState.RUNNING],
        15,
        what="the badge to show running",
    )

    page.goto(f"{d.url}/runs/{run['id']}")
    assert page.is_hidden("#actions")  # read-only until signed in
    sign_in(page)
    page.wait_for_selector('#actions [data-action="cancel"]', state="visible")
    page.wait_for_selector(".log .l")  # the step has started printing
    page.click('#actions [data-action="cancel"]')
    page.wait_for_selector('#run[data-state="canceled"]')
    page.wait_for_selector('details.step[data-state="canceled"]')
    assert page.is_visible('#actions [data-action="retry"]')
    assert page.is_hidden('#actions [data-action="cancel"]')
    got = d.api("GET", f"/api/runs/{run['id']}").json()
    assert got["state"] == "canceled"
    assert page.text_content("#reason").startswith("canceled by")

    # The dashboard, never reloaded, shows it too, and its badge changed colour.
    dashboard.locator(f'tr[data-run="{run["id"]}"][data-state="canceled"]').wait_for()
    wait_for(
        lambda: badge_fill(dashboard, ".repo img.badge") == COLOURS[RunState.CANCELED],
        15,
        what="the badge to show canceled",
    )

    # Retry: a new run of the same commit, and the page goes to it.
    page.click('#actions [data-action="retry"]')
    page.wait_for_url(re.compile(rf".*/runs/(?!{run['id']}$)\d+$"))
    again = int(page.url.rsplit("/", 1)[1])
    retried = d.api("GET", f"/api/runs/{again}").json()
    assert (retried["sha"], retried["branch"]) == (run["sha"], "main")
    assert d.api("POST", f"/api/runs/{again}/cancel").status_code == 200


class EvilSite:
    """Another origin (another port on 127.0.0.1) serving a page with a form."""

    def __init__(self, html: str) -> None:
        body = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_cross_site_form_post_is_refused(site, page, marker):
    d, bare, work, _tmp, _forge = site
    push_branch(work, bare, "victim", {"build.sh": f"sleep {marker}\n"}, "Victim")
    run = d.wait_run(branch="victim", state="running")
    page.goto(f"{d.url}/runs/{run['id']}")
    sign_in(page)  # the browser holds a session: cookies the other site's form will carry
    before = len(d.api("GET", "/api/runs", params={"limit": 200}).json()["runs"])

    cancel = (
        f'<form id="f" method="post" action="{d.url}/api/runs/{run["id"]}/cancel">'
        '<input name="x" value="1"></form>'
        "<script>document.getElementById('f').submit()</script>"
    )
    trigger = (
        f'<form id="f" method="post" enctype="text/plain" action="{d.url}/api/trigger">'
        '<input name=\'{"repo": "app", "branch": "main", "x": "\' value=\'"}\'></form>'
        "<script>document.getElementById('f').submit()</script>"
    )
    for html, path in ((cancel, f"/api/runs/{run['id']}/cancel"), (trigger, "/api/trigger")):
        evil = EvilSite(html)
        try:
            with page.expect_response(lambda r, p=path: r.url == d.url + p) as answer:
                page.goto(evil.url)
            response = answer.value
            assert response.request.method == "POST"
            assert "ciwatch_session=" in response.request.all_headers().get("cookie", "")
            assert response.status == 403, response.text()
            assert response.json() == {"detail": "cross-site request refused"}
        finally:
            evil.close()

    # Nothing happened: the run still runs, no run was queued.
    assert d.api("GET", f"/api/runs/{run['id']}").json()["state"] == "running"
    assert len(d.api("GET", "/api/runs", params={"limit": 200}).json()["runs"]) == before
    assert d.api("POST", f"/api/runs/{run['id']}/cancel").status_code == 200  # clean up


def test_a_forge_status_links_to_the_run_page(site, page):
    d, bare, work, _tmp, forge = site
    sha = push_branch(work, bare, "linked", {"build.sh": "echo linked\n"}, "Follow the link")
    run = d.wait_run(sha=sha, state="success")

    def final():
        docs = [doc for _r, s, doc in forge.statuses if s == sha and doc["state"] == "success"]
        return docs[-1] if docs else None

    status = wait_for(final, 20, what="the final status on the fake forge")
    assert status["target_url"] == f"{d.url}/runs/{run['id']}"
    page.goto(status["target_url"])
    assert page.text_content("#run h1 .label") == "app"
    assert page.text_content("#run h1").startswith(f"app#{run['number']}")
    assert page.text_content("#run h1 .state") == "success"
    assert page.text_content("#subject") == "Follow the link"
    assert page.text_content("#run .sha") == sha
    page.click("details.step summary")
    page.wait_for_selector("details.step .l")
    assert [
        t for _n, t in lines_of(page, int(page.get_attribute("details.step", "data-step")))
    ] == ["linked"]


def test_a_browser_that_loses_the_daemon_resumes_the_log(site, page):
    d, bare, work, tmp, _forge = site
    first, wait_first = gate(tmp, "resume-1")
    second, wait_second = gate(tmp, "resume-2")
    script = (
        'echo "line 1"; echo "line 2"\n'
        f"{wait_first}\n"
        'for i in 3 4 5; do echo "line $i"; done\n'
        f"{wait_second}\n"
        'for i in 6 7 8 9 10; do echo "line $i"; done\n'
    )
    push_branch(work, bare, "resume", {"build.sh": script}, "Resume")
    run = d.wait_run(branch="resume", state="running")
    streams = []
    page.on("request", lambda r: streams.append(r) if "/log/stream" in r.url else None)
    page.goto(f"{d.url}/runs/{run['id']}")
    s = running_step(d, run["id"])
    page.wait_for_selector(f"#L{s['id']}-2")
    wait_for(lambda: streams, 10, what="the page to follow the log")
    first.touch()
    page.wait_for_selector(f"#L{s['id']}-5")  # 3, 4, 5 came over the stream

    d.kill9()  # the worker goes on; the browser loses its stream
    second.touch()

    def finished():
        return [r for r in d.runs() if r.id == run["id"] and r.state.finished]

    wait_for(finished, 30, what="the run to finish while the daemon is down")
    d.start()
    page.wait_for_selector('#run[data-state="success"]', timeout=20_000)
    page.wait_for_selector(f"#L{s['id']}-10")
    assert lines_of(page, s["id"]) == [(i, f"line {i}") for i in range(1, 11)]
    resumed = [r.all_headers().get("last-event-id") for r in streams[1:]]
    assert "5" in resumed, resumed  # the browser asked for what followed line 5


def test_a_queued_run_says_why_it_waits_and_the_trigger_form_queues_one(site, page):
    d, bare, work, _tmp, _forge = site
    sha = push_branch(work, bare, "triggered", {"build.sh": "echo hi\n"}, "Trigger me")
    d.wait_run(sha=sha, state="success")
    page.goto(d.url + "/")
    assert page.is_hidden("#trigger")  # read-only until signed in
    sign_in(page)
    assert d.cli("pause").returncode == 0
    try:
        page.select_option("#trigger select[name=repo]", "app")
        page.fill("#trigger input[name=branch]", "triggered")
        page.click("#trigger button")
        link = page.locator("#trigger-result a")
        link.wait_for()
        assert link.text_content().startswith("app#")
        link.click()
        page.wait_for_selector("#why", state="visible")
        assert page.get_attribute("#run", "data-state") == "queued"
        assert "paused" in page.text_content("#wait-reason")
        assert "waiting: paused" in page.text_content("#why-lines")
        assert page.text_content("#run .source") == "manual"
    finally:
        assert d.cli("resume").returncode == 0
    page.wait_for_selector('#run[data-state="success"]')
    assert page.is_hidden("#why")
    page.wait_for_selector("details.step")


def test_a_long_log_is_folded_and_a_line_link_opens_it(site, page):
    d, bare, work, _tmp, _forge = site
    sha = push_branch(work, bare, "long", {"build.sh": "seq 1 2500\n"}, "Long log")
    run = d.wait_run(sha=sha, state="success")
    [step] = d.api("GET", f"/api/runs/{run['id']}").json()["steps"]
    sid = step["id"]
    page.goto(f"{d.url}/runs/{run['id']}")
    page.click(f"#step-{sid} summary")  # a passing step opens on demand, with its last lines
    page.wait_for_selector(f"#L{sid}-2500")
    assert [n for n, _ in lines_of(page, sid)] == list(range(2301, 2501))
    fold = page.locator(f"#step-{sid} a.fold")
    assert fold.text_content() == "show 2300 earlier lines"
    fold.click()
    page.wait_for_selector(f"#L{sid}-1301")
    assert page.locator(f"#step-{sid} a.fold").text_content() == "show 1300 earlier lines"
    page.locator(f"#step-{sid} a.fold").click()
    page.wait_for_selector(f"#L{sid}-301")
    assert page.locator(f"#step-{sid} a.fold").text_content() == "show 300 earlier lines"
    page.locator(f"#step-{sid} a.fold").click()
    page.wait_for_selector(f"#L{sid}-1")
    assert lines_of(page, sid) == [(i, str(i)) for i in range(1, 2501)]
    assert page.locator(f"#step-{sid} a.fold").count() == 0

    # A link to a line that is folded away opens the step and shows the line.
    page.goto(f"{d.url}/runs/{run['id']}#L{sid}-700")
    page.wait_for_selector(f"#L{sid}-700.target")
    assert page.evaluate(f"document.getElementById('step-{sid}').open")
    assert page.is_visible(f"#L{sid}-700")
    assert page.text_content(f"#L{sid}-700 .x") == "700"
    raw = page.evaluate(f"fetch('/api/steps/{sid}/log').then(r => r.text())")
    assert raw == "".join(f"{i}\n" for i in range(1, 2501))
