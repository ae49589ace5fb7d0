"""Contract tests: every status request ciwatch builds is one the forge's own
request schema accepts, within the forge's documented limits; every kind of
answer a forge gives is classified the way the outbox needs."""

from __future__ import annotations

import email.utils
import json
import unicodedata
from urllib.parse import unquote, urlsplit

import jsonschema
import pytest
from specpath import find_specs

from ciwatch.forges.answers import classify
from ciwatch.forges.status import (
    ForgeRequestError,
    api_base,
    auth_headers,
    build_request,
    clean_text,
    state_for,
    truncate,
)
from ciwatch.forges.types import ForgeKind, StatusState, StatusUpdate, Verdict

SPECS = find_specs()

SHA = "4f1e7c0d9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"
KINDS = list(ForgeKind)
STATES = list(StatusState)
HOSTILE = [
    'zzz";echo${IFS}"hello";#',
    "<script>alert(1)</script>",
    "feature/\x1b[31mred\x1b[0m\x1b]8;;http://evil\x07link\x1b]8;;\x07",
    "line one\nline two\r\nline three\tend",
    "nul\x00 bell\x07 del\x7f c1\x85",
    "bidi \u202egnp.exe\u202c",
    "bytes \udcff\udcfe from a ref",
    "e\u0301" * 300,  # combining marks: a cut must not orphan them
]


def update(kind=ForgeKind.GITHUB, state=StatusState.SUCCESS, **kw) -> StatusUpdate:
    base = dict(
        forge="home",
        forge_repo="team/app",
        sha=SHA,
        context="ciwatch/.ciwatch.yml",
        state=state,
        description="2 of 3 steps passed",
        target_url="https://ci.example.org/runs/17",
        extra=(("ref", "refs/heads/main"), ("pipeline_id", "42")),
    )
    base.update(kw)
    return StatusUpdate(**base)


def _load(rel: str) -> dict:
    return json.loads((SPECS / rel).read_text())


def _swagger_validator(rel: str) -> jsonschema.Draft4Validator:
    swagger = _load(rel)
    schema = {"$ref": "#/definitions/CreateStatusOption", "definitions": swagger["definitions"]}
    return jsonschema.Draft4Validator(schema)


def _openapi_github() -> dict:
    doc = _load("github/create-commit-status.openapi.json")
    op = doc["paths"]["/repos/{owner}/{repo}/statuses/{sha}"]["post"]
    schema = dict(op["requestBody"]["content"]["application/json"]["schema"])
    props = {}
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        if prop.pop("nullable", False):  # OpenAPI 3.0 nullable -> JSON Schema
            prop["type"] = [prop["type"], "null"]
        props[name] = prop
    return {**schema, "properties": props}


VALIDATORS = {
    ForgeKind.GITHUB: [
        jsonschema.Draft7Validator(_load("github/create-commit-status.request.schema.json")),
        jsonschema.Draft7Validator(_openapi_github()),
    ],
    ForgeKind.GITEA: [_swagger_validator("gitea/create-commit-status.swagger.json")],
    ForgeKind.FORGEJO: [_swagger_validator("forgejo/create-commit-status.swagger.json")],
    ForgeKind.GITLAB: [
        jsonschema.Draft7Validator(_load("gitlab/create-commit-status.request.schema.json"))
    ],
}
# Gitea/Forgejo's swagger leaves CommitStatusState open; the states come from
# modules/structs/commit_status.go (specs/README.md §1.2).
GITEA_STATES = {"pending", "success", "error", "failure", "warning"}
LIMITS = {"description": {ForgeKind.GITHUB: 140, ForgeKind.GITLAB: 255}}


def _properties(kind: ForgeKind) -> set[str]:
    schema = VALIDATORS[kind][0].schema
    if "$ref" in schema:
        schema = schema["definitions"]["CreateStatusOption"]
    return set(schema["properties"])


def assert_valid(kind: ForgeKind, body: dict) -> None:
    for validator in VALIDATORS[kind]:
        errors = [e.message for e in validator.iter_errors(body)]
        assert not errors, (kind, body, errors)
    assert set(body) <= _properties(kind), f"fields the forge does not know: {body}"
    if kind in (ForgeKind.GITEA, ForgeKind.FORGEJO):
        assert body["state"] in GITEA_STATES
    desc = body.get("description", "")
    assert len(desc) <= {ForgeKind.GITHUB: 140}.get(kind, 255)
    if kind is ForgeKind.GITLAB:
        for key in ("ref", "target_url", "description"):
            assert len(body.get(key, "")) <= 255
    if "target_url" in body:
        parts = urlsplit(body["target_url"])
        assert parts.scheme in ("http", "https") and parts.hostname


# --- requests --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("state", STATES)
def test_every_request_matches_the_forge_schema(kind, state):
    req = build_request(kind, "https://forge.example.org", update(kind, state))
    assert req.method == "POST"
    assert_valid(kind, dict(req.json))
    assert "Authorization" not in req.headers and "PRIVATE-TOKEN" not in req.headers


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        (ForgeKind.GITHUB, f"/repos/team/app/statuses/{SHA}"),
        (ForgeKind.GITEA, f"/api/v1/repos/team/app/statuses/{SHA}"),
        (ForgeKind.FORGEJO, f"/api/v1/repos/team/app/statuses/{SHA}"),
        (ForgeKind.GITLAB, f"/api/v4/projects/team%2Fapp/statuses/{SHA}"),
    ],
)
def test_endpoint_per_forge(kind, path):
    req = build_request(kind, "https://forge.example.org/", update(kind))
    assert req.url == "https://forge.example.org" + path


def test_gitea_endpoint_is_the_swagger_path():
    for rel in ("gitea/create-commit-status.swagger.json", "forgejo/create-commit-status.swagger.json"):  # fmt: skip
        swagger = _load(rel)
        assert swagger["basePath"] == "/api/v1"
        assert "post" in swagger["paths"]["/repos/{owner}/{repo}/statuses/{sha}"]


STATE_TABLE = {
    ForgeKind.GITHUB: "pending pending success success failure error error",
    ForgeKind.GITEA: "pending pending success warning failure error error",
    ForgeKind.FORGEJO: "pending pending success warning failure error error",
    ForgeKind.GITLAB: "pending running success success failed failed canceled",
}


@pytest.mark.parametrize("kind", KINDS)
def test_state_mapping(kind):
    order = [StatusState(s) for s in "pending running success warning failure error canceled".split()]  # fmt: skip
    assert [state_for(kind, s) for s in order] == STATE_TABLE[kind].split()


@pytest.mark.parametrize("kind", [ForgeKind.GITHUB, ForgeKind.GITEA, ForgeKind.FORGEJO])
def test_canceled_says_canceled_where_the_forge_has_no_such_state(kind):
    body = build_request(kind, "https://f", update(kind, StatusState.CANCELED)).json
    assert body["state"] == "error"
    assert body["description"].startswith("canceled")
    empty = build_request(kind, "https://f", update(kind, StatusState.CANCELED, description=""))
    assert empty.json["description"] == "canceled"
    said = update(kind, StatusState.CANCELED, description="Canceled by alice")
    assert build_request(kind, "https://f", said).json["description"] == "Canceled by alice"


def test_gitlab_fields():
    body = build_request(ForgeKind.GITLAB, "https://gl", update(ForgeKind.GITLAB)).json
    assert body["name"] == "ciwatch/.ciwatch.yml" and "context" not in body
    assert body["ref"] == "main" and body["pipeline_id"] == 42
    numeric = build_request(ForgeKind.GITLAB, "https://gl", update(forge_repo="1234", extra=()))
    assert numeric.url.endswith(f"/api/v4/projects/1234/statuses/{SHA}")
    assert "ref" not in numeric.json and "pipeline_id" not in numeric.json
    nested = build_request(ForgeKind.GITLAB, "https://gl", update(forge_repo="g/sub/p"))
    assert "/projects/g%2Fsub%2Fp/" in nested.url
    tag = update(extra=(("ref", "refs/tags/v1.0"), ("pipeline_id", "x")))
    body = build_request(ForgeKind.GITLAB, "https://gl", tag).json
    assert body["ref"] == "v1.0" and "pipeline_id" not in body
    long_ref = update(extra=(("ref", "refs/heads/" + "b" * 300),))
    assert "ref" not in build_request(ForgeKind.GITLAB, "https://gl", long_ref).json


@pytest.mark.parametrize("kind", KINDS)
def test_long_descriptions_are_cut_to_the_forge_limit(kind):
    body = build_request(kind, "https://f", update(kind, description="x" * 500)).json
    limit = 140 if kind is ForgeKind.GITHUB else 255
    assert len(body["description"]) == limit
    assert body["description"].endswith("…") and body["description"][:-1] == "x" * (limit - 1)
    assert_valid(kind, dict(body))
    short = build_request(kind, "https://f", update(kind, description="y" * limit)).json
    assert short["description"] == "y" * limit  # exactly at the limit: untouched


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_stays_one_line_of_plain_text(kind, text):
    upd = update(kind, description=f"push to {text} failed", context=f"ciwatch/{text}")
    body = build_request(kind, "https://f", upd).json
    assert_valid(kind, dict(body))
    for field in ("description", body.get("name") and "name" or "context"):
        value = body[field]
        assert all(unicodedata.category(c) not in ("Cc", "Cs") for c in value), value
        assert "\u202e" not in value and "[31m" not in value
        assert not unicodedata.combining(value[0])
        value.encode("utf-8")  # no lone surrogates: the forge gets valid UTF-8
    assert len(body["description"]) <= (140 if kind is ForgeKind.GITHUB else 255)
    if "<script>" in text:
        assert "<script>alert(1)</script>" in body["description"]  # text, not markup
    json.dumps(body, ensure_ascii=False).encode("utf-8")


def test_clean_text_and_truncate():
    assert clean_text("a\nb\r\n\tc  d\x1b[1;32mE\x1b[0m") == "a b c dE"
    assert clean_text("x\udcffy") == "x\ufffdy"
    assert truncate("abcdef", 4) == "abc…"
    assert truncate("ab", 4) == "ab"
    assert truncate("ab" + "e\u0301" * 5, 5) == "abe\u0301…"  # the accent stays with its e


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "file:///etc/passwd",
        "data:text/html,<b>x</b>",
        "ftp://ci.example.org/x",
        "//ci.example.org/x",
        "https://ci.example.org/runs/1\nSet-Cookie: x",
        "https://ci.example.org/a b",
        "https://",
    ],
)
def test_only_http_links_are_sent(kind, url):
    body = build_request(kind, "https://f", update(kind, target_url=url)).json
    assert "target_url" not in body


def test_links_too_long_for_gitlab_are_dropped_not_cut():
    url = "https://ci.example.org/" + "r" * 300
    assert "target_url" not in build_request(ForgeKind.GITLAB, "https://gl", update(target_url=url)).json  # fmt: skip
    assert build_request(ForgeKind.GITHUB, "https://gh", update(target_url=url)).json["target_url"] == url  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "repo"),
    [
        (ForgeKind.GITHUB, "../../admin"),
        (ForgeKind.GITHUB, "team/app/extra"),
        (ForgeKind.GITEA, "team"),
        (ForgeKind.FORGEJO, "team/a pp"),
        (ForgeKind.GITLAB, "group/../secret"),
        (ForgeKind.GITLAB, "group/p?x=1"),
    ],
)
def test_bad_repository_names_are_refused(kind, repo):
    with pytest.raises(ForgeRequestError):
        build_request(kind, "https://f", update(kind, forge_repo=repo))


@pytest.mark.parametrize("sha", ["", "main", "../x", "a" * 41 + "/", "g" * 40])
def test_bad_shas_are_refused(sha):
    with pytest.raises(ForgeRequestError):
        build_request(ForgeKind.GITHUB, "https://f", update(sha=sha))


def test_path_segments_are_encoded_not_interpreted():
    url = build_request(ForgeKind.GITEA, "https://f", update(forge_repo="te.am/a-p_p")).url
    assert unquote(urlsplit(url).path) == f"/api/v1/repos/te.am/a-p_p/statuses/{SHA}"


@pytest.mark.parametrize(
    ("kind", "url", "api", "expected"),
    [
        ("github", "https://github.com", None, "https://api.github.com"),
        ("github", "https://github.com/", None, "https://api.github.com"),
        ("github", "https://ghe.corp", None, "https://ghe.corp/api/v3"),
        (
            "github",
            "https://ghe.corp",
            "https://ghe-api.corp/api/v3/",
            "https://ghe-api.corp/api/v3",
        ),  # fmt: skip
        ("gitea", "https://git.example.org/", None, "https://git.example.org"),
        ("forgejo", "https://codeberg.org", "https://codeberg.org/api/v1", "https://codeberg.org"),
        ("gitlab", "https://gitlab.com", None, "https://gitlab.com"),
        ("gitlab", "https://gl.corp/sub", "https://gl.corp/sub/api/v4", "https://gl.corp/sub"),
    ],
)
def test_api_base(kind, url, api, expected):
    assert api_base(kind, url, api) == expected


@pytest.mark.parametrize("url", ["file:///srv/forge", "gopher://x", "git.example.org", ""])
def test_api_base_must_be_http(url):
    with pytest.raises(ForgeRequestError):
        api_base("gitea", url)


def test_auth_headers():
    assert auth_headers("github", "T1") == {"Authorization": "Bearer T1"}
    assert auth_headers("gitea", "T2\n") == {"Authorization": "token T2"}
    assert auth_headers("forgejo", "T3") == {"Authorization": "token T3"}
    assert auth_headers("gitlab", "T4") == {"PRIVATE-TOKEN": "T4"}
    for bad in ("", "two words", "abc\r\nX-Evil: 1"):
        with pytest.raises(ForgeRequestError) as exc:
            auth_headers("github", bad)
        assert "abc" not in str(exc.value)


# --- answers ---------------------------------------------------------------------------

NOW = 1_800_000_000.0


def body(message: str, errors: list[str] | None = None) -> bytes:
    doc: dict = {"message": message}
    if errors:
        doc["errors"] = [{"resource": "Status", "code": "custom", "message": m} for m in errors]
    return json.dumps(doc).encode()


TOO_MANY = body("Validation Failed", ["This SHA and context has reached the maximum number of statuses."])  # fmt: skip
HTTP_DATE = email.utils.formatdate(NOW + 90, usegmt=True)

CASES = [
    # kind, status, headers, body, verdict, retry_after (None: not given), message part
    ("github", 201, {}, b"{}", Verdict.DELIVERED, None, ""),
    ("gitea", 201, {}, b'{"status": "success"}', Verdict.DELIVERED, None, ""),
    ("gitlab", 200, {}, b"{}", Verdict.DELIVERED, None, ""),
    (
        "gitlab",
        400,
        {},
        body("Cannot transition status via :run from :running"),
        Verdict.APPLIED,
        None,
        "already",
    ),  # fmt: skip
    (
        "gitlab",
        400,
        {},
        body(
            'Cannot transition status via :enqueue from :pending (Reason(s): Status cannot transition via "enqueue")'
        ),
        Verdict.APPLIED,
        None,
        "",
    ),  # fmt: skip
    (
        "gitlab",
        400,
        {},
        body("400 Bad request - name has already been taken"),
        Verdict.DROP,
        None,
        "name has already been taken",
    ),  # fmt: skip
    ("github", 500, {}, b"", Verdict.RETRY, None, "500"),
    ("github", 502, {}, b"<html>Bad Gateway</html>", Verdict.RETRY, None, "502"),
    ("gitlab", 503, {"Retry-After": "30"}, b"", Verdict.RETRY, 30.0, "503"),
    ("github", None, {}, b"", Verdict.RETRY, None, "no answer"),
    ("github", 429, {"retry-after": "7"}, b"", Verdict.RETRY, 7.0, "rate limited"),
    ("github", 403, {"Retry-After": "7"}, body("secondary rate limit"), Verdict.RETRY, 7.0, ""),
    ("github", 429, {"Retry-After": HTTP_DATE}, b"", Verdict.RETRY, 90.0, ""),
    (
        "github",
        403,
        {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW + 120))},
        body("API rate limit exceeded"),
        Verdict.RETRY,
        120.0,
        "rate limit",
    ),  # fmt: skip
    (
        "gitlab",
        429,
        {"RateLimit-Remaining": "0", "RateLimit-Reset": str(int(NOW + 45))},
        body("Retry later"),
        Verdict.RETRY,
        45.0,
        "",
    ),  # fmt: skip
    (
        "github",
        403,
        {"X-RateLimit-Remaining": "4000"},
        body("You have exceeded a secondary rate limit."),
        Verdict.RETRY,
        60.0,
        "secondary rate limit",
    ),  # fmt: skip
    ("gitlab", 429, {}, body("Retry later"), Verdict.RETRY, 60.0, ""),
    ("github", 429, {"Retry-After": "999999999"}, b"", Verdict.RETRY, 3600.0, ""),
    (
        "github",
        403,
        {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW - 5))},
        b"",
        Verdict.RETRY,
        1.0,
        "",
    ),  # fmt: skip
    ("github", 401, {}, body("Bad credentials"), Verdict.AUTH, None, "Bad credentials"),
    ("gitea", 401, {}, body("token is required"), Verdict.AUTH, None, "401"),
    (
        "github",
        403,
        {"X-RateLimit-Remaining": "4999"},
        body("Resource not accessible by integration"),
        Verdict.AUTH,
        None,
        "403",
    ),  # fmt: skip
    ("gitlab", 403, {}, body("403 Forbidden"), Verdict.AUTH, None, "403"),
    ("github", 404, {}, body("Not Found"), Verdict.DROP, None, "404"),
    (
        "gitlab",
        404,
        {},
        body("404 References for commit Not Found"),
        Verdict.DROP,
        None,
        "References",
    ),  # fmt: skip
    (
        "github",
        422,
        {},
        body("Validation Failed", [f"No commit found for SHA: {SHA}"]),
        Verdict.DROP,
        None,
        "unknown commit",
    ),  # fmt: skip
    ("github", 422, {}, TOO_MANY, Verdict.DROP, None, "1000"),
    (
        "github",
        422,
        {},
        body("Validation Failed", ["description is too long (maximum is 140 characters)"]),
        Verdict.DROP,
        None,
        "too long",
    ),  # fmt: skip
    (
        "gitea",
        500,
        {},
        body(f"GetCommit[{SHA}]: object does not exist [id: {SHA}, rel_path: ]"),
        Verdict.DROP,
        None,
        "unknown commit",
    ),  # fmt: skip
    ("forgejo", 500, {}, body(""), Verdict.RETRY, None, "unknown commit"),
    ("gitea", 502, {}, b"", Verdict.RETRY, None, "502"),
    ("github", 302, {"Location": "https://elsewhere/"}, b"", Verdict.RETRY, None, "redirect"),
    ("github", 307, {"Location": "https://elsewhere/"}, b"", Verdict.RETRY, None, "redirect"),
]


@pytest.mark.parametrize(("kind", "status", "headers", "raw", "verdict", "after", "said"), CASES)
def test_classify(kind, status, headers, raw, verdict, after, said):
    d = classify(kind, status, headers, raw, NOW)
    assert d.verdict is verdict, d
    assert d.http_status == status
    if after is None:
        assert d.retry_after is None
    else:
        assert d.retry_after == pytest.approx(after, abs=1.0)
    assert said in d.message
    assert "\n" not in d.message


def test_classify_messages_are_short_plain_text():
    raw = json.dumps({"message": "x\x1b[31m" + "y" * 5000 + "\nline"}).encode()
    d = classify("gitea", 418, {}, raw, NOW)
    assert d.verdict is Verdict.DROP
    assert len(d.message) < 300 and "\x1b" not in d.message and "\n" not in d.message
    assert classify("github", 404, {}, b"\xff\xfe not json", NOW).verdict is Verdict.DROP
