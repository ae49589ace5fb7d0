"""What a forge's answer to a commit status request means (pure): `classify`
turns the HTTP status, headers and body into a Delivery verdict for the outbox
(delivered, retry and when, a token problem, or drop), with the forge's own
words as one short line (`forge_message`).
"""

from __future__ import annotations

import email.utils
import json
from collections.abc import Mapping

from ciwatch.forges.status import clean_text, truncate
from ciwatch.forges.types import Delivery, ForgeKind, Verdict

__all__ = ["classify", "forge_message"]

RETRY_FLOOR, RETRY_CAP = 1.0, 3600.0  # bounds for a forge-announced wait
SECONDARY_LIMIT_WAIT = 60.0  # GitHub: "wait at least one minute" without retry-after


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in headers.items()}


def forge_message(body: bytes, limit: int = 200) -> str:
    """The forge's own error text (JSON `message`/`error`, else the body), as
    one short line of plain text."""
    text = body[:8192].decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        parts = [doc.get("message"), doc.get("error")]
        errors = doc.get("errors")
        if isinstance(errors, list):
            parts += [e.get("message") if isinstance(e, dict) else e for e in errors]
        text = "; ".join(str(p) for p in parts if p and not isinstance(p, dict | list))
    return truncate(clean_text(text), limit)


def _seconds(value: str | None, now: float) -> float | None:
    """retry-after as delta seconds or an HTTP date; None when unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(value).timestamp() - now
    except (TypeError, ValueError, IndexError):
        return None


def _bounded(seconds: float) -> float:
    return min(max(seconds, RETRY_FLOOR), RETRY_CAP)


def _rate_limit(status: int, h: dict[str, str], said: str, now: float) -> Delivery | None:
    after = _seconds(h.get("retry-after"), now)
    if after is not None:
        return Delivery(Verdict.RETRY, status, _bounded(after), f"rate limited ({status}){said}")
    for prefix in ("x-ratelimit-", "ratelimit-"):  # GitHub; GitLab
        if h.get(prefix + "remaining", "").strip() == "0":
            reset = _seconds(h.get(prefix + "reset"), 0.0)
            wait = reset - now if reset is not None else SECONDARY_LIMIT_WAIT
            return Delivery(Verdict.RETRY, status, _bounded(wait), f"rate limit used up{said}")
    if status == 429 or "rate limit" in said.lower():
        return Delivery(Verdict.RETRY, status, SECONDARY_LIMIT_WAIT, f"rate limited{said}")
    return None


def classify(
    kind: ForgeKind | str,
    status: int | None,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
) -> Delivery:
    """What the forge's answer to a status POST means. `status` None: no
    answer at all (connection refused, timeout, TLS or DNS failure)."""
    kind = ForgeKind(kind)
    if status is None:
        return Delivery(Verdict.RETRY, None, None, "no answer from the forge")
    if 200 <= status < 300:
        return Delivery(Verdict.DELIVERED, status)
    h = _lower(headers)
    text = forge_message(body)
    low, said = text.lower(), f": {text}" if text else ""

    def verdict(v: Verdict, message: str, after: float | None = None) -> Delivery:
        return Delivery(v, status, after, message)

    limited = _rate_limit(status, h, said, now) if status in (403, 429) else None
    if limited:
        return limited
    if 300 <= status < 400:
        return verdict(
            Verdict.RETRY, f"the forge redirected ({status}); redirects are not followed"
        )
    if kind is ForgeKind.GITLAB and status == 400 and "cannot transition status" in low:
        return verdict(Verdict.APPLIED, f"already in that state{said}")
    if status >= 500 or status in (408, 409):
        if kind in (ForgeKind.GITEA, ForgeKind.FORGEJO) and status == 500:
            if "getcommit" in low or "object does not exist" in low:
                return verdict(Verdict.DROP, f"unknown commit{said}")
            # Gitea hides 500 texts from non-admins, and an unknown sha is a 500 too.
            said += " (Gitea/Forgejo also answer 500 for an unknown commit)"
        after = _seconds(h.get("retry-after"), now)
        return verdict(
            Verdict.RETRY, f"forge error {status}{said}", None if after is None else _bounded(after)
        )
    if status == 401:
        why = "expired, revoked or wrong"
        return verdict(Verdict.AUTH, f"the forge refused the token (401): {why}{said}")
    if status == 403:
        return verdict(Verdict.AUTH, f"the token may not post statuses here (403){said}")
    if status == 404:
        what = "unknown repository or commit, or the token cannot see it"
        return verdict(Verdict.DROP, f"{what} (404){said}")
    if status == 422 and ("maximum number of statuses" in low or "too many" in low):
        return verdict(
            Verdict.DROP,
            "too many statuses: the forge keeps at most 1000 per commit and context,"
            f" so this one was refused (422){said}",
        )
    if status == 422 and "no commit found" in low:
        return verdict(Verdict.DROP, f"unknown commit (422){said}")
    return verdict(Verdict.DROP, f"the forge rejected the status ({status}){said}")
