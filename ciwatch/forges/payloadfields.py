"""Reading a webhook delivery's JSON: typed fields by dotted path, full commit
shas, fully qualified refs. Anything missing, of the wrong type or holding
control characters is a PayloadError naming the field."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ciwatch.errors import CiwatchError

__all__ = [
    "SOURCE",
    "PayloadError",
    "field",
    "is_zero",
    "login_at",
    "positive",
    "ref_at",
    "sha_at",
]

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SOURCE = "webhook"  # the source of every event a delivery asks for


class PayloadError(CiwatchError):
    """The delivery cannot be understood: not JSON, or a field missing or of the wrong type."""


def login_at(data: Mapping, path: str) -> str | None:
    # GitHub users have `login`; Gitea and Forgejo send both `login` and `username`.
    return field(data, f"{path}.login", str, optional=True) or field(
        data, f"{path}.username", str, optional=True
    )


def field(data: Mapping, path: str, typ: type, *, optional: bool = False):
    cur: object = data
    for part in path.split("."):
        if not isinstance(cur, Mapping) or cur.get(part) is None:
            if optional:
                return None
            raise PayloadError(f"{path}: missing")
        cur = cur[part]
    if not isinstance(cur, typ) or (typ is int and isinstance(cur, bool)):
        raise PayloadError(f"{path}: expected {typ.__name__}, got {type(cur).__name__}")
    if typ is str and _CONTROL.search(cur):
        raise PayloadError(f"{path}: contains control characters")
    return cur


def sha_at(data: Mapping, path: str, *, optional: bool = False) -> str | None:
    value = field(data, path, str, optional=optional)
    if value is None or (optional and not value):
        return None
    if not _SHA.fullmatch(value.lower()):
        raise PayloadError(f"{path}: not a full commit sha")
    return value.lower()


def ref_at(data: Mapping, path: str) -> str:
    value = field(data, path, str)
    if not value.startswith("refs/"):
        raise PayloadError(f"{path}: not a fully qualified ref")
    return value


def positive(value: int, path: str) -> int:
    if value <= 0:
        raise PayloadError(f"{path}: not a positive number")
    return value


def is_zero(sha: str | None) -> bool:
    return bool(sha) and set(sha) == {"0"}
