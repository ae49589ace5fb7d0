"""Glob patterns for branches, tags and paths.

`*` and `?` never cross `/`; `**` does (`a/**/b` also matches `a/b`, `**/x`
also matches `x`); `[abc]`, `[a-z]`, `[!abc]` (or `[^abc]`) are character
classes; `\\` escapes the next character. A pattern matches the whole text.

In a list, a pattern starting with `!` excludes. Patterns apply in order and
the last one that matches decides; a list of only exclusions starts from
"everything matches" (`["!dev"]` is every branch but dev).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ciwatch.errors import CiwatchError

__all__ = ["GlobError", "compile_glob", "matches", "match_any", "list_matcher", "check"]


class GlobError(CiwatchError, ValueError):
    """A glob pattern cannot be read."""


def compile_glob(pattern: str) -> re.Pattern[str]:
    """The anchored regular expression for one pattern (without a leading `!`)."""
    if not pattern:
        raise GlobError("empty pattern")
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 == n:
                raise GlobError(f"pattern {pattern!r} ends with an unfinished escape '\\'")
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            if j - i == 1:
                out.append("[^/]*")
            elif (i == 0 or pattern[i - 1] == "/") and j < n and pattern[j] == "/":
                out.append("(?:.*/)?")  # `**/` also matches no directory at all
                j += 1
            else:
                out.append(".*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            text, i = _char_class(pattern, i)
            out.append(text)
        else:
            out.append(re.escape(c))
            i += 1
    try:
        return re.compile("(?s:" + "".join(out) + r")\Z")
    except re.error as exc:
        raise GlobError(f"pattern {pattern!r} is not valid: {exc.msg}") from None


def _char_class(pattern: str, start: int) -> tuple[str, int]:
    i = start + 1
    negate = i < len(pattern) and pattern[i] in "!^"
    if negate:
        i += 1
    body_start = i
    if i < len(pattern) and pattern[i] == "]":
        i += 1  # a `]` right after `[` is a literal
    while i < len(pattern) and pattern[i] != "]":
        i += 1
    if i >= len(pattern):
        raise GlobError(f"pattern {pattern!r} has '[' without a closing ']'")
    body = pattern[body_start:i]
    parts, k = [], 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":  # a range such as a-z
            parts.append(f"{re.escape(body[k])}-{re.escape(body[k + 2])}")
            k += 3
        else:
            parts.append(re.escape(body[k]))
            k += 1
    return ("[^/" if negate else "[") + "".join(parts) + "]", i + 1


def check(pattern: str) -> None:
    """Raise GlobError if `pattern` (possibly `!`-prefixed) cannot be read."""
    compile_glob(pattern[1:] if pattern.startswith("!") else pattern)


def matches(pattern: str, text: str) -> bool:
    return compile_glob(pattern).match(text) is not None


def list_matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """A predicate for a list of patterns with `!` exclusions (see module doc)."""
    compiled = [
        (p.startswith("!"), compile_glob(p[1:] if p.startswith("!") else p)) for p in patterns
    ]
    start = all(negated for negated, _ in compiled)

    def match(text: str) -> bool:
        included = start
        for negated, regex in compiled:
            if regex.match(text) is not None:
                included = not negated
        return included

    return match


def match_any(patterns: Sequence[str], text: str) -> bool:
    """Whether a list of patterns (with `!` exclusions) selects `text`."""
    return list_matcher(patterns)(text)
