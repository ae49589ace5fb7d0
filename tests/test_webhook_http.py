"""The webhook endpoint over real HTTP: uvicorn on 127.0.0.1, a real SQLite store,
`requests` and raw sockets as clients."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import threading
import time
import uuid

import pytest
import requests
from specpath import find_specs

from ciwatch.forges.types import ForgeKind
from ciwatch.model import EventKind
from ciwatch.store import Store
from ciwatch.web.hooks import HookForge, StoreDeliveries, hooks_router
from ciwatch.web.server import WebServer, WebServerError, create_app

SPECS = find_specs()
GH_SECRET = b"gh-secret-value"
GT_SECRET = b"gt-secret-value"
FJ_SECRET = b"fj-secret-value"
GL_TOKEN = b"gl-token-value"
ALL_SECRETS = (GH_SECRET, GT_SECRET, FJ_SECRET, GL_TOKEN)
BODY_TIMEOUT = 0.5


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(
            r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "") for r in self.records
        )


class Intake:
    """`submit` over the real store, with a switch to make storage fail."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.events = []
        self.fail: Exception | None = None

    def submit(self, event):
        if self.fail is not None:
            raise self.fail
        result = self.store.submit(event)
        self.events.append(event)
        return result


class FlakyDeliveries(StoreDeliveries):
    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.fail = False

    def seen(self, forge: str, delivery: str) -> bool:
        if self.fail:
            raise OSError("disk I/O error")
        return super().seen(forge, delivery)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    store = Store.open(tmp_path_factory.mktemp("state") / "ciwatch.db", clock=time.time)
    store.ensure_repo("app", "/srv/git/app.git")
    intake = Intake(store)
    deliveries = FlakyDeliveries(store)
    log = logging.getLogger("test.webhook.http")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    recorder = Recorder()
    log.addHandler(recorder)
    forges = {
        "gh": HookForge(ForgeKind.GITHUB, GH_SECRET, (), {"Codertocat/Hello-World": "app"}),
        "gt": HookForge(ForgeKind.GITEA, GT_SECRET, (), {"Test-CI/multi-line-secrets": "app"}),
        "fj": HookForge(ForgeKind.FORGEJO, FJ_SECRET, (), {"Test-CI/multi-line-secrets": "app"}),
        "gl": HookForge(
            ForgeKind.GITLAB, GL_TOKEN, (), {"test/woodpecker": "app", "32059612": "app"}
        ),
        "open": HookForge(ForgeKind.GITHUB, None, (), {"Codertocat/Hello-World": "app"}),
    }
    router = hooks_router(forges, intake.submit, deliveries, body_timeout=BODY_TIMEOUT, log=log)
    server = WebServer(create_app(router), "127.0.0.1", 0, log)
    server.start()
    yield server, intake, deliveries, recorder, store
    server.stop()
    store.close()


@pytest.fixture
def server(env):
    server, intake, deliveries, recorder, store = env
    intake.fail = None
    deliveries.fail = False
    intake.events.clear()
    recorder.records.clear()
    yield env
    # Whatever the test did, the server still answers and still takes events,
    # and no secret reached the log.
    assert requests.get(server.url + "/healthz", timeout=2).json()["status"] == "ok"
    intake.fail = None
    deliveries.fail = False
    before = len(intake.events)
    r = post(server, "gh", *github_push(sha=uuid.uuid4().hex[:8] * 5))
    assert r.status_code == 202 and len(intake.events) == before + 1
    for secret in ALL_SECRETS:
        assert secret.decode() not in recorder.text()


def sig(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def github_push(sha: str | None = None, delivery: str | None = None, secret: bytes = GH_SECRET):
    data = json.loads((SPECS / "github/push.new-branch.payload.json").read_text())
    if sha:
        data["after"] = sha
    body = json.dumps(data).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + sig(secret, body),
    }
    return body, headers


def post(server, forge: str, body: bytes, headers: dict) -> requests.Response:
    return requests.post(f"{server.url}/hooks/{forge}", data=body, headers=headers, timeout=5)


def test_a_signed_push_is_stored_and_answered_at_once(server) -> None:
    srv, intake, _, _, store = server
    body, headers = github_push(sha="a" * 40)
    started = time.monotonic()
    r = post(srv, "gh", body, headers)
    elapsed = time.monotonic() - started
    assert r.status_code == 202 and r.json() == {"queued": 1}
    assert elapsed < 1.0
    (event,) = intake.events
    assert (event.repo, event.kind, event.ref, event.sha, event.source) == (
        "app",
        EventKind.PUSH,
        "refs/heads/master",
        "a" * 40,
        "webhook",
    )
    # Stored before the answer: the store has it, and its run is queued.
    ((_, stored, _),) = store.find_events("app", sha_prefix="a" * 40)
    assert stored.sha == "a" * 40
    assert store.delivery_seen("gh", headers["X-GitHub-Delivery"])


@pytest.mark.parametrize(
    "forge,name,event,header,secret",
    [
        (
            "gt",
            "gitea/push.captured.payload.json",
            {"X-Gitea-Event": "push"},
            "X-Gitea-Signature",
            GT_SECRET,
        ),
        (
            "fj",
            "forgejo/push.captured.payload.json",
            {"X-Forgejo-Event": "push"},
            "X-Forgejo-Signature",
            FJ_SECRET,
        ),
        (
            "gt",
            "gitea/pull_request.synchronized.captured.payload.json",
            {"X-Gitea-Event": "pull_request"},
            "X-Gitea-Signature",
            GT_SECRET,
        ),
    ],
)
def test_gitea_and_forgejo_deliveries(server, forge, name, event, header, secret) -> None:
    srv, intake, *_ = server
    body = (SPECS / name).read_bytes()
    r = post(
        srv,
        forge,
        body,
        {**event, header: sig(secret, body), "X-Gitea-Delivery": str(uuid.uuid4())},
    )
    assert r.status_code == 202, r.text
    assert len(intake.events) == 1


def test_gitlab_merge_request_with_its_token(server) -> None:
    srv, intake, *_ = server
    body = (SPECS / "gitlab/merge_request.update.captured.payload.json").read_bytes()
    headers = {
        "X-Gitlab-Event": "Merge Request Hook",
        "X-Gitlab-Token": GL_TOKEN.decode(),
        "Idempotency-Key": str(uuid.uuid4()),
    }
    r = post(srv, "gl", body, headers)
    assert r.status_code == 202, r.text
    (event,) = intake.events
    assert event.kind == EventKind.PULL_REQUEST and event.ref == "refs/merge-requests/3/head"


def test_a_fork_pull_request_is_stored_untrusted(server) -> None:
    srv, intake, *_ = server
    data = json.loads((SPECS / "github/pull_request.opened.payload.json").read_text())
    data["pull_request"]["head"]["repo"]["id"] = 4242
    body = json.dumps(data).encode()
    headers = {
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + sig(GH_SECRET, body),
    }
    assert post(srv, "gh", body, headers).status_code == 202
    (event,) = intake.events
    assert event.ref == "refs/pull/2/head" and event.pr_number == 2 and not event.trusted


def abuse_cases():
    body, headers = github_push()
    other_body, _ = github_push(sha="b" * 40)
    sha1 = hmac.new(GH_SECRET, body, hashlib.sha1).hexdigest()
    no_sig = {k: v for k, v in headers.items() if k != "X-Hub-Signature-256"}
    return [
        ("missing signature", "gh", body, no_sig, 401),
        ("wrong secret", "gh", body, github_push(secret=b"guess")[1], 401),
        ("signature of another body", "gh", other_body, headers, 401),
        ("sha1 signature", "gh", body, {**no_sig, "X-Hub-Signature-256": f"sha1={sha1}"}, 401),
        ("malformed hex", "gh", body, {**no_sig, "X-Hub-Signature-256": "sha256=zz"}, 401),
        (
            "gitlab wrong token",
            "gl",
            (SPECS / "gitlab/push.captured.payload.json").read_bytes(),
            {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "nope"},
            401,
        ),
        (
            "gitlab missing token",
            "gl",
            (SPECS / "gitlab/push.captured.payload.json").read_bytes(),
            {"X-Gitlab-Event": "Push Hook"},
            401,
        ),
        ("unknown forge", "nope", body, headers, 404),
    ]


@pytest.mark.parametrize("case", abuse_cases(), ids=[c[0] for c in abuse_cases()])
def test_abuse_is_refused_and_nothing_is_submitted(server, case) -> None:
    srv, intake, _, recorder, _ = server
    _, forge, body, headers, status = case
    r = post(srv, forge, body, headers)
    assert r.status_code == status
    assert intake.events == []
    if status == 401:
        assert r.json() == {"error": "invalid signature"}  # no detail for the caller
        assert "refused" in recorder.text()  # the detail is in the log


def test_only_post_is_served(server) -> None:
    srv, intake, *_ = server
    assert requests.get(f"{srv.url}/hooks/gh", timeout=2).status_code == 405
    assert intake.events == []


def raw_request(server, head: bytes, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(head + first)
    return sock


def read_status(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    line = data.split(b"\r\n", 1)[0]
    return int(line.split()[1]), data


def test_a_50_mb_body_is_refused_before_it_is_read(server) -> None:
    srv, intake, *_ = server
    body, headers = github_push()
    head = (
        b"POST /hooks/gh HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n"
        b"X-Hub-Signature-256: sha256=" + sig(GH_SECRET, body).encode() + b"\r\n"
        b"Content-Length: 52428800\r\n\r\n"
    )
    started = time.monotonic()
    with raw_request(srv, head, b"{" + b" " * 65535) as sock:
        status, response = read_status(sock)
        assert status == 413
        assert b"connection: close" in response.lower()
        # The server hangs up instead of draining the 50 MB.
        sock.settimeout(2)
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
    assert time.monotonic() - started < 2
    assert intake.events == []


def test_a_chunked_body_over_the_limit_is_cut_off(server) -> None:
    srv, intake, *_ = server
    head = b"POST /hooks/gh HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (256 * 1024, b"x" * 256 * 1024)
    answers: list[tuple[int, bytes]] = []
    with raw_request(srv, head) as sock:
        reader = threading.Thread(target=lambda: answers.append(read_status(sock)))
        reader.start()
        try:
            for _ in range(40):  # 10 MiB offered, the limit is 5 MiB
                sock.sendall(chunk)
        except OSError:
            pass  # the server hung up: expected
        reader.join(5)
    assert answers and answers[0][0] == 413
    assert intake.events == []


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_that_does_not_arrive_gets_408(server, framing) -> None:
    srv, intake, *_ = server
    frame = (
        b"Content-Length: 1000\r\n"
        if framing == "content-length"
        else b"Transfer-Encoding: chunked\r\n"
    )
    first = b'{"ref": ' if framing == "content-length" else b'8\r\n{"ref": \r\n'
    head = b"POST /hooks/gh HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n" + frame + b"\r\n"
    started = time.monotonic()
    with raw_request(srv, head, first) as sock:
        status, _ = read_status(sock)
    elapsed = time.monotonic() - started
    assert status == 408
    assert BODY_TIMEOUT * 0.9 <= elapsed < BODY_TIMEOUT + 1.5
    assert intake.events == []


def test_invalid_json_with_a_valid_signature_is_400(server) -> None:
    srv, intake, *_ = server
    body = b'{"ref": "refs/heads/main", '
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sig(GH_SECRET, body)}
    r = post(srv, "gh", body, headers)
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    assert intake.events == []


def test_a_missing_field_with_a_valid_signature_is_400(server) -> None:
    srv, intake, *_ = server
    data = json.loads((SPECS / "github/push.new-branch.payload.json").read_text())
    del data["after"]
    body = json.dumps(data).encode()
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sig(GH_SECRET, body)}
    r = post(srv, "gh", body, headers)
    assert r.status_code == 400 and r.json()["error"] == "after: missing"
    assert intake.events == []


def test_a_replayed_delivery_is_200_duplicate_and_not_submitted_again(server) -> None:
    srv, intake, *_ = server
    body, headers = github_push(sha="c" * 40)
    assert post(srv, "gh", body, headers).status_code == 202
    r = post(srv, "gh", body, headers)
    assert r.status_code == 200 and r.json() == {"duplicate": True}
    assert len(intake.events) == 1


def test_a_storage_failure_is_503_and_nothing_is_acknowledged(server) -> None:
    srv, intake, deliveries, recorder, store = server
    body, headers = github_push(sha="d" * 40)
    intake.fail = OSError("database or disk is full")
    r = post(srv, "gh", body, headers)
    assert r.status_code == 503
    assert intake.events == []
    assert not store.delivery_seen("gh", headers["X-GitHub-Delivery"])
    assert "could not be stored" in recorder.text()
    # The forge's retry of the same delivery goes through once storage is back.
    intake.fail = None
    assert post(srv, "gh", body, headers).status_code == 202
    assert len(intake.events) == 1


def test_a_failing_delivery_log_is_503_too(server) -> None:
    srv, intake, deliveries, *_ = server
    deliveries.fail = True
    r = post(srv, "gh", *github_push())
    assert r.status_code == 503 and intake.events == []


@pytest.mark.parametrize("event", ["ping", "issues", "workflow_run"])
def test_events_not_built_are_accepted_and_ignored(server, event) -> None:
    srv, intake, *_ = server
    body = b'{"zen": "Keep it logically awesome."}'
    headers = {"X-GitHub-Event": event, "X-Hub-Signature-256": "sha256=" + sig(GH_SECRET, body)}
    r = post(srv, "gh", body, headers)
    assert r.status_code == 202 and "ignored" in r.json()
    assert intake.events == []


def test_an_unconfigured_repository_is_ignored_and_logged(server) -> None:
    srv, intake, _, recorder, _ = server
    data = json.loads((SPECS / "github/push.new-branch.payload.json").read_text())
    data["repository"]["full_name"] = "someone/else"
    data["repository"]["id"] = 1
    body = json.dumps(data).encode()
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sig(GH_SECRET, body)}
    r = post(srv, "gh", body, headers)
    assert r.status_code == 202 and r.json() == {"ignored": "repository not configured"}
    assert intake.events == []
    assert "'someone/else' is not configured" in recorder.text()


def test_repository_names_match_case_insensitively_and_by_id(server) -> None:
    srv, intake, *_ = server
    data = json.loads((SPECS / "github/push.new-branch.payload.json").read_text())
    data["repository"]["full_name"] = "codertocat/hello-world"
    body = json.dumps(data).encode()
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sig(GH_SECRET, body)}
    assert post(srv, "gh", body, headers).status_code == 202
    gl = json.loads((SPECS / "gitlab/merge_request.update.captured.payload.json").read_text())
    gl["project"]["path_with_namespace"] = "renamed/project"  # configured by numeric id
    body = json.dumps(gl).encode()
    headers = {"X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Token": GL_TOKEN.decode()}
    assert post(srv, "gl", body, headers).status_code == 202
    assert len(intake.events) == 2


def test_a_deleted_branch_is_ignored(server) -> None:
    srv, intake, *_ = server
    data = json.loads((SPECS / "github/push.tag-deleted.payload.json").read_text())
    body = json.dumps(data).encode()
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sig(GH_SECRET, body)}
    r = post(srv, "gh", body, headers)
    assert r.status_code == 202 and "deleted" in r.json()["ignored"]
    assert intake.events == []


def test_a_forge_without_secret_accepts_unsigned_and_warns_once(server) -> None:
    srv, intake, _, recorder, _ = server
    for sha in ("e" * 40, "f" * 40):
        body, headers = github_push(sha=sha)
        del headers["X-Hub-Signature-256"]
        assert post(srv, "open", body, headers).status_code == 202
    assert len(intake.events) == 2
    warnings = [r for r in recorder.records if "no webhook secret" in r.getMessage()]
    assert len(warnings) == 1  # once per forge for the server's life


def test_healthz(server) -> None:
    srv, *_ = server
    r = requests.get(srv.url + "/healthz", timeout=2)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_web_server_start_stop_and_a_busy_port() -> None:
    app = create_app(health=lambda: {"queued": 3})
    first = WebServer(app, "127.0.0.1", 0)
    first.start()
    try:
        assert requests.get(first.url + "/healthz", timeout=2).json() == {
            "status": "ok",
            "queued": 3,
        }
        with pytest.raises(WebServerError, match="cannot listen"):
            WebServer(app, "127.0.0.1", first.port).start()
    finally:
        first.stop()
    assert not first.running
    with pytest.raises(requests.ConnectionError):
        requests.get(first.url + "/healthz", timeout=2)
