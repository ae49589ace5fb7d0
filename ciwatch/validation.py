"""Pydantic validation of a loaded YAML document, with errors as Diagnostics.

Generic: used for pipeline files and for the daemon config. Every problem is
reported at once, each at the line and column of the offending value (or key),
in words a user understands rather than pydantic's.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from ciwatch.errors import DocumentError
from ciwatch.pipeline.plan import Diagnostic
from ciwatch.pipeline.yamlcore import describe, format_path, quote

if TYPE_CHECKING:
    from ciwatch.yamlsafe import YamlDoc

__all__ = ["validate", "diagnostics"]

M = TypeVar("M", bound=BaseModel)
_MAX_REPORTED = 100
# Parts of a pydantic error location that name a union member, not a key.
_TYPE_LOC = re.compile(r"str|int|float|bool|none|list|dict|tuple|set|bytes|[a-z-]+\[.*\]")
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping",
    "none_required": "null",
}


def validate(
    model_cls: type[M],
    doc: YamlDoc,
    filename: str | None = None,
    *,
    context: Any = None,
    error: type[DocumentError] = DocumentError,
) -> M:
    """`model_cls` validated from `doc.data`; raises `error` listing every problem."""
    try:
        return model_cls.model_validate(doc.data, context=context)
    except ValidationError as exc:
        raise error(diagnostics(model_cls, doc, exc, filename)) from None


def diagnostics(
    model_cls: type[BaseModel], doc: YamlDoc, exc: ValidationError, filename: str | None = None
) -> list[Diagnostic]:
    """One Diagnostic per pydantic error, sorted by position, duplicates dropped."""
    name = doc.filename if filename is None else filename
    found: dict[Diagnostic, None] = {}
    for err in exc.errors():
        found.setdefault(_diagnostic(model_cls, doc, err, name), None)
    out = sorted(found, key=lambda d: (d.line, d.col))
    if len(out) > _MAX_REPORTED:
        rest = len(out) - _MAX_REPORTED
        last = out[_MAX_REPORTED - 1]
        out = out[:_MAX_REPORTED] + [
            Diagnostic(name, last.line, last.col, "", f"… and {rest} more problems")
        ]
    return out


def _diagnostic(model_cls: type[BaseModel], doc: YamlDoc, err: Any, filename: str) -> Diagnostic:
    path, at_key = _resolve(tuple(err["loc"]), doc.data)
    kind = err["type"]
    if kind == "extra_forbidden":
        message = _unknown_key(str(path[-1]), _model_keys(model_cls, path[:-1]))
        at_key = True
    else:
        message = _message(err)
    line, col = doc.key_position(path) if at_key else doc.position(path)
    return Diagnostic(filename, line, col, format_path(path), message)


def _resolve(loc: tuple, data: Any) -> tuple[tuple, bool]:
    """The document path an error location points at, and whether at a key."""
    path: list[Any] = []
    node, found, at_key = data, True, False
    for i, part in enumerate(loc):
        if part == "[key]":
            at_key = True
        elif found and isinstance(node, Mapping) and isinstance(part, str) and part in node:
            node = node[part]
            path.append(part)
        elif found and isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
        elif isinstance(part, int) or _TYPE_LOC.fullmatch(part) or i < len(loc) - 1:
            continue  # a union member's name, or an item of a one-value shorthand
        else:
            path.append(part)  # a missing key
            found = False
    return tuple(path), at_key


def _message(err: Any) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "missing":
        return "required key is missing"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {describe(value)}"
    if kind in ("too_short", "string_too_short"):
        least = ctx.get("min_length", 1)
        if least == 1:
            return "must not be empty"
        unit = "characters" if kind == "string_too_short" else "items"
        return f"needs at least {least} {unit}"
    if kind == "too_long":
        return f"has {ctx.get('actual_length', '?')} items; at most {ctx.get('max_length')} allowed"
    if kind == "string_too_long":
        return (
            f"is {len(value) if isinstance(value, str) else '?'} characters long; "
            f"at most {ctx.get('max_length')} allowed"
        )
    if kind in ("literal_error", "enum"):
        return f"expected {ctx.get('expected')}, got {quote(value)}"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "less_than_equal": ("at most", "le"),
        "greater_than": ("greater than", "gt"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx.get(key)}, got {quote(value)}"
    if kind == "string_pattern_mismatch":
        return f"{quote(value)} does not match the pattern {ctx.get('pattern')}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    return str(err.get("msg", "invalid value"))


def _unknown_key(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown key {quote(key)}; did you mean {quote(close[0])}?"
    if allowed and len(allowed) <= 20:
        return f"unknown key {quote(key)}; expected one of: {', '.join(sorted(allowed))}"
    return f"unknown key {quote(key)}"


def _model_keys(model_cls: type[BaseModel], path: tuple) -> list[str]:
    """The keys a model accepts at `path` (empty when it cannot be told)."""
    current: Any = model_cls
    for part in path:
        current = _descend(current, part)
        if current is None:
            return []
    for candidate in _members(current):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return [f.alias or name for name, f in candidate.model_fields.items() if not f.exclude]
    return []


def _members(tp: Any) -> list[Any]:
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [m for arg in get_args(tp) for m in _members(arg) if m is not type(None)]
    return [tp]


def _descend(tp: Any, part: Any) -> Any:
    for candidate in _members(tp):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            for name, f in candidate.model_fields.items():
                if (f.alias or name) == part:
                    return f.annotation
            continue
        origin, args = get_origin(candidate), get_args(candidate)
        if isinstance(part, int) and origin in (list, tuple, set, frozenset, Sequence) and args:
            return args[0]
        if origin in (dict, Mapping) and len(args) == 2:
            return args[1]
    return None
