"""Webhook payloads to events: every real payload in the specs, deletions, actions
that are not built, trust of pull requests, and malformed bodies."""

from __future__ import annotations

import copy
import json

import pytest
from specpath import find_specs

from ciwatch.forges.payloadfields import PayloadError
from ciwatch.forges.payloads import delivery_id, load, parse, repository
from ciwatch.forges.types import ForgeKind
from ciwatch.model import EventKind

SPECS = find_specs()
GH, GT, FJ, GL = ForgeKind.GITHUB, ForgeKind.GITEA, ForgeKind.FORGEJO, ForgeKind.GITLAB
EVENT_HEADER = {
    GH: "X-GitHub-Event",
    GT: "X-Gitea-Event",
    FJ: "X-Forgejo-Event",
    GL: "X-Gitlab-Event",
}


def spec(name: str) -> dict:
    return json.loads((SPECS / name).read_text())


def run(kind: ForgeKind, event: str, data: dict | bytes, trusted_users=(), **headers):
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return parse(
        kind,
        {EVENT_HEADER[kind]: event, **headers},
        body,
        repo_name="app",
        trusted_users=trusted_users,
    )


# file, forge, event header, kind, ref, sha, before, pr number, forge repo
SPEC_FILES = [
    (
        "github/push.new-branch.payload.json",
        GH,
        "push",
        EventKind.PUSH,
        "refs/heads/master",
        "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        None,
        None,
        "Codertocat/Hello-World",
    ),
    (
        "github/pull_request.opened.payload.json",
        GH,
        "pull_request",
        EventKind.PULL_REQUEST,
        "refs/pull/2/head",
        "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
        None,
        2,
        "Codertocat/Hello-World",
    ),
    (
        "github/pull_request.synchronize.payload.json",
        GH,
        "pull_request",
        EventKind.PULL_REQUEST,
        "refs/pull/2/head",
        "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
        "f95f852bd8fca8fcc58a9a2d6c842781e32a215e",
        2,
        "Codertocat/Hello-World",
    ),
    (
        "gitea/push.captured.payload.json",
        GT,
        "push",
        EventKind.PUSH,
        "refs/heads/main",
        "29be01c073851cf0db0c6a466e396b725a670453",
        "6efcf5b7c98f3e7a491675164b7a2e7acac27941",
        None,
        "Test-CI/multi-line-secrets",
    ),
    (
        "gitea/push.docs-example.payload.json",
        GT,
        "push",
        EventKind.PUSH,
        "refs/heads/develop",
        "bffeb74224043ba2feb48d137756c8a9331c449a",
        "28e1879d029cb852e4844d9c718537df08844e03",
        None,
        "gitea/webhooks",
    ),
    (
        "gitea/push.new-branch.captured.payload.json",
        GT,
        "push",
        EventKind.PUSH,
        "refs/heads/fdsafdsa",
        "28c3613ae62640216bea5e7dc71aa65356e4298b",
        None,
        None,
        "meisam/woodpecktester",
    ),
    (
        "gitea/pull_request.synchronized.captured.payload.json",
        GT,
        "pull_request",
        EventKind.PULL_REQUEST,
        "refs/pull/2/head",
        "788ed8d02d3b7fcfcf6386dbcbca696aa1d4dc25",
        None,
        2,
        "Test-CI/multi-line-secrets",
    ),
    (
        "forgejo/push.captured.payload.json",
        FJ,
        "push",
        EventKind.PUSH,
        "refs/heads/main",
        "29be01c073851cf0db0c6a466e396b725a670453",
        "6efcf5b7c98f3e7a491675164b7a2e7acac27941",
        None,
        "Test-CI/multi-line-secrets",
    ),
    (
        "forgejo/push.docs-example.payload.json",
        FJ,
        "push",
        EventKind.PUSH,
        "refs/heads/develop",
        "bffeb74224043ba2feb48d137756c8a9331c449a",
        "28e1879d029cb852e4844d9c718537df08844e03",
        None,
        "forgejo/webhooks",
    ),
    (
        "forgejo/pull_request.synchronized.captured.payload.json",
        FJ,
        "pull_request",
        EventKind.PULL_REQUEST,
        "refs/pull/2/head",
        "788ed8d02d3b7fcfcf6386dbcbca696aa1d4dc25",
        None,
        2,
        "Test-CI/multi-line-secrets",
    ),
    (
        "gitlab/push.captured.payload.json",
        GL,
        "Push Hook",
        EventKind.PUSH,
        "refs/heads/main",
        "16862e368d8ab812e48833b741dad720d6e2cb7f",
        "ffe8eb4f91d1fe6bc49f1e610e50e4b5767f0104",
        None,
        "test/woodpecker",
    ),
    (
        "gitlab/push.docs-example.payload.json",
        GL,
        "Push Hook",
        EventKind.PUSH,
        "refs/heads/master",
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "95790bf891e76fee5e1747ab589903a6a1f80f22",
        None,
        "mike/diaspora",
    ),
    (
        "gitlab/merge_request.docs-example.payload.json",
        GL,
        "Merge Request Hook",
        EventKind.PULL_REQUEST,
        "refs/merge-requests/1/head",
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        None,
        1,
        "gitlabhq/gitlab-test",
    ),
    (
        "gitlab/merge_request.update.captured.payload.json",
        GL,
        "Merge Request Hook",
        EventKind.PULL_REQUEST,
        "refs/merge-requests/3/head",
        "c136499ec574e1034b24c5d306de9acda3005367",
        "8b641937b7340066d882b9d8a8cc5b0573a207de",
        3,
        "anbraten/woodpecker",
    ),
]


def test_every_payload_file_in_the_specs_is_covered() -> None:
    listed = {f for f, *_ in SPEC_FILES} | {"github/push.tag-deleted.payload.json"}
    assert {str(p.relative_to(SPECS)) for p in SPECS.glob("*/*.payload.json")} == listed


@pytest.mark.parametrize("case", SPEC_FILES, ids=[c[0] for c in SPEC_FILES])
def test_spec_payload_becomes_the_right_event(case) -> None:
    name, kind, header, ekind, ref, sha, before, number, forge_repo = case
    body = (SPECS / name).read_bytes()
    assert repository(kind, load(body)).full_name == forge_repo
    parsed = parse(kind, {EVENT_HEADER[kind]: header}, body, repo_name="app")
    assert parsed.ignored is None
    (event,) = parsed.events
    assert (event.repo, event.kind, event.ref, event.sha, event.before, event.pr_number) == (
        "app",
        ekind,
        ref,
        sha,
        before,
        number,
    )
    assert event.source == "webhook"
    if ekind == EventKind.PULL_REQUEST:
        meta = dict(event.meta)
        assert meta["fork"] == "false" and meta["base_branch"] and meta["sender"]
        assert event.trusted  # same repository, no trusted_users list
    else:
        assert event.trusted


def test_pr_meta_names_branches_head_repo_and_sender() -> None:
    (event,) = run(GH, "pull_request", spec("github/pull_request.opened.payload.json")).events
    meta = dict(event.meta)
    assert meta["base_branch"] == "master" and meta["head_branch"] == "changes"
    assert meta["head_repo"] == "Codertocat/Hello-World" and meta["sender"] == "Codertocat"
    assert meta["fork"] == "false"


def test_github_tag_deletion_is_ignored() -> None:
    parsed = run(GH, "push", spec("github/push.tag-deleted.payload.json"))
    assert parsed.events == () and "deleted" in parsed.ignored


def test_github_branch_deletion_is_ignored() -> None:
    data = spec("github/push.new-branch.payload.json")
    data.update(deleted=True, after="0" * 40, before="6113728f27ae82c7b1a177c8d03f9e96e0adf246")
    assert run(GH, "push", data).events == ()


def test_tag_push_is_a_tag_event() -> None:
    data = spec("github/push.new-branch.payload.json")
    data["ref"] = "refs/tags/v1.0"
    (event,) = run(GH, "push", data).events
    assert event.kind == EventKind.TAG and event.tag == "v1.0" and event.before is None


def test_gitea_tag_push_and_tag_deletion() -> None:
    data = spec("gitea/push.captured.payload.json")
    data.update(ref="refs/tags/v2", before="0" * 40, commits=[])
    (event,) = run(GT, "push", data).events
    assert event.kind == EventKind.TAG
    data.update(before=data["after"], after="0" * 40)
    assert run(GT, "push", data).events == ()


def test_gitlab_tag_push_and_branch_deletion() -> None:
    data = spec("gitlab/push.captured.payload.json")
    tag = dict(data, object_kind="tag_push", ref="refs/tags/v3", before="0" * 40)
    (event,) = run(GL, "Tag Push Hook", tag).events
    assert (event.kind, event.ref, event.before) == (EventKind.TAG, "refs/tags/v3", None)
    gone = dict(data, after="0" * 40, checkout_sha=None)
    assert "deleted" in run(GL, "Push Hook", gone).ignored


@pytest.mark.parametrize(
    "kind,action",
    [
        (GH, "closed"),
        (GH, "edited"),
        (GH, "labeled"),
        (GT, "closed"),
        (GT, "synchronize"),
        (FJ, "label_updated"),
    ],
)
def test_pr_actions_that_are_not_built(kind, action) -> None:
    name = (
        "github/pull_request.opened.payload.json"
        if kind == GH
        else "gitea/pull_request.synchronized.captured.payload.json"
    )
    data = dict(spec(name), action=action)
    parsed = run(kind, "pull_request", data)
    assert parsed.events == () and action in parsed.ignored


def test_gitlab_mr_update_without_new_commits_and_close_are_ignored() -> None:
    data = spec("gitlab/merge_request.update.captured.payload.json")
    del data["object_attributes"]["oldrev"]
    assert "without new commits" in run(GL, "Merge Request Hook", data).ignored
    data["object_attributes"]["action"] = "close"
    assert run(GL, "Merge Request Hook", data).events == ()
    data["object_attributes"]["action"] = "reopen"
    (event,) = run(GL, "Merge Request Hook", data).events
    assert event.before is None


@pytest.mark.parametrize(
    "kind,event",
    [
        (GH, "ping"),
        (GH, "issues"),
        (GT, "create"),
        (GT, "delete"),
        (GL, "Pipeline Hook"),
        (GL, "Note Hook"),
        (GH, ""),
    ],
)
def test_other_events_are_ignored_without_reading_the_body(kind, event) -> None:
    parsed = run(kind, event, b"not even json")
    assert parsed.events == () and parsed.ignored


def test_forgejo_is_read_from_its_own_headers_then_giteas() -> None:
    body = (SPECS / "forgejo/push.captured.payload.json").read_bytes()
    own = parse(
        FJ,
        {"X-Forgejo-Event": "push", "X-Forgejo-Delivery": "f-1", "X-Gitea-Delivery": "g-1"},
        body,
        repo_name="app",
    )
    assert own.events and own.delivery_id == "f-1"
    gitea_only = parse(
        FJ, {"X-Gitea-Event": "push", "X-Gitea-Delivery": "g-1"}, body, repo_name="app"
    )
    assert gitea_only.events and gitea_only.delivery_id == "g-1"


@pytest.mark.parametrize(
    "kind,headers,expected",
    [
        (
            GH,
            {"X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"},
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        ),
        (GT, {"x-gitea-delivery": "a1"}, "a1"),
        (GL, {"Idempotency-Key": "idem", "X-Gitlab-Event-UUID": "uuid"}, "idem"),
        (GL, {"X-Gitlab-Event-UUID": "uuid"}, "uuid"),
        (GH, {}, None),
        (GH, {"X-Gitea-Delivery": "not-github's"}, None),
    ],
)
def test_delivery_ids(kind, headers, expected) -> None:
    assert delivery_id(kind, headers) == expected


def test_a_malformed_delivery_id_is_refused() -> None:
    with pytest.raises(PayloadError):
        delivery_id(GH, {"X-GitHub-Delivery": "a\x1bb"})
    with pytest.raises(PayloadError):
        delivery_id(GH, {"X-GitHub-Delivery": "x" * 500})


# -- trust -----------------------------------------------------------------------------------------


def github_pr(*, fork: bool, sender: str = "Codertocat", author: str = "Codertocat") -> dict:
    data = spec("github/pull_request.opened.payload.json")
    pr = data["pull_request"]
    if fork:
        pr["head"]["repo"] = copy.deepcopy(pr["head"]["repo"])
        pr["head"]["repo"]["id"] = 999
    data["sender"]["login"] = sender
    pr["user"]["login"] = author
    return data


@pytest.mark.parametrize(
    "fork,trusted_users,sender,author,expected",
    [
        (False, (), "Codertocat", "Codertocat", True),  # same repository, no list: trusted
        (False, ("maint",), "Codertocat", "Codertocat", False),  # a list, sender not on it
        (False, ("Codertocat",), "Codertocat", "Codertocat", True),
        (True, (), "Codertocat", "Codertocat", False),  # a fork, nobody listed
        (True, ("mallory",), "Codertocat", "Codertocat", False),
        (
            True,
            ("codertocat",),
            "Codertocat",
            "Codertocat",
            True,
        ),  # logins compare case-insensitively
        (True, ("maint",), "maint", "outsider", False),  # a maintainer reopening an outsider's PR
        (
            True,
            ("maint",),
            "outsider",
            "maint",
            False,
        ),  # an outsider pushing to a maintainer's fork PR
    ],
)
def test_github_pr_trust(fork, trusted_users, sender, author, expected) -> None:
    (event,) = run(
        GH, "pull_request", github_pr(fork=fork, sender=sender, author=author), trusted_users
    ).events
    assert event.trusted is expected
    assert dict(event.meta)["fork"] == ("true" if fork else "false")


def test_fork_is_decided_by_repository_ids_not_names() -> None:
    data = github_pr(fork=True)  # same full_name as the base, another id
    assert data["pull_request"]["head"]["repo"]["full_name"] == data["repository"]["full_name"]
    (event,) = run(GH, "pull_request", data).events
    assert not event.trusted and dict(event.meta)["fork"] == "true"


def test_a_deleted_fork_counts_as_a_fork() -> None:
    data = github_pr(fork=False)
    data["pull_request"]["head"]["repo"] = None
    (event,) = run(GH, "pull_request", data).events
    assert not event.trusted and dict(event.meta)["fork"] == "true"


def test_title_branch_name_and_commit_text_never_grant_trust() -> None:
    data = github_pr(fork=True, sender="mallory", author="mallory")
    data["pull_request"]["title"] = "maint"
    data["pull_request"]["head"]["ref"] = "maint"
    data["pull_request"]["head"]["label"] = "maint:maint"
    data["pull_request"]["body"] = "Signed-off-by: maint"
    (event,) = run(GH, "pull_request", data, ("maint",)).events
    assert not event.trusted


def test_gitea_fork_by_repo_id() -> None:
    data = spec("gitea/pull_request.synchronized.captured.payload.json")
    data["pull_request"]["head"]["repo_id"] = 7
    (event,) = run(GT, "pull_request", data).events
    assert not event.trusted and dict(event.meta)["fork"] == "true"
    (event,) = run(GT, "pull_request", data, ("test",)).events
    assert event.trusted  # sender and author are both "test"


def test_gitlab_fork_by_project_id() -> None:
    data = spec("gitlab/merge_request.update.captured.payload.json")
    data["object_attributes"]["source_project_id"] = 1
    (event,) = run(GL, "Merge Request Hook", data).events
    assert not event.trusted
    (event,) = run(GL, "Merge Request Hook", data, ("anbraten",)).events
    assert event.trusted  # the author (by id) is the sender, who is listed
    data["user"]["id"] = 1  # someone else acts on anbraten's fork MR
    (event,) = run(GL, "Merge Request Hook", data, ("anbraten",)).events
    assert not event.trusted


def test_pushes_are_trusted() -> None:
    (event,) = run(GH, "push", spec("github/push.new-branch.payload.json"), ("nobody",)).events
    assert event.trusted


# -- hostile and broken bodies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "refs/heads/feature/ünïcödé",
        "refs/heads/$(touch pwned)",
        "refs/heads/a;b|c&d`e`'\"",
        "refs/heads/-rf",
        "refs/tags/--upload-pack=evil",
    ],
)
def test_ref_names_are_kept_as_given(ref) -> None:
    data = spec("github/push.new-branch.payload.json")
    data["ref"] = ref
    (event,) = run(GH, "push", data).events
    assert event.ref == ref


@pytest.mark.parametrize(
    "body,message",
    [
        (b"{", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"[" * 200_000 + b"]" * 200_000, "not valid JSON"),
        (b"payload=%7B%7D", "form-encoded"),
    ],
)
def test_undecodable_bodies_raise_payload_error(body, message) -> None:
    with pytest.raises(PayloadError, match=message):
        run(GH, "push", body)


def mutate(path: str, value):
    data = spec("github/pull_request.synchronize.payload.json")
    *parents, last = path.split(".")
    cur = data
    for p in parents:
        cur = cur[p]
    if value is KeyError:
        del cur[last]
    else:
        cur[last] = value
    return data


@pytest.mark.parametrize(
    "path,value,message",
    [
        ("pull_request.head.sha", KeyError, "pull_request.head.sha: missing"),
        ("pull_request.head.sha", "abc", "not a full commit sha"),
        ("pull_request.head.sha", 42, "expected str"),
        ("pull_request.base.repo.id", "186853002", "expected int"),
        ("pull_request.base.repo.id", True, "expected int"),
        ("number", "2", "expected int"),
        ("number", -2, "not a positive number"),
        ("action", KeyError, "action: missing"),
        ("pull_request", [], "missing"),
        ("pull_request.base.ref", "main\nX-Injected: 1", "control characters"),
    ],
)
def test_missing_or_mistyped_fields_raise_payload_error(path, value, message) -> None:
    with pytest.raises(PayloadError, match=message):
        run(GH, "pull_request", mutate(path, value))


def test_push_field_errors() -> None:
    base = spec("github/push.new-branch.payload.json")
    for change, message in [
        ({"ref": "main"}, "not a fully qualified ref"),
        ({"ref": "refs/heads/a\x00b"}, "control characters"),
        ({"after": "g" * 40}, "not a full commit sha"),
        ({"ref": None}, "ref: missing"),
    ]:
        with pytest.raises(PayloadError, match=message):
            run(GH, "push", dict(base, **change))
    with pytest.raises(PayloadError, match="repository.full_name"):
        repository(GH, {"repository": {}})


def test_gitlab_object_kind_must_match_the_header() -> None:
    with pytest.raises(PayloadError, match="object_kind"):
        run(GL, "Merge Request Hook", spec("gitlab/push.captured.payload.json"))


def test_sha256_repositories_and_uppercase_shas() -> None:
    data = spec("github/push.new-branch.payload.json")
    data["after"] = "AB" * 32
    (event,) = run(GH, "push", data).events
    assert event.sha == "ab" * 32


def test_gitlab_repository_by_path_and_id() -> None:
    where = repository(GL, spec("gitlab/merge_request.update.captured.payload.json"))
    assert (where.full_name, where.id) == ("anbraten/woodpecker", "32059612")
