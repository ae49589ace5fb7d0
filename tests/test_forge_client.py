"""The status client against a fake forge over real HTTP on loopback, and
`ciwatch forge check` against it."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from fakeforge import FakeForge, Reply, replies
from gitdaemon import closed_port

from ciwatch.cli import main
from ciwatch.forges.client import ForgeClient
from ciwatch.forges.status import build_request
from ciwatch.forges.types import ForgeKind, StatusState, StatusUpdate, Verdict

SHA = "4f1e7c0d9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"
NOW = 1_800_000_000.0
FAST = (0.5, 0.5)
KINDS = list(ForgeKind)
TOKEN_HEADER = {
    ForgeKind.GITHUB: ("authorization", "Bearer {}"),
    ForgeKind.GITEA: ("authorization", "token {}"),
    ForgeKind.FORGEJO: ("authorization", "token {}"),
    ForgeKind.GITLAB: ("private-token", "{}"),
}


def update(state=StatusState.RUNNING, **kw) -> StatusUpdate:
    base = dict(
        forge="home",
        forge_repo="team/app",
        sha=SHA,
        context="ciwatch/.ciwatch.yml",
        state=state,
        description="build 17 on main",
        target_url="https://ci.example.org/runs/17",
        extra=(("ref", "refs/heads/main"),),
    )
    base.update(kw)
    return StatusUpdate(**base)


@pytest.fixture(params=KINDS, ids=str)
def forge(request):
    with FakeForge(request.param) as f:
        yield f


def client_for(forge: FakeForge, token: str | None = "", **kw) -> ForgeClient:
    kw.setdefault("timeout", FAST)
    kw.setdefault("clock", lambda: NOW)
    return ForgeClient(forge.kind, forge.api_base, forge.token if token == "" else token, **kw)


def test_posts_the_built_request_with_the_token_header_of_each_forge(forge):
    client = client_for(forge)
    d = client.post_status(update(StatusState.SUCCESS))
    assert d.verdict is Verdict.DELIVERED and d.http_status == 201
    [rec] = forge.requests
    expected = build_request(forge.kind, forge.api_base, update(StatusState.SUCCESS))
    assert forge.url + rec.path == expected.url
    assert rec.json == expected.json
    name, form = TOKEN_HEADER[forge.kind]
    assert rec.headers[name] == form.format(forge.token)
    other = "private-token" if name == "authorization" else "authorization"
    assert other not in rec.headers  # the token travels in one header only
    assert rec.headers["content-type"] == "application/json"
    assert rec.headers["user-agent"].startswith("ciwatch/")
    assert forge.statuses == [("team/app", SHA, expected.json)]


def test_a_wrong_token_is_an_auth_problem(forge):
    d = client_for(forge, token="not-the-token").post_status(update())
    assert d.verdict is Verdict.AUTH and d.http_status == 401
    assert "not-the-token" not in d.message
    assert client_for(forge, token=None).post_status(update()).verdict is Verdict.AUTH
    assert len(forge.requests) == 1  # without a token nothing is sent


def test_fault_answers_over_http(forge):
    forge.script(
        replies.server_error(500),
        replies.server_error(502),
        replies.rate_limited(7),
        replies.rate_limited(7, status=403),
        replies.primary_limit(reset=NOW + 300),
        replies.secondary_limit(),
        replies.too_many_statuses(),
        replies.not_found(),
        replies.unauthorized(),
    )
    client = client_for(forge)
    got = [client.post_status(update()) for _ in range(9)]
    assert [d.verdict for d in got] == [Verdict.RETRY] * 6 + [Verdict.DROP] * 2 + [Verdict.AUTH]
    assert [d.retry_after for d in got[2:6]] == [7.0, 7.0, 300.0, 60.0]
    assert "1000" in got[6].message
    assert len(forge.posts()) == 9  # one POST each; Gitea's 500 adds a commit probe (a GET)


def test_gitlab_repeated_running_is_already_applied():
    with FakeForge("gitlab") as forge:
        client = client_for(forge)
        assert client.post_status(update(StatusState.PENDING)).verdict is Verdict.DELIVERED
        assert client.post_status(update(StatusState.RUNNING)).verdict is Verdict.DELIVERED
        again = client.post_status(update(StatusState.RUNNING))
        assert again.verdict is Verdict.APPLIED and again.http_status == 400
        late = client.post_status(update(StatusState.PENDING))
        assert late.verdict is Verdict.APPLIED
        assert client.post_status(update(StatusState.SUCCESS)).verdict is Verdict.DELIVERED
        assert [s[2]["state"] for s in forge.statuses] == ["pending", "running", "success"]


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_sha_is_dropped(kind):
    with FakeForge(kind) as forge:
        forge.known_shas = {"0" * 40}
        d = client_for(forge).post_status(update())
        assert d.verdict is Verdict.DROP, d
        assert forge.statuses == []


@pytest.mark.parametrize("kind", ["gitea", "forgejo"])
def test_gitea_500_is_told_apart_by_asking_for_the_commit(kind):
    with FakeForge(kind) as forge:
        forge.known_shas = {SHA}
        forge.script(replies.server_error(500))  # an outage, for a commit the forge has
        d = client_for(forge).post_status(update())
        assert d.verdict is Verdict.RETRY and d.http_status == 500
        probe = forge.requests[-1]
        assert probe.method == "GET" and probe.path.endswith(f"/git/commits/{SHA}")
        forge.known_shas = set()
        assert client_for(forge).post_status(update()).verdict is Verdict.DROP
        forge.script(replies.gitea_unknown_sha_admin(SHA))  # an admin token sees the reason
        assert client_for(forge).post_status(update()).verdict is Verdict.DROP


def test_a_hang_is_a_retry_within_the_read_timeout(forge):
    forge.script(replies.hang(10))
    started = time.monotonic()
    d = client_for(forge, timeout=(0.5, 0.3)).post_status(update())
    elapsed = time.monotonic() - started
    assert d.verdict is Verdict.RETRY and d.http_status is None
    assert "did not answer within 0.3s" in d.message
    assert elapsed < 1.5


def test_a_trickling_answer_is_cut_at_the_deadline():
    with FakeForge("github") as forge:
        forge.script(Reply(201, {"id": 1, "pad": "x" * 400}, drip=0.05))  # ~20 s in full
        started = time.monotonic()
        d = client_for(forge, timeout=(0.3, 0.3)).post_status(update())
        assert time.monotonic() - started < 2.0
        assert d.verdict is Verdict.DELIVERED  # the forge said 201 before it dawdled


def test_connection_refused_is_a_retry():
    port = closed_port()
    client = ForgeClient("gitea", f"http://127.0.0.1:{port}", "tok-9x2", timeout=FAST)
    started = time.monotonic()
    d = client.post_status(update())
    assert d.verdict is Verdict.RETRY and d.http_status is None
    assert "connection refused" in d.message and "tok-9x2" not in d.message
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("kind", KINDS)
def test_a_redirect_to_another_host_never_gets_the_token(kind, status):
    with FakeForge(kind) as forge, FakeForge(kind, host="127.0.0.2") as other:
        path = build_request(kind, forge.api_base, update()).url[len(forge.url) :]
        forge.script(replies.redirect(other.url + path, status))
        d = client_for(forge).post_status(update())
        assert d.verdict is Verdict.RETRY and d.http_status == status
        assert "127.0.0.2" in d.message and "not followed" in d.message
        assert forge.token not in d.message
        assert other.requests == []
        assert len(forge.requests) == 1

        # The hazard is real: a client that follows redirects hands GitLab's
        # PRIVATE-TOKEN (which requests never strips) to the other host.
        if kind == "gitlab":
            forge.script(replies.redirect(other.url + path, status))
            requests.post(forge.url + path, json={}, headers={"PRIVATE-TOKEN": forge.token}, timeout=2)  # fmt: skip
            assert other.requests[0].headers["private-token"] == forge.token


def test_netrc_does_not_replace_the_token(tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with FakeForge("github") as forge:
        assert requests.get(forge.url + "/user", timeout=2).request.headers.get("Authorization")
        forge.requests.clear()
        assert client_for(forge).post_status(update()).verdict is Verdict.DELIVERED
        assert forge.requests[0].headers["authorization"] == f"Bearer {forge.token}"


def test_the_token_never_reaches_messages_or_logs(forge, caplog):
    caplog.set_level(logging.DEBUG)
    echo = Reply(403, {"message": f"token {forge.token} is not allowed here"})
    forge.script(echo, replies.unauthorized(), replies.server_error(), replies.hang(5))
    client = client_for(forge, log=logging.getLogger("ciwatch.forges.test"))
    got = [client.post_status(update()) for _ in range(4)]
    assert "[MASKED]" in got[0].message
    assert all(forge.token not in d.message for d in got)
    assert caplog.records and all(forge.token not in r.getMessage() for r in caplog.records)


# --- check -----------------------------------------------------------------------------


def test_check_ok(forge):
    lines = client_for(forge).check("team/app")
    assert all(line.startswith(("ok:", "note:")) for line in lines), lines
    assert any(line.startswith("ok: may post commit statuses to team/app") for line in lines)
    assert "user ci-bot" in lines[0]


def test_check_without_push_access(forge):
    forge.repos["team/app"] = 20 if forge.kind == "gitlab" else False
    lines = client_for(forge).check("team/app")
    missing = [line for line in lines if line.startswith("missing:")]
    assert len(missing) == 1 and "team/app" in missing[0]
    assert ("Developer" in missing[0]) if forge.kind == "gitlab" else ("push" in missing[0])
    assert any(line.startswith("ok: the token can read team/app") for line in lines)


def test_check_names_missing_token_scopes():
    with FakeForge("github") as gh:
        gh.github_scopes = "read:org, public_repo"
        lines = client_for(gh).check("team/app")
        assert "missing: the token needs the repo:status (or repo) scope; it has: public_repo, read:org" in lines  # fmt: skip
        gh.github_scopes = None
        assert any("fine-grained" in line for line in client_for(gh).check("team/app"))
    with FakeForge("gitlab") as gl:
        gl.gitlab_scopes = ["read_api"]
        assert "missing: the token needs the api scope; it has: read_api" in client_for(gl).check("team/app")  # fmt: skip


def test_check_failures(forge):
    assert client_for(forge).check("team/other")[-1].startswith("error: cannot read team/other")
    bad = client_for(forge, token="bad-token-123").check("team/app")
    assert bad == ["error: the forge refused the token (401): expired, revoked or wrong: Bad credentials"]  # fmt: skip
    down = ForgeClient(forge.kind, f"http://127.0.0.1:{closed_port()}", "tok-9x2", timeout=FAST)
    assert down.check("team/app")[0].startswith("error: cannot sign in: cannot connect")


def _config(tmp_path, forge: FakeForge, **forge_keys) -> str:
    keys = {"kind": forge.kind.value, "url": forge.url, "token_file": "forge.token"}
    if forge.kind == "github":
        keys["api_url"] = forge.url
    keys.update(forge_keys)
    (tmp_path / "forge.token").write_text(forge.token + "\n")
    (tmp_path / "forge.token").chmod(0o600)
    lines = ["state_dir: state", "forges:", "  home:"]
    lines += [f"    {k}: {v}" for k, v in keys.items()]
    lines += ["repos:", "  - {name: app, path: /srv/git/app.git, forge: home, forge_repo: team/app}"]  # fmt: skip
    path = tmp_path / "ciwatch.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _cli(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env or {}, catch_exceptions=False)


def test_forge_check_command(tmp_path, forge):
    config = _config(tmp_path, forge)
    result = _cli("forge", "check", "home", "-c", config)
    assert result.exit_code == 0, result.output
    assert f"API at {forge.url}" in result.output
    assert "ok: may post commit statuses to team/app" in result.output
    assert forge.token not in result.output

    forge.repos["team/app"] = 10 if forge.kind == "gitlab" else False
    result = _cli("forge", "check", "home", "-c", config, "--json")
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["ok"] is False and doc["forge"] == "home"
    assert any(line.startswith("missing:") for line in doc["repos"]["team/app"])


def test_forge_check_reads_a_systemd_credential(tmp_path):
    with FakeForge("gitea") as forge:
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "gitea-token").write_text(forge.token)
        config = _config(tmp_path, forge, token_file="null", token_credential="gitea-token")
        result = _cli("forge", "check", "home", "-c", config, env={"CREDENTIALS_DIRECTORY": str(creds)})  # fmt: skip
        assert result.exit_code == 0, result.output
        result = _cli("forge", "check", "home", "-c", config, "--repo", "team/nope")
        assert result.exit_code == 2 and "$CREDENTIALS_DIRECTORY is not set" in result.output


def test_forge_check_usage_and_file_problems(tmp_path):
    with FakeForge("gitlab") as forge:
        config = _config(tmp_path, forge)
        result = _cli("forge", "check", "nope", "-c", config)
        assert result.exit_code == 2 and "forges: home" in result.output
        (tmp_path / "forge.token").chmod(0o644)
        result = _cli("forge", "check", "home", "-c", config)
        assert result.exit_code == 0 and "readable by others" in result.output
        (tmp_path / "forge.token").unlink()
        result = _cli("forge", "check", "home", "-c", config)
        assert result.exit_code == 2 and "forges.home.token_file: cannot read" in result.output


def test_forge_hook_url_prints_the_endpoint_and_settings(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "public_url: https://ci.example.org\n"
        "forges: {home: {kind: gitlab, url: https://gitlab.example.org}}\n"
        "repos: [{name: app, url: https://gitlab.example.org/team/app.git, forge: home,"
        " forge_repo: team/app}]\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "ciwatch", "forge", "hook-url", "home", "-c", str(cfg)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "https://ci.example.org/hooks/home"
    assert "Merge request events" in out.stdout and "team/app" in out.stdout
    assert "no webhook secret" in out.stdout
