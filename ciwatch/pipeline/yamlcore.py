"""YAML 1.2 core-schema scalars, and how paths and values are shown in messages.

Pure helpers for ciwatch.yamlsafe (and ciwatch.validation). Only the core
types are ever constructed; any other tag is refused by name.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ciwatch.errors import CiwatchError

Path = tuple[str | int, ...]

_CORE = "tag:yaml.org,2002:"
_NULL = {"", "~", "null", "Null", "NULL"}
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}
_INT = re.compile(r"[-+]?[0-9]+")
_OCT = re.compile(r"0o[0-7]+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)")
_NAN = re.compile(r"\.(nan|NaN|NAN)")
_MAX_DIGITS = 4000  # int() refuses more than 4300 digits; nobody means such a number
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class BadScalar(CiwatchError, ValueError):
    """A scalar cannot be read with its tag (or the tag is not allowed)."""


def tag_name(tag: str) -> str:
    """`tag:yaml.org,2002:python/object` -> `!!python/object`, as users write it."""
    return "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag


def construct(text: str, tag: str | None, plain: bool) -> Any:
    """The value of a scalar: `tag` is None (untagged) or a full tag URI."""
    if tag is None:
        return _resolve(text) if plain else text
    kind = tag[len(_CORE) :] if tag.startswith(_CORE) else None
    if kind in ("str", "timestamp"):
        return text
    if kind in ("int", "float", "bool", "null"):
        value = _resolve(text)
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "null": value is None,
        }[kind]
        if not ok:
            raise BadScalar(f"cannot read {quote(text)} as !!{kind}")
        return float(value) if kind == "float" else value
    raise BadScalar(
        f"unsupported tag {quote(tag_name(tag))}: only plain YAML types are read "
        "(strings, numbers, booleans, null, lists, mappings)"
    )


def _resolve(text: str) -> Any:
    if text in _NULL:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if len(text) > _MAX_DIGITS and (_INT.fullmatch(text) or _FLOAT.fullmatch(text)):
        raise BadScalar(f"number with {len(text)} digits is too long; quote it if it is text")
    if _INT.fullmatch(text):
        return int(text)
    if _OCT.fullmatch(text):
        return int(text[2:], 8)
    if _HEX.fullmatch(text):
        return int(text[2:], 16)
    if _FLOAT.fullmatch(text):
        return float(text)
    if _INF.fullmatch(text):
        return float("-inf") if text.startswith("-") else float("inf")
    if _NAN.fullmatch(text):
        return float("nan")
    return text


def format_path(path: Path) -> str:
    """('steps', 2, 'timeout') -> 'steps[2].timeout'; odd keys are quoted."""
    out = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _IDENT.fullmatch(part):
            out.append(f".{part}" if out else part)
        else:
            out.append(f"[{json.dumps(part)}]")
    return "".join(out)


def quote(value: Any, limit: int = 60) -> str:
    """A value for a message: quoted, control characters escaped, long text cut."""
    if isinstance(value, str):
        return repr(value if len(value) <= limit else value[:limit] + "…")
    if isinstance(value, (list, tuple)):
        return (
            "["
            + ", ".join(quote(v, limit) for v in value[:10])
            + (", …]" if len(value) > 10 else "]")
        )
    return repr(value)


def describe(value: Any) -> str:
    """What kind of value this is, for "expected X, got Y" messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
