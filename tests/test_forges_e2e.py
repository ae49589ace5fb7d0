"""Forges end to end: a real daemon, a real push, a fake forge over real HTTP;
webhooks into the daemon's own HTTP server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from daemonutil import DaemonProc, wait_for
from fakeforge import FakeForge, replies
from test_daemon_e2e import install_hook, push, setup_repo

from ciwatch.forges.signatures import sign
from ciwatch.model import RunState

SPECS = Path(__file__).resolve().parents[2] / "shared" / "specs"
STATE_WORD = {"github": "state", "gitea": "state", "forgejo": "state", "gitlab": "state"}


def config(tmp_path: Path, forge: FakeForge, bare: Path, **extra) -> dict:
    (tmp_path / "token").write_text(forge.token + "\n")
    (tmp_path / "hook-secret").write_text("s3cret-for-hooks\n")
    return {
        "forges": {
            "home": {
                "kind": forge.kind.value,
                "url": forge.url,
                "api_url": forge.url,
                "token_file": str(tmp_path / "token"),
                "webhook_secret_file": str(tmp_path / "hook-secret"),
            }
        },
        "repos": [{"name": "app", "path": str(bare), "forge": "home", "forge_repo": "team/app"}],
        **extra,
    }


def states_for(forge: FakeForge, sha: str) -> list[str]:
    return [doc.get("state") for _repo, s, doc in forge.statuses if s == sha]


@pytest.mark.parametrize("kind", ["github", "gitea", "forgejo", "gitlab"])
def test_a_push_ends_with_the_right_status_on_the_forge(tmp_path, kind):
    bare, work = setup_repo(tmp_path)
    with FakeForge(kind) as forge:
        d = DaemonProc(tmp_path, config(tmp_path, forge, bare))
        install_hook(d, bare)
        d.start()
        try:
            sha = push(work, bare)
            [run] = d.wait_runs_finished(1)
            assert run.state is RunState.SUCCESS
            wait_for(
                lambda: states_for(forge, sha) and states_for(forge, sha)[-1] == "success",
                20,
                what=f"the final status on the fake {kind}",
            )
        finally:
            d.stop()
        posted = states_for(forge, sha)
        assert posted[0] == "pending"
        assert all(s == sha for _r, s, _d in forge.statuses)  # never another sha
        last = [doc for _r, s, doc in forge.statuses if s == sha][-1]
        url = last.get("target_url")
        assert url and url.endswith(f"/runs/{run.id}")
        assert forge.token not in d.log.read_text()


def test_the_final_status_arrives_after_the_forge_recovers_and_a_restart(tmp_path):
    bare, work = setup_repo(tmp_path)
    with FakeForge("gitea") as forge:
        forge.script(*[replies.server_error() for _ in range(100)])  # down
        d = DaemonProc(tmp_path, config(tmp_path, forge, bare))
        install_hook(d, bare)
        d.start()
        sha = push(work, bare)
        [run] = d.wait_runs_finished(1)
        assert run.state is RunState.SUCCESS  # a forge that is down never fails a run
        d.kill9()  # between "run finished" and "status posted"
        forge.queue.clear()  # the forge is back
        d.start()
        try:
            wait_for(
                lambda: "success" in states_for(forge, sha), 60, what="the status after restart"
            )
        finally:
            d.stop()


def _signed_post(url: str, body: bytes, headers: dict, secret: bytes) -> requests.Response:
    return requests.post(
        url,
        data=body,
        timeout=10,
        headers={
            **headers,
            "Content-Type": "application/json",
            "X-Hub-Signature-256": "sha256=" + sign(secret, body),
        },
    )


def test_a_github_push_webhook_starts_a_run_and_replays_are_ignored(tmp_path):
    bare, work = setup_repo(tmp_path)
    sha = push(work, bare)  # the commit exists in the repository the daemon mirrors
    payload = json.loads((SPECS / "github" / "push.new-branch.payload.json").read_text())
    payload["after"], payload["before"] = sha, "0" * 40
    payload["ref"] = "refs/heads/from-webhook"
    payload["repository"]["full_name"] = "team/app"
    body = json.dumps(payload).encode()
    with FakeForge("github") as forge:
        d = DaemonProc(tmp_path, config(tmp_path, forge, bare))
        d.start()
        try:
            web = d.cli("status", "--json")
            url = json.loads(web.stdout)["web"] + "/hooks/home"
            head = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d-1"}
            bad = _signed_post(url, body, head, b"wrong secret")
            assert bad.status_code == 401
            ok = _signed_post(url, body, head, b"s3cret-for-hooks")
            assert ok.status_code in (200, 202), ok.text
            again = _signed_post(url, body, head, b"s3cret-for-hooks")
            assert again.status_code == 200 and again.json().get("duplicate")
            runs = d.wait_runs_finished(1)
            assert [(r.ref, r.sha, r.source) for r in runs] == [
                ("refs/heads/from-webhook", sha, "webhook")
            ]
        finally:
            d.stop()
