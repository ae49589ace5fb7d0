"""A fake forge for tests: a real HTTP server on loopback, in a thread.

    from fakeforge import FakeForge, replies

    with FakeForge("gitea") as forge:
        forge.script(replies.server_error(), replies.rate_limited(7))
        client = ForgeClient("gitea", forge.api_base, forge.token)
        ...
        forge.requests  # every request, in order: method, path, headers, body

Without a scripted reply it behaves like the forge for the status API and the
reads `ciwatch forge check` makes: token checked per forge (else 401), unknown
repository 404, unknown sha per forge (GitHub 422, Gitea/Forgejo 500 and a
404 on git/commits, GitLab 404), GitHub's 140-character and GitLab's
255-character limits, GitLab's pending/running state machine (400). A
scripted reply answers the next request it matches (by default the next POST).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from ciwatch.forges.types import ForgeKind


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str  # as sent, still percent-encoded; no query
    query: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def json(self):
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True)
class Reply:
    status: int
    body: object = None  # dict/list: JSON; str/bytes: as is
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # wait this long before answering (cut short by stop())
    drip: float = 0.0  # send the body a byte at a time, this long apart
    match: str = "POST"  # answer the next request starting "METHOD /path"; "" any


class replies:  # noqa: N801 - a namespace of canned answers
    @staticmethod
    def created(body=None) -> Reply:
        return Reply(201, body or {"id": 1})

    @staticmethod
    def server_error(status: int = 500) -> Reply:
        return Reply(status, "<html>Bad Gateway</html>" if status == 502 else {"message": ""})

    @staticmethod
    def rate_limited(retry_after: float = 7, status: int = 429) -> Reply:
        return Reply(status, {"message": "slow down"}, {"Retry-After": f"{retry_after:g}"})

    @staticmethod
    def primary_limit(reset: float) -> Reply:
        return Reply(
            403,
            {"message": "API rate limit exceeded for user ID 1."},
            {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(reset))},
        )

    @staticmethod
    def secondary_limit() -> Reply:
        return Reply(
            403,
            {"message": "You have exceeded a secondary rate limit. Please wait a few minutes."},
            {"X-RateLimit-Remaining": "4000"},
        )

    @staticmethod
    def gitlab_transition() -> Reply:
        return Reply(400, {"message": "Cannot transition status via :run from :running"})

    @staticmethod
    def too_many_statuses() -> Reply:
        msg = "This SHA and context has reached the maximum number of statuses."
        return Reply(422, _validation(msg))

    @staticmethod
    def description_too_long() -> Reply:
        return Reply(422, _validation("description is too long (maximum is 140 characters)"))

    @staticmethod
    def unknown_sha(kind: str, sha: str = "0" * 40) -> Reply:
        kind = ForgeKind(kind)
        if kind is ForgeKind.GITHUB:
            return Reply(422, _validation(f"No commit found for SHA: {sha}"))
        if kind is ForgeKind.GITLAB:
            return Reply(404, {"message": "404 Commit Not Found"})
        return Reply(500, {"message": "", "url": "/api/swagger"})  # Gitea hides the reason

    @staticmethod
    def gitea_unknown_sha_admin(sha: str = "0" * 40) -> Reply:
        """What an admin's token (or a dev-mode Gitea) is told for an unknown sha."""
        msg = f"GetCommit[{sha}]: object does not exist [id: {sha}, rel_path: ]"
        return Reply(500, {"message": msg, "url": "/api/swagger"})

    @staticmethod
    def unauthorized() -> Reply:
        return Reply(401, {"message": "Bad credentials"})

    @staticmethod
    def forbidden() -> Reply:
        return Reply(403, {"message": "Resource not accessible by integration"})

    @staticmethod
    def not_found() -> Reply:
        return Reply(404, {"message": "Not Found"})

    @staticmethod
    def hang(seconds: float) -> Reply:
        return Reply(201, {"id": 1}, delay=seconds)

    @staticmethod
    def redirect(location: str, status: int = 302) -> Reply:
        return Reply(status, "", {"Location": location})


def _validation(message: str) -> dict:
    return {
        "message": "Validation Failed",
        "errors": [{"resource": "Status", "code": "custom", "message": message}],
    }


_POST = re.compile(r"^/(?:api/v[14]/)?(?:repos/(?P<repo>[^/]+/[^/]+)|projects/(?P<proj>[^/]+))/statuses/(?P<sha>[^/]+)$")  # fmt: skip
_REPO = re.compile(r"^/(?:api/v1/)?repos/(?P<repo>[^/]+/[^/]+)$|^/api/v4/projects/(?P<proj>[^/]+)$")  # fmt: skip
_COMMIT = re.compile(r"^/api/v1/repos/(?P<repo>[^/]+/[^/]+)/git/commits/(?P<sha>[^/]+)$")


class FakeForge:
    """One forge of `kind` on 127.0.0.1 (or another loopback `host`)."""

    def __init__(self, kind: str, token: str = "tok-3f9a1c-secret", host: str = "127.0.0.1"):
        self.kind = ForgeKind(kind)
        self.token = token
        self.host = host
        self.requests: list[Recorded] = []
        self.queue: list[Reply] = []
        self.repos: dict[str, object] = {"team/app": 30 if self.kind == "gitlab" else True}
        self.known_shas: set[str] | None = None  # None: every sha exists
        self.user = "ci-bot"
        self.github_scopes: str | None = "repo:status"  # X-OAuth-Scopes; None: fine-grained
        self.gitlab_scopes = ["api"]
        self.statuses: list[tuple[str, str, dict]] = []  # accepted: (repo, sha, body)
        self._gitlab_state: dict[tuple, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> FakeForge:
        forge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                forge._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = _any  # noqa: N815

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        self._stop.set()  # ends hangs
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeForge:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    api_base = url  # the fake serves the API at its root, like api.github.com

    def script(self, *items: Reply) -> None:
        with self._lock:
            self.queue.extend(items)

    def posts(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST"]

    # --- answering --------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        size = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(size) if size else b""
        parts = urlsplit(h.path)
        rec = Recorded(h.command, parts.path, parts.query, {k.lower(): v for k, v in h.headers.items()}, body)  # fmt: skip
        with self._lock:
            self.requests.append(rec)
            reply = self._scripted(rec)
        reply = reply or self._behave(rec)
        if reply.delay and self._stop.wait(reply.delay):
            return
        self._send(h, reply)

    def _scripted(self, rec: Recorded) -> Reply | None:
        for i, reply in enumerate(self.queue):
            if f"{rec.method} {rec.path}".startswith(reply.match):
                return self.queue.pop(i)
        return None

    def _send(self, h: BaseHTTPRequestHandler, reply: Reply) -> None:
        body = reply.body
        if isinstance(body, dict | list):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        body = body or b""
        try:
            h.send_response(reply.status)
            for name, value in reply.headers.items():
                h.send_header(name, value)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if reply.drip:
                for i in range(len(body)):
                    if self._stop.wait(reply.drip):
                        return
                    h.wfile.write(body[i : i + 1])
                    h.wfile.flush()
            else:
                h.wfile.write(body)
        except OSError:
            pass  # the client gave up (timeouts are what some tests are about)

    def _authorized(self, rec: Recorded) -> bool:
        if self.kind is ForgeKind.GITLAB:
            return rec.headers.get("private-token") == self.token
        scheme = "Bearer" if self.kind is ForgeKind.GITHUB else "token"
        return rec.headers.get("authorization") == f"{scheme} {self.token}"

    def _behave(self, rec: Recorded) -> Reply:
        if not self._authorized(rec):
            return replies.unauthorized()
        if rec.method == "GET":
            return self._read(rec)
        m = _POST.match(rec.path)
        if rec.method != "POST" or not m:
            return replies.not_found()
        repo = unquote(m["repo"] or m["proj"])
        sha = m["sha"]
        if repo not in self.repos:
            return replies.not_found()
        if self.known_shas is not None and sha not in self.known_shas:
            return replies.unknown_sha(self.kind, sha)
        doc = rec.json or {}
        problem = self._invalid(repo, sha, doc)
        if problem:
            return problem
        with self._lock:
            self.statuses.append((repo, sha, doc))
        answer = {"id": len(self.statuses), "context": doc.get("context") or doc.get("name")}
        state = "status" if self.kind in (ForgeKind.GITEA, ForgeKind.FORGEJO) else "state"
        answer[state] = doc.get("state")
        return Reply(201, answer)

    def _invalid(self, repo: str, sha: str, doc: dict) -> Reply | None:
        desc = doc.get("description") or ""
        if self.kind is ForgeKind.GITHUB and len(desc) > 140:
            return replies.description_too_long()
        if self.kind is not ForgeKind.GITLAB:
            return None
        for key in ("description", "target_url", "ref"):
            if len(doc.get(key) or "") > 255:
                return Reply(400, {"message": {key: ["is too long (maximum is 255 characters)"]}})
        key = (repo, sha, doc.get("name") or doc.get("context"), doc.get("ref"))
        state, before = doc.get("state"), self._gitlab_state.get(key)
        if state in ("pending", "running") and before == state:
            verb = "enqueue" if state == "pending" else "run"
            return Reply(400, {"message": f"Cannot transition status via :{verb} from :{before}"})
        if state == "pending" and before == "running":
            return Reply(400, {"message": "Cannot transition status via :enqueue from :running"})
        self._gitlab_state[key] = state
        return None

    def _read(self, rec: Recorded) -> Reply:
        path = rec.path
        if path in ("/user", "/api/v1/user", "/api/v4/user"):
            headers = {}
            if self.kind is ForgeKind.GITHUB and self.github_scopes is not None:
                headers["X-OAuth-Scopes"] = self.github_scopes
            return Reply(200, {"login": self.user, "username": self.user, "id": 7}, headers)
        if path == "/api/v4/personal_access_tokens/self" and self.kind is ForgeKind.GITLAB:
            return Reply(200, {"name": "ci", "scopes": self.gitlab_scopes, "active": True})
        m = _COMMIT.match(path)
        if m:
            if self.known_shas is None or m["sha"] in self.known_shas:
                return Reply(200, {"sha": m["sha"]})
            return Reply(404, {"message": "sha not found", "url": "/api/swagger"})
        m = _REPO.match(path)
        repo = unquote(m["repo"] or m["proj"]) if m else None
        if repo not in self.repos:
            return replies.not_found()
        perm = self.repos[repo]
        if self.kind is ForgeKind.GITLAB:
            access = {"access_level": perm, "notification_level": 3} if perm else None
            doc = {"path_with_namespace": repo, "permissions": {"project_access": access, "group_access": None}}  # fmt: skip
        else:
            doc = {"full_name": repo, "permissions": {"admin": False, "push": perm, "pull": True}}
        return Reply(200, doc)
