"""Is a webhook delivery really from the forge? (pure: headers and bytes in, a verdict out)

GitHub, Gitea and Forgejo sign the raw body with HMAC-SHA256 under the hook's
secret; GitLab echoes the secret itself in ``X-Gitlab-Token``. Every comparison
goes through ``hmac.compare_digest``, so a guess that is right in its first
bytes takes as long to refuse as one that is wrong everywhere. A configured
secret with no signature header fails closed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from types import MappingProxyType

from ciwatch.errors import CiwatchError
from ciwatch.forges.types import ForgeKind

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HUB = "x-hub-signature-256"  # "sha256=<hex>"
_GITEA = "x-gitea-signature"  # bare hex
_FORGEJO = "x-forgejo-signature"  # bare hex
_GITLAB = "x-gitlab-token"  # the secret, verbatim

# Which headers carry the signature, most specific first; the first one
# present and non-empty is the one checked (no falling back after a mismatch).
SIGNATURE_HEADERS: Mapping[ForgeKind, tuple[str, ...]] = MappingProxyType(
    {
        ForgeKind.GITHUB: (_HUB,),
        ForgeKind.GITEA: (_GITEA, _HUB),
        ForgeKind.FORGEJO: (_FORGEJO, _GITEA, _HUB),
        ForgeKind.GITLAB: (_GITLAB,),
    }
)


class SignatureError(CiwatchError):
    """The delivery is not proven to come from the forge. `reason` is for the
    daemon's log only (it never holds the secret or the presented value)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names folded to lower case (HTTP names are case-insensitive)."""
    return {str(k).lower(): v for k, v in headers.items()}


def sign(secret: bytes, body: bytes) -> str:
    """The lowercase hex HMAC-SHA256 of `body` under `secret` (what forges send)."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(kind: ForgeKind, headers: Mapping[str, str], body: bytes, secret: bytes | None) -> None:
    """Return if the delivery is authentic, else raise SignatureError.

    `body` must be the raw bytes as received: re-serialised JSON would not
    match. No secret configured means nothing to check (the caller warns)."""
    if secret is None:
        return
    if not secret:
        # An empty key is one anyone can compute: refuse rather than pretend.
        raise SignatureError("the configured webhook secret is empty")
    kind = ForgeKind(kind)
    low = lower_headers(headers)
    names = SIGNATURE_HEADERS[kind]
    name = next((n for n in names if (low.get(n) or "").strip()), None)
    if name is None:
        shown = " or ".join(_display(n) for n in names)
        raise SignatureError(f"no {shown} header, and a webhook secret is configured")
    value = low[name].strip()
    if name == _GITLAB:
        _check_token(value, secret)
    elif name == _HUB:
        algorithm, sep, digest = value.partition("=")
        if not sep:
            raise SignatureError(f"{_display(name)} is not of the form sha256=<hex>")
        if algorithm.lower() != "sha256":
            raise SignatureError(
                f"{_display(name)} uses {algorithm[:16]!r}; only sha256 is accepted"
            )
        _check_hmac(name, digest, secret, body)
    else:
        _check_hmac(name, value, secret, body)


def _check_hmac(name: str, digest: str, secret: bytes, body: bytes) -> None:
    if not _HEX64.fullmatch(digest):
        raise SignatureError(f"{_display(name)} is not 64 hex digits")
    expected = hmac.new(secret, body, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, bytes.fromhex(digest)):
        raise SignatureError(f"{_display(name)} does not match the body")


def _check_token(value: str, secret: bytes) -> None:
    # Header values arrive as latin-1 text (HTTP/1.1 octets); anything else
    # cannot be the secret.
    try:
        presented = value.encode("latin-1")
    except UnicodeEncodeError:
        presented = b""
    if not hmac.compare_digest(presented, secret):
        raise SignatureError("X-Gitlab-Token does not match the configured secret")


def _display(name: str) -> str:
    return "-".join(p.capitalize() for p in name.split("-"))
