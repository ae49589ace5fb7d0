"""Terminal output to safe, styled text for the browser (pure: no I/O).

`render(data, style)` turns one log line's bytes into spans of plain text, each
with the CSS classes of its SGR style (colours, bold, italic, ...). Every other
escape sequence (cursor movement, OSC titles and hyperlinks, charset switches)
is dropped; control characters are dropped too, except TAB. A carriage return
keeps what a terminal would show: the text after it (a progress bar's last
state). Bidirectional overrides are shown as visible ``\\u202e`` text, so a line
cannot read differently from what it is. Invalid UTF-8 becomes U+FFFD.

The text of a span is plain text, never markup: callers insert it with
``textContent`` or HTML escaping. Class names come only from this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

# CSI (ESC [ or the 8-bit 0x9B) with its parameters; OSC up to BEL or ST (or the
# end of the line when unterminated); any other two-character ESC sequence.
_ESCAPE = re.compile(
    r"(?:\x1b\[|\x9b)([0-?]*)[ -/]*([@-~])?"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x1b[ -/]*[0-~]?"
)
_DROP = {c: None for c in [*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F, *range(0x80, 0xA0)]}
for _code in [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C]:
    _DROP[_code] = f"\\u{_code:04x}"
del _code

# The xterm palette's 16 colours (for mapping 256-colour and RGB values to them).
_PALETTE = (
    (0, 0, 0),
    (205, 0, 0),
    (0, 205, 0),
    (205, 205, 0),
    (0, 0, 238),
    (205, 0, 205),
    (0, 205, 205),
    (229, 229, 229),
    (127, 127, 127),
    (255, 0, 0),
    (0, 255, 0),
    (255, 255, 0),
    (92, 92, 255),
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 255),
)


@dataclass(frozen=True)
class Style:
    """The SGR state: a colour is a palette index 0-15, or None for the default."""

    fg: int | None = None
    bg: int | None = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False
    strike: bool = False
    inverse: bool = False

    @property
    def classes(self) -> str:
        fg, bg = self.fg, self.bg
        names = []
        if self.inverse:
            names.append(f"fg{bg}" if bg is not None else "fgi")
            names.append(f"bg{fg}" if fg is not None else "bgi")
        else:
            names += [f"fg{fg}"] if fg is not None else []
            names += [f"bg{bg}"] if bg is not None else []
        flags = (
            (self.bold, "ab"),
            (self.dim, "ad"),
            (self.italic, "ai"),
            (self.underline, "au"),
            (self.strike, "as"),
        )
        names += [name for on, name in flags if on]
        return " ".join(names)


PLAIN = Style()


@dataclass(frozen=True)
class Span:
    text: str
    classes: str = ""  # space-separated CSS class names; "" for default style


def nearest(r: int, g: int, b: int) -> int:
    """The palette index closest to an RGB colour."""

    def distance(i: int) -> int:
        pr, pg, pb = _PALETTE[i]
        return (pr - r) ** 2 + (pg - g) ** 2 + (pb - b) ** 2

    return min(range(16), key=distance)


def from_256(n: int) -> int | None:
    if not 0 <= n <= 255:
        return None
    if n < 16:
        return n
    if n >= 232:  # the grey ramp
        level = 8 + (n - 232) * 10
        return nearest(level, level, level)
    n -= 16
    steps = (0, 95, 135, 175, 215, 255)
    return nearest(steps[n // 36], steps[n // 6 % 6], steps[n % 6])


def _extended(params: list[list[int | None]], i: int) -> tuple[int | None, int]:
    """A 38/48 colour starting at params[i]: (palette index or None, params used)."""
    head = params[i]
    if len(head) > 1:  # colon form: 38:5:n or 38:2:[cs]:r:g:b, all in one parameter
        sub = [x or 0 for x in head[1:]]
        if sub[:1] == [5] and len(sub) >= 2:
            return from_256(sub[1]), 1
        if sub[:1] == [2] and len(sub) >= 4:
            r, g, b = sub[-3:]
            return nearest(r, g, b), 1
        return None, 1
    rest = [(p[0] or 0) for p in params[i + 1 : i + 5]]
    if rest[:1] == [5] and len(rest) >= 2:
        return from_256(rest[1]), 3
    if rest[:1] == [2] and len(rest) >= 4:
        return nearest(*rest[1:4]), 5
    return None, 1 + len(rest[:1])


_FLAG_ON = {1: "bold", 2: "dim", 3: "italic", 4: "underline", 7: "inverse", 9: "strike"}
_FLAG_OFF = {
    22: ("bold", "dim"),
    23: ("italic",),
    24: ("underline",),
    27: ("inverse",),
    29: ("strike",),
}


def apply_sgr(style: Style, text: str) -> Style:
    """The style after one SGR sequence's parameters ("1;31", "38;5;208", "")."""
    params: list[list[int | None]] = []
    for part in text.split(";"):
        params.append([int(x) if x.isdigit() and len(x) <= 6 else None for x in part.split(":")])
    i = 0
    while i < len(params):
        code = params[i][0] or 0
        used = 1
        if code == 0:
            style = PLAIN
        elif code in _FLAG_ON:
            style = replace(style, **{_FLAG_ON[code]: True})
        elif code in _FLAG_OFF:
            style = replace(style, **dict.fromkeys(_FLAG_OFF[code], False))
        elif 30 <= code <= 37:
            style = replace(style, fg=code - 30)
        elif 90 <= code <= 97:
            style = replace(style, fg=code - 90 + 8)
        elif 40 <= code <= 47:
            style = replace(style, bg=code - 40)
        elif 100 <= code <= 107:
            style = replace(style, bg=code - 100 + 8)
        elif code == 39:
            style = replace(style, fg=None)
        elif code == 49:
            style = replace(style, bg=None)
        elif code in (38, 48):
            colour, used = _extended(params, i)
            if colour is not None:
                style = replace(style, **{"fg" if code == 38 else "bg": colour})
        i += used
    return style


# Anything render() must look at; most lines hold none of it.
_SPECIAL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _clean(text: str) -> str:
    return text.translate(_DROP)


def _carriage(text: str) -> str:
    """What a terminal shows of a line holding carriage returns: the last
    overwrite (a trailing CR, as in CRLF, changes nothing)."""
    body = text.rstrip("\r")
    cut = body.rfind("\r")
    return body[cut + 1 :] if cut != -1 else body


def render(data: bytes, style: Style = PLAIN) -> tuple[list[Span], Style]:
    """One line's bytes -> (spans of safe text, the style in effect after it)."""
    text = data.decode("utf-8", "replace")
    if not _SPECIAL.search(text):
        classes = "" if style is PLAIN else style.classes
        return ([Span(text, classes)] if text else []), style
    if "\r" in text:
        text = _carriage(text)
    spans: list[Span] = []
    pos = 0
    if "\x1b" in text or "\x9b" in text:
        for m in _ESCAPE.finditer(text):
            if m.start() > pos:
                spans.append(Span(_clean(text[pos : m.start()]), style.classes))
            pos = m.end()
            if m.group(2) == "m" and m.group(1) is not None and m.group(1).isascii():
                if re.fullmatch(r"[0-9;:]*", m.group(1)):
                    style = apply_sgr(style, m.group(1))
    if pos < len(text):
        spans.append(Span(_clean(text[pos:]), style.classes))
    return _merge(spans), style


def _merge(spans: list[Span]) -> list[Span]:
    out: list[Span] = []
    for span in spans:
        if not span.text:
            continue
        if out and out[-1].classes == span.classes:
            out[-1] = Span(out[-1].text + span.text, span.classes)
        else:
            out.append(span)
    return out


def plain(spans: list[Span]) -> str:
    return "".join(s.text for s in spans)
