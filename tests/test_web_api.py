"""The JSON API: a real daemon building real pushes, read and driven over
HTTP (and through the CLI); and a store of many runs served by a real
uvicorn, for filters, keyset paging, 404s and 422s."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import requests
from daemonutil import DaemonProc, cli, wait_for
from gitutil import commit, git, make_repo
from webapiutil import ApiServer, add_run, open_store

from ciwatch.model import RunState

TOKEN = "t0ken-for-tests"
PASS = "steps:\n  - name: build\n    run: echo built\n  - name: test\n    run: echo tested\n"
FAIL = "steps:\n  - name: build\n    run: echo broken; exit 3\n"
HOSTILE = "Fix <script>alert(1)</script> \x1b[31mred\x1b[0m & $(id)"


# -- a real daemon ---------------------------------------------------------------


def _push(work: Path, bare: Path, ref: str) -> None:
    git(work, "push", "-q", "-f", str(bare), f"HEAD:{ref}")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """A daemon that built: main (passing, hostile subject), branch `broken`
    (failing) and tag v1; the web token configured."""
    tmp = tmp_path_factory.mktemp("daemon")
    bare, work = tmp / "app.git", tmp / "app-work"
    git(tmp, "init", "-q", "--bare", "-b", "main", str(bare))
    make_repo(work, {".ciwatch.yml": PASS})
    (tmp / "token").write_text(TOKEN + "\n")
    d = DaemonProc(
        tmp,
        {
            "repos": [{"name": "app", "path": str(bare)}],
            "web": {"token_file": str(tmp / "token")},
        },
    )
    d.start()
    try:
        commit(work, {"a.txt": "1"}, HOSTILE)
        _push(work, bare, "refs/heads/main")
        d.wait_runs_finished(1)
        _push(work, bare, "refs/tags/v1")
        d.wait_runs_finished(2)
        git(work, "checkout", "-q", "-b", "broken")
        commit(work, {".ciwatch.yml": FAIL}, "Break it")
        _push(work, bare, "refs/heads/broken")
        d.wait_runs_finished(3)
        git(work, "checkout", "-q", "main")
        d.url = (d.state / "daemon.url").read_text().split()[1]
        d.work, d.bare = work, bare
        yield d
    finally:
        assert d.stop() == 0, d.log.read_text()[-3000:]


def get(d, path: str, **params):
    r = requests.get(d.url + path, params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_runs_list_what_the_dashboard_shows(daemon):
    runs = get(daemon, "/api/runs")["runs"]
    assert [r["ref_name"] for r in runs] == ["broken", "v1", "main"]  # newest first
    broken, tag, main = runs
    assert (main["state"], main["branch"], main["tag"], main["kind"]) == (
        "success",
        "main",
        None,
        "push",
    )
    assert (tag["tag"], tag["branch"], tag["kind"]) == ("v1", None, "tag")
    assert broken["state"] == "failure" and broken["subject"] == "Break it"
    # The commit's subject is stored and given back as text, exactly.
    assert main["subject"] == HOSTILE and main["author"] == "Test"
    assert main["short_sha"] == main["sha"][:10] and main["label"] == "app#1"
    assert main["source"] == "watch" and main["attempt"] == 1
    assert main["url"] == f"/runs/{main['id']}"
    assert main["queue_wait"] == pytest.approx(main["started_at"] - main["created_at"])
    assert main["duration"] == pytest.approx(main["finished_at"] - main["started_at"])


def test_a_run_with_its_event_attempts_steps_and_why(daemon):
    run = get(daemon, "/api/runs")["runs"][-1]
    detail = get(daemon, f"/api/runs/{run['id']}")
    assert detail["id"] == run["id"] and detail["subject"] == HOSTILE
    assert detail["event"]["source"] == "watch" and detail["event"]["ref"] == "refs/heads/main"
    assert [s["source"] for s in detail["event"]["sightings"]] == ["watch"]
    [attempt] = detail["attempts"]
    assert attempt["number"] == 1 and attempt["state"] == "success"
    assert detail["cells"] == [""]
    assert [(s["name"], s["state"], s["index"]) for s in detail["steps"]] == [
        ("build", "success", 0),
        ("test", "success", 1),
    ]
    step = detail["steps"][0]
    assert step["log_url"] == f"/api/steps/{step['id']}/log" and step["log_bytes"] > 0
    assert detail["why"][0].startswith(f"run app#1 (id {run['id']}): success")
    assert detail["artifacts"] == []
    assert get(daemon, f"/api/runs/{run['id']}/steps") == detail["steps"]
    failed = get(daemon, "/api/runs", branch="broken")["runs"][0]
    why = get(daemon, f"/api/runs/{failed['id']}")["why"]
    assert any("step 'build' failure: exit code 3" in line for line in why), why


def test_repos_give_each_branch_its_latest_run_default_first(daemon):
    [repo] = get(daemon, "/api/repos")
    assert repo["name"] == "app" and repo["default_branch"] == "main"
    assert [b["branch"] for b in repo["branches"]] == ["main", "broken"]
    assert repo["branches"][1]["run"]["state"] == "failure"
    assert repo["badge_url"] == "/badge/app.svg"


def test_status_sources_and_openapi(daemon):
    status = get(daemon, "/api/status")
    assert status["ok"] and status["scheduler"]["queued"] == 0 and status["pid"] > 0
    sources = get(daemon, "/api/sources")
    assert {"kind": "watch", "repo": "app"} in sources
    doc = get(daemon, "/api/openapi.json")
    assert "/api/runs" in doc["paths"] and "/api/runs/{run_id}/retry" in doc["paths"]
    assert not any(p.startswith("/hooks") for p in doc["paths"])  # forges' door: not listed


def test_actions_with_the_token_trigger_retry_and_cancel(daemon):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = requests.post(
        daemon.url + "/api/trigger", json={"repo": "app", "branch": "main"}, headers=auth
    )
    assert r.status_code == 200, r.text
    new = r.json()["run"]
    assert r.json()["ok"] and new["kind"] == "manual" and new["source"] == "manual"
    wait_for(lambda: get(daemon, f"/api/runs/{new['id']}")["state"] == "success", 30)
    done = get(daemon, f"/api/runs/{new['id']}")
    assert done["subject"] == HOSTILE  # read when the daemon resolved it

    r = requests.post(daemon.url + f"/api/runs/{new['id']}/retry", headers=auth)
    assert r.status_code == 200, r.text
    again = r.json()["run"]
    assert again["id"] > new["id"] and (again["sha"], again["ref"]) == (new["sha"], new["ref"])
    wait_for(lambda: get(daemon, f"/api/runs/{again['id']}")["state"] == "success", 30)

    r = requests.post(daemon.url + f"/api/runs/{again['id']}/cancel", headers=auth)
    assert r.status_code == 409 and "already finished (success)" in r.json()["detail"]
    r = requests.post(daemon.url + "/api/trigger", json={"repo": "nope"}, headers=auth)
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    r = requests.post(daemon.url + "/api/trigger", json={"repo": "app"})
    assert r.status_code == 401  # the same request without the token
    assert TOKEN not in daemon.log.read_text()


def test_the_cli_goes_through_the_api_when_the_daemon_answers(daemon, tmp_path):
    # Without the control socket, only the HTTP API can answer these.
    sock = daemon.state / "control.sock"
    os.rename(sock, tmp_path / "control.sock")
    try:
        out = daemon.cli("status", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["state_dir"] == str(daemon.state)
        out = daemon.cli("runs", "--json", "--branch", "broken")
        assert out.returncode == 0, out.stderr
        [broken] = json.loads(out.stdout)["runs"]
        assert broken["state"] == "failure" and broken["ref_name"] == "broken"
        out = daemon.cli("trigger", "app", "broken", "--json")
        assert out.returncode == 0, out.stderr
        label = json.loads(out.stdout)["label"]
        out = daemon.cli("cancel", label)
        assert out.returncode in (0, 3), out.stderr  # it may have finished already
        wait_for(lambda: daemon.cli("runs", "--json").stdout.count('"queued"') == 0, 30)
        out = daemon.cli("retry", label, "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["ref"] == "refs/heads/broken"
    finally:
        os.rename(tmp_path / "control.sock", sock)


def test_the_cli_reads_a_daemon_named_by_url(daemon, tmp_path):
    # Another state directory entirely: what it prints can only come from the daemon.
    env = {"CIWATCH_URL": daemon.url}
    out = cli("runs", "--json", "--state", "failure", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert {r["ref_name"] for r in json.loads(out.stdout)["runs"]} == {"broken"}
    out = cli("runs", "--repo", "app", "--limit", "2", env=env, cwd=tmp_path)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 3, out.stdout
    assert "Break it" in out.stdout or "Fix" in out.stdout
    failed = json.loads(cli("runs", "--json", env=env, cwd=tmp_path).stdout)["runs"]
    label = next(r["label"] for r in failed if r["ref_name"] == "v1")
    out = cli("logs", label, "--follow", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "── build (success) ──" in out.stdout and "built" in out.stdout
    assert out.stdout.rstrip().endswith(f"{label}: success")
    out = cli("retry", label, env={**env, "CIWATCH_TOKEN": "wrong"}, cwd=tmp_path)
    assert out.returncode == 3 and "wrong token" in out.stderr


# -- many runs, one store ----------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """130 runs over two repos, three branches, a tag, a PR, states and sources."""
    store = open_store(tmp_path_factory.mktemp("store"))
    states = [RunState.SUCCESS, RunState.FAILURE, RunState.SUCCESS, RunState.ERROR]
    sources = ["hook", "poll", "cron", "webhook", "manual"]
    for i in range(120):
        add_run(
            store,
            "app" if i % 3 else "lib",
            ref=f"refs/heads/{['main', 'dev', 'feature/x'][i % 3 if i % 5 else 0]}",
            source=sources[i % 5],
            state=states[i % 4],
            subject=f"change {i}",
            steps=("build",),
        )
    add_run(store, "app", ref="refs/tags/v1.0")
    add_run(store, "app", ref="refs/pull/7/head", pr_number=7, source="webhook")
    add_run(store, "app", ref="refs/heads/caf\udce9-\udcff", source="watch")
    for _ in range(3):
        add_run(store, "lib", state=RunState.QUEUED)
    store.set_priority(store.page_runs(limit=1)[0].run.id, 5)  # the newest queued goes first
    with ApiServer(store, token=TOKEN) as srv:
        srv.all = [listing.run for listing in store.page_runs(limit=1000)]
        yield srv
    store.close()


def api(srv, path, **params):
    return requests.get(srv.url + path, params=params, timeout=10)


def test_keyset_paging_walks_every_run_once_newest_first(served):
    seen, before, pages = [], None, 0
    while True:
        page = api(served, "/api/runs", limit=7, before=before).json()
        seen += [r["id"] for r in page["runs"]]
        pages += 1
        before = page["next"]
        if before is None:
            break
    assert seen == [r.id for r in served.all]  # all of them, in order, none twice
    assert pages == -(-len(served.all) // 7)


@pytest.mark.parametrize(
    "params",
    [
        {"repo": "app"},
        {"repo": "lib", "branch": "main"},
        {"state": "failure"},
        {"trigger": "cron", "state": "success"},
        {"repo": "app", "branch": "dev", "state": "error", "trigger": "webhook"},
        {"branch": "refs/tags/v1.0"},
        {"repo": "nothere"},
    ],
)
def test_filters_combine(served, params):
    def wanted(run) -> bool:
        ref = params.get("branch")
        ref = ref if ref is None or ref.startswith("refs/") else f"refs/heads/{ref}"
        return (
            params.get("repo", run.repo) == run.repo
            and (ref is None or ref == run.ref)
            and params.get("state", run.state.value) == run.state.value
            and params.get("trigger", run.source) == run.source
        )

    got, before = [], None
    while True:
        page = api(served, "/api/runs", limit=10, before=before, **params).json()
        got += page["runs"]
        if not (before := page["next"]):
            break
    assert [r["id"] for r in got] == [r.id for r in served.all if wanted(r)]
    assert params.get("repo") == "nothere" or got  # the cases are not all empty


@pytest.mark.parametrize(
    "params,where",
    [
        ({"state": "done"}, "state"),
        ({"trigger": "carrier-pigeon"}, "trigger"),
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"before": "x"}, "before"),
        ({"before": 2**64}, "before"),
    ],
)
def test_bad_parameters_are_a_422_naming_the_parameter(served, params, where):
    r = api(served, "/api/runs", **params)
    assert r.status_code == 422
    [problem] = r.json()["detail"]
    assert problem["loc"] == ["query", where] and problem["msg"]


def test_unknown_runs_are_404(served):
    r = api(served, "/api/runs/99999")
    assert (r.status_code, r.json()) == (404, {"detail": "no run 99999"})
    assert api(served, "/api/runs/99999/steps").status_code == 404
    r = api(served, "/api/repos/app/runs/99999")
    assert (r.status_code, r.json()) == (404, {"detail": "no run app#99999"})
    assert api(served, "/api/runs/abc").status_code == 422


def test_refs_are_shown_as_text_whatever_their_bytes(served):
    [run] = api(served, "/api/runs", repo="app", trigger="watch").json()["runs"]
    assert run["ref"] == "refs/heads/caf\ufffd-\ufffd" and run["ref_name"] == "caf\ufffd-\ufffd"
    [pr] = [r for r in api(served, "/api/runs", limit=20).json()["runs"] if r["pr_number"]]
    assert (pr["ref_name"], pr["kind"], pr["branch"]) == ("PR #7", "pull_request", None)


def test_the_queue_in_start_order_and_live_queue_wait(served):
    queue = api(served, "/api/queue").json()
    assert [r["state"] for r in queue] == ["queued"] * 3
    ids = [r["id"] for r in queue]
    assert ids == [ids[0], *sorted(ids[1:])] and ids[0] > max(ids[1:])  # priority, then age
    assert all(r["queue_wait"] >= 0 and r["duration"] is None for r in queue)
    time.sleep(0.05)
    assert api(served, "/api/queue").json()[0]["queue_wait"] > queue[0]["queue_wait"]
