"""Status badges: ``GET /badge/{repo}.svg?branch=B`` (the default branch
without one), an SVG in the style of shields.io, coloured by the state of the
branch's newest run.

Cache-friendly: an ETag over the exact bytes and ``Cache-Control: no-cache``,
so a forge's image proxy revalidates each view and gets a 304 while the state
holds. An unknown repository or branch is a grey "unknown" badge, never an
error page in a README.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ciwatch.errors import NotFoundError
from ciwatch.model import RunState
from ciwatch.store.queries import RunFilter

LABEL = "ciwatch"
COLOURS = {
    RunState.SUCCESS: "#2e9e44",
    RunState.FAILURE: "#d73a2c",
    RunState.ERROR: "#e36e1e",
    RunState.RUNNING: "#1f6fbf",
    RunState.QUEUED: "#b08a00",
    RunState.CANCELED: "#6a737d",
    RunState.SKIPPED: "#8c959f",
}
UNKNOWN = "#9f9f9f"
MAX_TEXT = 40

# Widths in pixels of 11px Verdana, the badge font, for the narrow and wide
# characters; everything else counts 7.
_NARROW = dict.fromkeys("fijlrt!|.,:;'()[] ", 4)
_WIDE = dict.fromkeys("mwMW@%", 10)


def text_width(text: str) -> int:
    return sum(_NARROW.get(c, _WIDE.get(c, 7)) for c in text)


def badge_svg(label: str, message: str, colour: str) -> bytes:
    """The badge; `label` and `message` are escaped, `colour` comes from COLOURS."""
    label, message = _clip(label), _clip(message)
    lw, mw = text_width(label) + 10, text_width(message) + 10
    width = lw + mw
    title = escape(f"{label}: {message}")
    lt, mt = escape(label), escape(message)
    svg = f"""<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" \
role="img" aria-label="{title}"><title>{title}</title>\
<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/>\
<stop offset="1" stop-opacity=".1"/></linearGradient>\
<clipPath id="r"><rect width="{width}" height="20" rx="3" fill="#fff"/></clipPath>\
<g clip-path="url(#r)"><rect width="{lw}" height="20" fill="#555"/>\
<rect x="{lw}" width="{mw}" height="20" fill="{colour}"/>\
<rect width="{width}" height="20" fill="url(#s)"/></g>\
<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" \
font-size="11"><text x="{lw / 2:.1f}" y="15" fill="#010101" fill-opacity=".3">{lt}</text>\
<text x="{lw / 2:.1f}" y="14">{lt}</text>\
<text x="{lw + mw / 2:.1f}" y="15" fill="#010101" fill-opacity=".3">{mt}</text>\
<text x="{lw + mw / 2:.1f}" y="14">{mt}</text></g></svg>
"""
    return svg.encode()


def _clip(text: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def branch_state(store, repo: str, branch: str | None) -> RunState | None:
    """The state of the newest run of `branch` (default: the repository's
    default branch) from the store: one index seek."""
    try:
        default = store.get_repo(repo).default_branch
    except NotFoundError:
        return None
    ref = f"refs/heads/{branch or default}"
    newest = store.page_runs(RunFilter(repo=repo, ref=ref), limit=1)
    return newest[0].run.state if newest else None


def badges_router(state_of: Callable[[str, str | None], RunState | None]) -> APIRouter:
    """`state_of(repo, branch)`: the state of the branch's newest run (branch None:
    the repository's default branch); None for an unknown repository or a
    branch without runs."""
    router = APIRouter()

    @router.get("/badge/{repo:path}.svg", tags=["badges"], response_class=Response)
    def badge(request: Request, repo: str, branch: str | None = None) -> Response:
        """An SVG badge of the branch's newest run (default: the default branch)."""
        state = state_of(repo, branch) if len(repo) <= 200 and len(branch or "") <= 1000 else None
        if state is None:
            svg = badge_svg(LABEL, "unknown", UNKNOWN)
        else:
            svg = badge_svg(LABEL, state.value, COLOURS.get(state, UNKNOWN))
        etag = '"' + hashlib.sha256(svg).hexdigest()[:20] + '"'
        headers = {
            "ETag": etag,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
        }
        if etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        return Response(svg, media_type="image/svg+xml", headers=headers)

    return router


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",") if part.strip()}
