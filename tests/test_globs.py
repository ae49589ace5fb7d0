"""Glob patterns for branches, tags, paths and artifacts (ciwatch.pipeline.globs)."""

from __future__ import annotations

import pytest

from ciwatch.pipeline.globs import GlobError, check, list_matcher, match_any, matches

MATCHES = [
    # pattern, text, expected
    ("main", "main", True),
    ("main", "mainline", False),  # anchored at the end
    ("main", "xmain", False),  # anchored at the start
    ("release/*", "release/1.0", True),
    ("release/*", "release/1.0/hotfix", False),  # * does not cross /
    ("release/*", "release/", True),
    ("release/*", "release", False),
    ("*", "feature/x", False),
    ("*", "main", True),
    ("feature/**", "feature/a/b/c", True),
    ("feature/**", "feature/a", True),
    ("feature/**", "feature", False),
    ("**", "a/b/c", True),
    ("**/*.py", "setup.py", True),  # **/ also matches no directory
    ("**/*.py", "src/pkg/mod.py", True),
    ("**/*.py", "src/pkg/mod.pyc", False),
    ("src/**/test_*.py", "src/test_a.py", True),
    ("src/**/test_*.py", "src/a/b/test_a.py", True),
    ("src/**/test_*.py", "lib/src/test_a.py", False),
    ("docs/**/*.md", "docs/x/y.md", True),
    ("v?.?", "v1.2", True),
    ("v?.?", "v1.22", False),
    ("a?b", "a/b", False),  # ? does not cross /
    ("v[0-9]*", "v1.0", True),
    ("v[0-9]*", "vx", False),
    ("[abc]x", "bx", True),
    ("[abc]x", "dx", False),
    ("[!abc]x", "dx", True),
    ("[!abc]x", "ax", False),
    ("[^abc]x", "dx", True),
    ("[!a]", "/", False),  # a negated class does not match / either
    ("[]]", "]", True),  # ] first in a class is literal
    ("[a-]", "-", True),
    ("[a-c-e]", "-", True),  # after a range, - is literal
    ("[a-c-e]", "d", False),
    ("[&&~~]", "&", True),  # no regex set operations
    ("a.b", "a.b", True),
    ("a.b", "axb", False),  # regex characters are literal
    ("a+b(c)", "a+b(c)", True),
    ("$x^", "$x^", True),
    (r"\*", "*", True),
    (r"\*", "x", False),
    ("a\\[b", "a[b", True),
    ("dist/*.whl", "dist/pkg-1.0-py3-none-any.whl", True),
    ("dist/*.whl", "dist/sub/pkg.whl", False),
    ("refs/pull/*/head", "refs/pull/12/head", True),
    ("*", "", True),
    ("x*", "x\ny", True),  # only / is a boundary
]


@pytest.mark.parametrize("pattern,text,expected", MATCHES)
def test_matches(pattern: str, text: str, expected: bool) -> None:
    assert matches(pattern, text) is expected


LISTS = [
    (["main", "release/*"], "main", True),
    (["main", "release/*"], "release/2", True),
    (["main", "release/*"], "dev", False),
    (["release/*", "!release/old"], "release/old", False),
    (["release/*", "!release/old"], "release/new", True),
    (["!dev"], "main", True),  # only exclusions: everything else matches
    (["!dev"], "dev", False),
    (["!dev", "!wip/*"], "wip/x", False),
    (["src/**", "!src/docs/**", "src/docs/api/**"], "src/docs/api/x.md", True),  # last wins
    (["src/**", "!src/docs/**"], "src/docs/x.md", False),
    (["\\!bang"], "!bang", True),  # an escaped ! is literal, not an exclusion
]


@pytest.mark.parametrize("patterns,text,expected", LISTS)
def test_lists_with_exclusions(patterns: list[str], text: str, expected: bool) -> None:
    assert list_matcher(patterns)(text) is expected
    assert match_any(patterns, text) is expected


@pytest.mark.parametrize(
    "pattern,fragment",
    [
        ("", "empty pattern"),
        ("v[0-9", "without a closing ']'"),
        ("[z-a]", "not valid"),
        ("abc\\", "unfinished escape"),
        ("![", "without a closing ']'"),
    ],
)
def test_bad_patterns_are_refused_with_a_reason(pattern: str, fragment: str) -> None:
    with pytest.raises(GlobError) as err:
        check(pattern)
    assert fragment in str(err.value)


def test_a_glob_error_is_a_value_error_for_validators() -> None:
    with pytest.raises(ValueError):
        check("[")
