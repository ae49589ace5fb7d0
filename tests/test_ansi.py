"""Terminal output to styled, inert text: colours become classes, every other
escape sequence and control character disappears, nothing becomes markup."""

from __future__ import annotations

import pytest

from ciwatch.web.ansi import PLAIN, Span, Style, apply_sgr, from_256, plain, render

ESC = b"\x1b"


def spans(data: bytes, style: Style = PLAIN) -> list[tuple[str, str]]:
    got, _ = render(data, style)
    return [(s.text, s.classes) for s in got]


def test_colours_and_attributes_become_classes():
    assert spans(ESC + b"[1;31mFAILED" + ESC + b"[0m in 3s") == [
        ("FAILED", "fg1 ab"),
        (" in 3s", ""),
    ]
    assert spans(ESC + b"[92;44mok" + ESC + b"[39mbg only") == [
        ("ok", "fg10 bg4"),
        ("bg only", "bg4"),
    ]
    assert spans(ESC + b"[3;4;9mx" + ESC + b"[23;24;29my") == [("x", "ai au as"), ("y", "")]
    assert spans(ESC + b"[2mdim" + ESC + b"[22mnormal") == [("dim", "ad"), ("normal", "")]
    assert spans(ESC + b"[mreset") == [("reset", "")]


def test_256_and_true_colours_map_to_the_nearest_of_sixteen():
    assert spans(ESC + b"[38;5;196mred") == [("red", "fg9")]
    assert spans(ESC + b"[38;5;2mgreen") == [("green", "fg2")]
    assert spans(ESC + b"[48;2;0;0;0mblack") == [("black", "bg0")]
    assert spans(ESC + b"[38:2::255:255:255mwhite") == [("white", "fg15")]
    assert spans(ESC + b"[38:5:208morange") == [("orange", "fg3")]
    assert from_256(244) in (7, 8)
    assert from_256(300) is None
    # An incomplete extended colour changes nothing and does not swallow what follows.
    assert spans(ESC + b"[38;5m" + b"x" + ESC + b"[1my") == [("x", ""), ("y", "ab")]


def test_inverse_swaps_the_colours():
    assert spans(ESC + b"[7minv") == [("inv", "fgi bgi")]
    assert spans(ESC + b"[31;42;7mx") == [("x", "fg2 bg1")]


def test_the_style_carries_to_the_next_line():
    first, style = render(ESC + b"[33mwarning: start")
    second, style = render(b"still yellow" + ESC + b"[0m", style)
    assert [s.classes for s in first] == ["fg3"]
    assert [(s.text, s.classes) for s in second] == [("still yellow", "fg3")]
    assert style == PLAIN


@pytest.mark.parametrize(
    "raw,shown",
    [
        (ESC + b"[2J" + ESC + b"[Hcleared", "cleared"),  # cursor and screen control
        (ESC + b"]0;window title\x07after", "after"),  # OSC, BEL-terminated
        (ESC + b"]8;;javascript:alert(1)" + ESC + b"\\link" + ESC + b"]8;;" + ESC + b"\\", "link"),
        (ESC + b"]0;unterminated title", ""),
        (ESC + b"(Bcharset", "charset"),
        (ESC + b"Pdevice control" + ESC + b"\\x", "x"),
        (b"\xc2\x9b31mC1 CSI", "C1 CSI"),
        (b"bell\x07 back\x08 nul\x00 del\x7f", "bell back nul del"),
        (b"tab\tkept", "tab\tkept"),
        (b"trailing escape " + ESC, "trailing escape "),
        (b"half a CSI " + ESC + b"[12", "half a CSI "),
    ],
)
def test_other_escape_sequences_and_controls_are_dropped(raw, shown):
    got, _ = render(raw)
    assert plain(got) == shown
    assert "\x1b" not in plain(got)


def test_carriage_returns_keep_what_a_terminal_shows():
    assert plain(render(b"10%\r50%\r100% done")[0]) == "100% done"
    assert plain(render(b"windows line\r")[0]) == "windows line"
    assert spans(ESC + b"[32m10%\r" + ESC + b"[32m100%" + ESC + b"[0m") == [("100%", "fg2")]


def test_markup_stays_text_and_bad_bytes_are_replaced():
    got, _ = render(b'<script>alert(1)</script> "><img src=x onerror=alert(1)> \xff\xfe')
    assert plain(got) == '<script>alert(1)</script> "><img src=x onerror=alert(1)> \ufffd\ufffd'


def test_bidirectional_overrides_are_shown_not_obeyed():
    got, _ = render("admin\u202etxt.exe\u2066x".encode())
    assert plain(got) == "admin\\u202etxt.exe\\u2066x"


def test_classes_come_only_from_a_fixed_vocabulary():
    import re

    allowed = re.compile(r"^(?:(?:fg|bg)(?:1[0-5]|[0-9]|i)|a[bdius])$")
    seen = set()
    for code in range(0, 110):
        for extra in (b"", b";1", b";7", b";38;5;200", b";48;2;1;2;3"):
            for s in render(ESC + b"[" + str(code).encode() + extra + b"mx")[0]:
                seen.update(s.classes.split())
    assert seen and all(allowed.match(c) for c in seen), seen


def test_huge_parameters_do_not_hurt():
    assert apply_sgr(PLAIN, "9" * 5000) == PLAIN
    assert apply_sgr(PLAIN, ";" * 5000 + "31") == Style(fg=1)
    assert render(b"x" * 100_000)[0] == [Span("x" * 100_000)]
