"""The guarded YAML loader: positions, core types, and hostile input (RELIABILITY.md B1-B5)."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from ciwatch import yamlsafe
from ciwatch.errors import DocumentError

ROOT = Path(__file__).resolve().parent.parent


def load(text: str | bytes, **kw) -> yamlsafe.YamlDoc:
    data = text.encode() if isinstance(text, str) else text
    return yamlsafe.load(data, "f.yml", **kw)


def errors(text: str | bytes, **kw) -> list[str]:
    with pytest.raises(DocumentError) as err:
        load(text, **kw)
    return [str(d) for d in err.value.diagnostics]


# --- what a good document gives back -------------------------------------------------------


def test_positions_of_values_and_keys_by_path() -> None:
    doc = load("env: {A: 1}\nsteps:\n  - name: a\n    run: x\n  - name: b\n    timeout: 5m\n")
    assert doc.data == {
        "env": {"A": 1},
        "steps": [{"name": "a", "run": "x"}, {"name": "b", "timeout": "5m"}],
    }
    assert doc.position(("steps", 1, "timeout")) == (6, 14)
    assert doc.key_position(("steps", 1, "timeout")) == (6, 5)
    assert doc.position(("env", "A")) == (1, 10)
    assert doc.key_position(("env", "A")) == (1, 7)
    assert doc.position(("steps", 1)) == (5, 5)
    # a missing path falls back to the nearest ancestor that exists
    assert doc.position(("steps", 1, "retry", "max")) == (5, 5)
    assert doc.key_position(("steps", 0, "nope")) == (3, 5)
    assert doc.position(("steps", 9)) == (3, 3)


def test_diagnostic_renders_file_line_col_path_message() -> None:
    doc = load("a:\n  b: [1, 2]\n")
    assert str(doc.diagnostic(("a", "b", 1), "too big")) == "f.yml:2:10: a.b[1]: too big"
    assert str(doc.diagnostic(("a", "b"), "odd", key=True)) == "f.yml:2:3: a.b: odd"


@pytest.mark.parametrize(
    "text,value",
    [
        ("yes", "yes"),
        ("no", "no"),
        ("on", "on"),
        ("off", "off"),  # YAML 1.2: not booleans
        ("true", True),
        ("False", False),
        ("~", None),
        ("null", None),
        ("", None),
        ("0755", 755),
        ("0o17", 15),
        ("0x1f", 31),
        ("-3", -3),
        ("1_000", "1_000"),
        ("3.10", 3.1),
        ("1e3", 1000.0),
        ("1e309", float("inf")),
        (".inf", float("inf")),
        ("2001-12-14", "2001-12-14"),
        ("1:30", "1:30"),  # no timestamps, no sexagesimals
        ("'5'", "5"),
        ('"true"', "true"),
        ("!!str 12", "12"),
        ("!!int '12'", 12),
        ("!!float 3", 3.0),
        ("! 12", "12"),
    ],
)
def test_scalars_follow_the_core_schema(text: str, value: object) -> None:
    assert load(f"v: {text}\n").data["v"] == value


def test_mapping_keys_are_always_strings() -> None:
    assert load("1: a\ntrue: b\n~: c\n").data == {"1": "a", "true": "b", "null": "c"}


def test_number_texts_remember_numbers_that_do_not_print_back() -> None:
    doc = load("a: 3.10\nb: 3.5\nc: 007\n")
    assert doc.number_text(("a",)) == "3.10"
    assert doc.number_text(("b",)) is None
    assert doc.number_text(("c",)) == "007"


def test_merge_keys_with_one_mapping_or_a_list() -> None:
    doc = load(
        "base: &base {timeout: 5m, env: {A: '1'}}\n"
        "other: &other {retry: 2, timeout: 1m}\n"
        "one:\n  <<: *base\n  timeout: 9m\n"
        "two:\n  <<: [*other, *base]\n  run: x\n"
    )
    assert doc.data["one"] == {"timeout": "9m", "env": {"A": "1"}}
    # earlier mappings in the list win; explicit keys win over all
    assert doc.data["two"] == {"retry": 2, "timeout": "1m", "env": {"A": "1"}, "run": "x"}
    # merged values keep the position where they are written
    assert doc.position(("two", "retry")) == (2, 23)
    assert doc.position(("one", "timeout")) == (5, 12)


def test_utf8_bom_is_accepted_and_positions_are_unchanged() -> None:
    doc = load(b"\xef\xbb\xbfa: 1\nb: 2\n")
    assert doc.data == {"a": 1, "b": 2}
    assert doc.position(("b",)) == (2, 4)


def test_allow_empty_gives_none_for_the_config() -> None:
    assert load("# nothing here\n", allow_empty=True).data is None


# --- hostile and malformed input: one exact diagnostic each -------------------------------

BAD = [
    # (input, expected substring of the first diagnostic)
    (b"\x00\x01\x02binary", "f.yml:1:1: file is binary (NUL byte at byte offset 0, line 1)"),
    (b"a: 1\nb: \x00", "f.yml:2:1: file is binary (NUL byte at byte offset 8, line 2)"),
    ("a: 1".encode("utf-16"), "file is UTF-16-encoded (byte order mark FF FE); save it as UTF-8"),
    (b"\xfe\xff\x00a", "file is UTF-16-encoded (byte order mark FE FF)"),
    (
        b"a: 1\nb: caf\xe9\n",
        "f.yml:2:7: file is not valid UTF-8: byte 0xe9 at byte offset 11 (line 2)",
    ),
    (b"", "f.yml:1:1: empty document"),
    (b"# just a comment\n\n", "f.yml:1:1: empty document"),
    (b"---\n", "f.yml:1:1: empty document"),
    (b"steps:\n\t- run: x\n", "f.yml:2:1: tab character used for indentation; indent with spaces"),
    (b"steps:\n  - run: x\n\t  timeout: 5\n", "f.yml:3:1: tab character used for indentation"),
    (b"a:\n  b: 1\n  \tc: 2\n", "f.yml:3:3: tab character used for indentation"),
    (b"a: |\n\tfoo\n", "f.yml:2:1: tab character used for indentation"),
    (
        b'a: "unterminated\n',
        "f.yml:2:1: invalid YAML: found unexpected end of stream "
        "(while scanning a quoted scalar at line 1)",
    ),
    (b"a: b: c\n", "f.yml:1:5: invalid YAML: mapping values are not allowed"),
    (b"steps: [1, 2\n", "f.yml:2:1: invalid YAML: did not find expected ',' or ']'"),
    (
        b"a: 1\n---\nb: 2\n",
        "f.yml:2:1: a second document starts here ('---'); the file must hold exactly one document",
    ),
    (b"a: 1\nb: 2\na: 3\n", "f.yml:3:1: a: duplicate key 'a' (first defined at line 1)"),
    (
        b"steps:\n  - run: x\n    run: y\n",
        "f.yml:3:5: steps[0].run: duplicate key 'run' (first defined at line 2)",
    ),
    (b"[a, b]: 1\n", "f.yml:1:1: mapping keys must be plain strings"),
    (b"? {a: 1}\n: 2\n", "f.yml:1:3: mapping keys must be plain strings"),
    (b"x: &k a\n*k : 2\n", "f.yml:2:1: mapping keys must be plain strings"),
    (
        b"a: !!python/object/apply:os.system ['true']\n",
        "f.yml:1:4: a: unsupported tag '!!python/object/apply:os.system': only plain YAML types",
    ),
    (b"a: !!python/name:os.system\n", "unsupported tag '!!python/name:os.system'"),
    (b"a: !!binary aGVsbG8=\n", "f.yml:1:4: a: unsupported tag '!!binary'"),
    (b"a: !!set {x, y}\n", "unsupported tag '!!set'"),
    (b"a: !custom x\n", "unsupported tag '!custom'"),
    (b"a: !!int abc\n", "f.yml:1:4: a: cannot read 'abc' as !!int"),
    (b"a: !!map [1]\n", "unsupported tag '!!map'"),
    (b"a: *nowhere\n", "f.yml:1:4: a: alias *nowhere has no anchor &nowhere before it"),
    (b"a: &x [1, *x]\n", "f.yml:1:11: a[1]: alias *x refers to a node that contains it"),
    (b"a:\n  <<: 5\n", "f.yml:2:7: a[\"<<\"]: a merge key '<<' needs a mapping or a list"),
    (b"a: \x07bell\n", "f.yml:1:4: character U+0007 is not allowed in YAML"),
    (b"a: x\x1b[31m\n", "f.yml:1:5: character U+001B is not allowed in YAML"),
    (b"n: " + b"9" * 5000 + b"\n", "f.yml:1:4: n: number with 5000 digits is too long"),
]


@pytest.mark.parametrize("data,expected", BAD, ids=[repr(d[:24]) for d, _ in BAD])
def test_bad_input_gives_a_precise_diagnostic(data: bytes, expected: str) -> None:
    found = errors(data)
    assert expected in found[0], found


def test_every_problem_is_reported_at_once() -> None:
    found = errors("a: 1\na: 2\nb: !!python/object:x {}\nc: *missing\nd:\n  e: 1\n  e: 2\n")
    assert [f.split(": ")[0] for f in found] == ["f.yml:2:1", "f.yml:3:4", "f.yml:4:4", "f.yml:7:3"]


def test_size_is_checked_first_and_said_in_words() -> None:
    # 2.5 MB of NUL bytes: the size is the problem reported, nothing else is looked at
    found = errors(b"\x00" * 2_500_000, label="pipeline file")
    assert found == ["f.yml:1:1: pipeline file is 2.5 MB; the limit is 1 MiB"]
    assert errors(b"a: 1\n" * 40, max_bytes=100) == [
        "f.yml:1:1: file is 200 bytes; the limit is 100 bytes"
    ]


def test_a_100_mb_file_is_refused_by_its_size() -> None:
    big = b"a" * 100_000_000
    assert errors(big, label="pipeline file") == [
        "f.yml:1:1: pipeline file is 100.0 MB; the limit is 1 MiB"
    ]


def test_python_tags_never_execute_anything(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    doc = (
        f"a: !!python/object/apply:os.system ['touch {target}']\n"
        f"b: !!python/object/apply:subprocess.call [['touch', '{target}']]\n"
    )
    found = errors(doc)
    assert len(found) == 2 and all("unsupported tag" in f for f in found)
    assert not target.exists()


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    assert load("[" * 64 + "]" * 64).data is not None
    assert errors("[" * 65 + "]" * 65) == ["f.yml:1:65: nesting is deeper than 64 levels"]
    assert errors("a:\n" + "".join("  " * i + "- \n" for i in range(1, 70)), max_depth=10)[
        0
    ].endswith("nesting is deeper than 10 levels")


def test_too_many_nodes_without_aliases() -> None:
    found = errors("[" + ",".join(["1"] * 200) + "]", max_nodes=100)
    assert found == ["f.yml:1:200: the document has more than 100 nodes"]


def _billion_laughs() -> bytes:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return ("\n".join(lines) + "\n").encode()


def test_billion_laughs_fails_fast_with_flat_memory() -> None:
    bomb = _billion_laughs()
    assert len(bomb) < 400  # expands to 9**9 = 387 million leaves
    tracemalloc.start()
    started = time.monotonic()
    try:
        found = errors(bomb)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found == ["f.yml:6:11: anchors and aliases expand to more than 100000 nodes"]
    assert elapsed < 1.0
    assert peak < 5_000_000


def test_aliases_within_the_budget_are_expanded_into_independent_copies() -> None:
    doc = load("x: &x {a: [1, 2]}\ny: *x\n")
    assert doc.data["y"] == {"a": [1, 2]}
    assert doc.data["y"] is not doc.data["x"]
    assert doc.position(("y", "a", 1)) == (1, 15)  # where the anchored value is written


_DEEP_SCRIPT = """
import sys, yaml
from ciwatch import yamlsafe
from ciwatch.errors import DocumentError
if sys.argv[1] == "python":
    yamlsafe._PARSER = yaml.SafeLoader
data = {"flow": b"[" * 100_000 + b"]" * 100_000,
        "block": b"- " * 1100 + b"x\\n"}[sys.argv[2]]
try:
    yamlsafe.load(data, "deep.yml")
except DocumentError as exc:
    print(exc)
"""


@pytest.mark.parametrize("parser", ["c", "python"])
@pytest.mark.parametrize("shape", ["flow", "block"])
def test_deep_nesting_cannot_crash_the_process(parser: str, shape: str) -> None:
    # In a child process, so a segfault fails this test instead of killing pytest.
    proc = subprocess.run(
        [sys.executable, "-c", _DEEP_SCRIPT, parser, shape],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "nesting is deeper than 64 levels" in proc.stdout
    assert "Traceback" not in proc.stderr
