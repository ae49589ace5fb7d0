"""Forges end to end: a real daemon, a real push, a fake forge over real HTTP;
webhooks into the daemon's own HTTP server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
from daemonutil import DaemonProc, wait_for
from fakeforge import FakeForge, replies
from specpath import find_specs
from test_daemon_e2e import install_hook, push, setup_repo

from ciwatch.forges.signatures import sign
from ciwatch.model import RunState

SPECS = find_specs()
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
        # pending (queued) and running may be coalesced away when the run is quick;
        # whatever was sent came in lifecycle order and ended with the final state
        order = ["pending", "running", "success"]
        assert [order.index(s) for s in posted] == sorted(order.index(s) for s in posted)
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


PUSH_PAYLOADS = {
    "github": (
        "github/push.new-branch.payload.json",
        {"X-GitHub-Event": "push"},
        "X-GitHub-Delivery",
    ),
    "gitea": ("gitea/push.captured.payload.json", {"X-Gitea-Event": "push"}, "X-Gitea-Delivery"),
    "forgejo": (
        "forgejo/push.captured.payload.json",
        {"X-Forgejo-Event": "push"},
        "X-Forgejo-Delivery",
    ),
    "gitlab": (
        "gitlab/push.captured.payload.json",
        {"X-Gitlab-Event": "Push Hook"},
        "X-Gitlab-Event-UUID",
    ),
}


def _signature(kind: str, secret: bytes, body: bytes) -> dict:
    if kind == "gitlab":
        return {"X-Gitlab-Token": secret.decode()}
    if kind == "gitea":
        return {"X-Gitea-Signature": sign(secret, body)}
    if kind == "forgejo":
        return {"X-Forgejo-Signature": sign(secret, body)}
    return {"X-Hub-Signature-256": "sha256=" + sign(secret, body)}


@pytest.mark.parametrize("kind", ["github", "gitea", "forgejo", "gitlab"])
def test_a_push_webhook_starts_a_run_whose_status_reaches_the_forge(tmp_path, kind):
    from test_forge_status import assert_valid

    from ciwatch.forges.types import ForgeKind

    bare, work = setup_repo(tmp_path)
    sha = push(work, bare)  # the commit exists in the repository the daemon mirrors
    rel, head, delivery = PUSH_PAYLOADS[kind]
    payload = json.loads((SPECS / rel).read_text())
    payload.update({"after": sha, "before": "0" * 40, "ref": "refs/heads/from-webhook"})
    if kind == "gitlab":
        payload["checkout_sha"] = sha
        payload["project"]["path_with_namespace"] = "team/app"
    else:
        payload["repository"]["full_name"] = "team/app"
    body = json.dumps(payload).encode()
    with FakeForge(kind) as forge:
        d = DaemonProc(tmp_path, config(tmp_path, forge, bare))
        d.start()
        try:
            url = json.loads(d.cli("status", "--json").stdout)["web"] + "/hooks/home"

            def post(secret: bytes) -> requests.Response:
                headers = {**head, delivery: "d-1", "Content-Type": "application/json"}
                headers.update(_signature(kind, secret, body))
                return requests.post(url, data=body, headers=headers, timeout=10)

            assert post(b"wrong secret").status_code == 401
            ok = post(b"s3cret-for-hooks")
            assert ok.status_code in (200, 202), ok.text
            again = post(b"s3cret-for-hooks")
            assert again.status_code == 200 and again.json().get("duplicate"), again.text
            runs = d.wait_runs_finished(1)
            assert [(r.ref, r.sha, r.source) for r in runs] == [
                ("refs/heads/from-webhook", sha, "webhook")
            ]
            wait_for(lambda: "success" in states_for(forge, sha), 20, what="the final status")
        finally:
            d.stop()
        for _repo, _sha, doc in forge.statuses:
            assert_valid(ForgeKind(kind), doc)  # every status matches the forge's own schema


def test_a_push_seen_by_the_hook_and_by_a_webhook_makes_one_run(tmp_path):
    bare, work = setup_repo(tmp_path)
    payload = json.loads((SPECS / "gitea" / "push.captured.payload.json").read_text())
    with FakeForge("gitea") as forge:
        d = DaemonProc(tmp_path, config(tmp_path, forge, bare))
        install_hook(d, bare)
        d.start()
        try:
            sha = push(work, bare, "refs/heads/both")
            payload.update({"after": sha, "before": "0" * 40, "ref": "refs/heads/both"})
            payload["repository"]["full_name"] = "team/app"
            body = json.dumps(payload).encode()
            url = json.loads(d.cli("status", "--json").stdout)["web"] + "/hooks/home"
            answer = requests.post(
                url,
                data=body,
                timeout=10,
                headers={
                    "X-Gitea-Event": "push",
                    "X-Gitea-Delivery": "g-1",
                    "Content-Type": "application/json",
                    "X-Gitea-Signature": sign(b"s3cret-for-hooks", body),
                },
            )
            assert answer.status_code in (200, 202), answer.text
            [run] = d.wait_runs_finished(1)
            time.sleep(1)
            assert [r.sha for r in d.runs()] == [sha]
            s = d.store()
            [(event_id, _, _)] = s.find_events("app", sha_prefix=sha)
            assert {"hook", "webhook"} <= {x.source for x in s.sightings(event_id)}
            s.close()
        finally:
            d.stop()
