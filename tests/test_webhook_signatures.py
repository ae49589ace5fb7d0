"""Webhook authenticity: HMAC signatures (GitHub, Gitea, Forgejo) and GitLab's token."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from specpath import find_specs

from ciwatch.forges.signatures import SignatureError, sign, verify
from ciwatch.forges.types import ForgeKind

SPECS = find_specs()
SECRET = b"hook-secret"
BODY = b'{"ref":"refs/heads/main"}'
GOOD = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()
WRONG_KEY = hmac.new(b"not-the-secret", BODY, hashlib.sha256).hexdigest()
OTHER_BODY = hmac.new(SECRET, BODY + b" ", hashlib.sha256).hexdigest()
SHA1 = hmac.new(SECRET, BODY, hashlib.sha1).hexdigest()

GH, GT, FJ, GL = ForgeKind.GITHUB, ForgeKind.GITEA, ForgeKind.FORGEJO, ForgeKind.GITLAB


ACCEPTED = [
    ("github sha256", GH, {"X-Hub-Signature-256": f"sha256={GOOD}"}),
    ("github uppercase hex", GH, {"X-Hub-Signature-256": f"sha256={GOOD.upper()}"}),
    ("github header name in any case", GH, {"x-hub-signature-256": f"sha256={GOOD}"}),
    ("gitea own header", GT, {"X-Gitea-Signature": GOOD}),
    ("gitea via the github header", GT, {"X-Hub-Signature-256": f"sha256={GOOD}"}),
    (
        "gitea empty own header, github one set",
        GT,
        {"X-Gitea-Signature": "", "X-Hub-Signature-256": f"sha256={GOOD}"},
    ),
    ("forgejo own header", FJ, {"X-Forgejo-Signature": GOOD}),
    ("forgejo via gitea's header", FJ, {"X-Gitea-Signature": GOOD}),
    ("forgejo via the github header", FJ, {"X-Hub-Signature-256": f"sha256={GOOD}"}),
    ("gitlab token", GL, {"X-Gitlab-Token": SECRET.decode()}),
]

REFUSED = [
    ("github missing header", GH, {}),
    ("github only the legacy sha1 header", GH, {"X-Hub-Signature": f"sha1={SHA1}"}),
    ("github wrong secret", GH, {"X-Hub-Signature-256": f"sha256={WRONG_KEY}"}),
    ("github signature of another body", GH, {"X-Hub-Signature-256": f"sha256={OTHER_BODY}"}),
    ("github sha1= in the sha256 header", GH, {"X-Hub-Signature-256": f"sha1={SHA1}"}),
    ("github sha512=", GH, {"X-Hub-Signature-256": "sha512=" + "ab" * 64}),
    ("github malformed hex", GH, {"X-Hub-Signature-256": "sha256=zz"}),
    ("github short hex", GH, {"X-Hub-Signature-256": f"sha256={GOOD[:-2]}"}),
    ("github no prefix", GH, {"X-Hub-Signature-256": GOOD}),
    ("github empty", GH, {"X-Hub-Signature-256": ""}),
    ("github bare 'sha256='", GH, {"X-Hub-Signature-256": "sha256="}),
    ("github non-ascii", GH, {"X-Hub-Signature-256": "sha256=" + "é" * 64}),
    ("github gitea-style header only", GH, {"X-Gitea-Signature": GOOD}),
    (
        "gitea empty signature (forge has no secret)",
        GT,
        {"X-Gitea-Signature": "", "X-Hub-Signature-256": "sha256="},
    ),
    ("gitea wrong secret", GT, {"X-Gitea-Signature": WRONG_KEY}),
    ("gitea prefixed value in its own header", GT, {"X-Gitea-Signature": f"sha256={GOOD}"}),
    # The first header present decides: a bad one is not rescued by another.
    (
        "gitea bad own header, good github one",
        GT,
        {"X-Gitea-Signature": WRONG_KEY, "X-Hub-Signature-256": f"sha256={GOOD}"},
    ),
    ("forgejo other body", FJ, {"X-Forgejo-Signature": OTHER_BODY}),
    ("forgejo missing", FJ, {"X-Forgejo-Event": "push"}),
    ("gitlab wrong token", GL, {"X-Gitlab-Token": "hook-secreT"}),
    ("gitlab token prefix", GL, {"X-Gitlab-Token": "hook-secre"}),
    ("gitlab missing token", GL, {}),
    ("gitlab hmac instead of token", GL, {"X-Hub-Signature-256": f"sha256={GOOD}"}),
    ("gitlab non-latin-1 token", GL, {"X-Gitlab-Token": "hook-secret€"}),
]


@pytest.mark.parametrize("kind,headers", [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_a_valid_signature_is_accepted(kind, headers) -> None:
    verify(kind, headers, BODY, SECRET)


@pytest.mark.parametrize("kind,headers", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_anything_else_is_refused(kind, headers) -> None:
    with pytest.raises(SignatureError) as err:
        verify(kind, headers, BODY, SECRET)
    # The reason is for the log: never the secret.
    assert SECRET.decode() not in str(err.value)


@pytest.mark.parametrize("kind", list(ForgeKind))
def test_no_secret_configured_accepts_unsigned(kind) -> None:
    verify(kind, {}, BODY, None)
    verify(kind, {"X-Hub-Signature-256": "sha256=zz", "X-Gitlab-Token": "x"}, BODY, None)


@pytest.mark.parametrize("kind", list(ForgeKind))
def test_an_empty_configured_secret_fails_closed(kind) -> None:
    empty_mac = hmac.new(b"", BODY, hashlib.sha256).hexdigest()
    headers = {
        "X-Hub-Signature-256": f"sha256={empty_mac}",
        "X-Gitea-Signature": empty_mac,
        "X-Forgejo-Signature": empty_mac,
        "X-Gitlab-Token": "",
    }
    with pytest.raises(SignatureError, match="empty"):
        verify(kind, headers, BODY, b"")


def test_githubs_published_test_vector() -> None:
    vector = json.loads((SPECS / "github" / "webhook-signature-test-vector.json").read_text())
    secret, payload = vector["secret"].encode(), vector["payload"].encode()
    assert sign(secret, payload) == vector["hex_hmac_sha256"]
    verify(GH, {"X-Hub-Signature-256": vector["headers"]["X-Hub-Signature-256"]}, payload, secret)
    verify(GT, {"X-Gitea-Signature": vector["hex_hmac_sha256"]}, payload, secret)
    verify(FJ, {"X-Forgejo-Signature": vector["hex_hmac_sha256"]}, payload, secret)
    with pytest.raises(SignatureError):
        verify(
            GH,
            {"X-Hub-Signature-256": vector["headers"]["X-Hub-Signature-256"]},
            payload + b"\n",
            secret,
        )


def test_the_raw_body_is_signed_not_a_reserialisation() -> None:
    spaced = b'{ "ref" : "refs/heads/main" }'
    assert json.loads(spaced) == json.loads(BODY)
    with pytest.raises(SignatureError):
        verify(GH, {"X-Hub-Signature-256": f"sha256={GOOD}"}, spaced, SECRET)


CASES_FOR_TIMING = [
    (GH, {"X-Hub-Signature-256": f"sha256={GOOD}"}),
    (GT, {"X-Gitea-Signature": GOOD}),
    (FJ, {"X-Forgejo-Signature": GOOD}),
    (GL, {"X-Gitlab-Token": SECRET.decode()}),
]


@pytest.mark.parametrize(
    "kind,headers", CASES_FOR_TIMING, ids=[k.value for k, _ in CASES_FOR_TIMING]
)
def test_every_comparison_is_constant_time(monkeypatch, kind, headers) -> None:
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    verify(kind, headers, BODY, SECRET)
    assert len(calls) == 1
    # The verdict is compare_digest's: if it says no, the delivery is refused.
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: False)
    with pytest.raises(SignatureError):
        verify(kind, headers, BODY, SECRET)


def test_a_wrong_signature_is_refused_through_compare_digest_too(monkeypatch) -> None:
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    for kind, headers in [
        (GH, {"X-Hub-Signature-256": f"sha256={WRONG_KEY}"}),
        (GL, {"X-Gitlab-Token": "guess"}),
    ]:
        with pytest.raises(SignatureError):
            verify(kind, headers, BODY, SECRET)
    assert len(calls) == 2
