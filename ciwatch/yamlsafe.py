"""A guarded YAML loader that keeps the position of every value and key.

Used for pipeline files and the daemon config. The document is built from
PyYAML's *event* stream by an iterative builder (never PyYAML's recursive
composer), so hostile input is refused before it can hurt: size, encoding,
nesting depth, alias expansion and tags are all checked while scanning.

Plain scalars follow the YAML 1.2 core schema: ``yes``/``no``/``on``/``off``
stay strings, ``0755`` is the integer 755, timestamps stay strings. Mapping
keys are always strings (``1: x`` has the key ``"1"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from ciwatch.errors import DocumentError
from ciwatch.pipeline import yamltext
from ciwatch.pipeline.plan import Diagnostic, Severity
from ciwatch.pipeline.yamlbuild import Builder, Node, Stop
from ciwatch.pipeline.yamlcore import Path, format_path, quote

__all__ = ["YamlDoc", "load", "format_path", "quote", "Path"]

_PARSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # event parsing only
_MAX_REPORTED = 50


@dataclass(frozen=True)
class YamlDoc:
    """A loaded document: plain data plus 1-based (line, col) positions by path."""

    filename: str
    data: Any
    value_marks: dict[Path, tuple[int, int]] = field(default_factory=dict, repr=False)
    key_marks: dict[Path, tuple[int, int]] = field(default_factory=dict, repr=False)
    # Source text of plain numbers that do not print back as written (3.10 -> 3.1).
    number_texts: dict[Path, str] = field(default_factory=dict, repr=False)

    def position(self, path: Path) -> tuple[int, int]:
        """Where the value at `path` starts, or its nearest existing ancestor."""
        path = tuple(path)
        while path not in self.value_marks and path:
            path = path[:-1]
        return self.value_marks.get(path, (1, 1))

    def key_position(self, path: Path) -> tuple[int, int]:
        """Where the mapping key ending `path` is written (else as `position`)."""
        path = tuple(path)
        return self.key_marks.get(path) or self.position(path)

    def number_text(self, path: Path) -> str | None:
        return self.number_texts.get(tuple(path))

    def diagnostic(
        self, path: Path, message: str, *, key: bool = False, severity: Severity = Severity.ERROR
    ) -> Diagnostic:
        line, col = self.key_position(path) if key else self.position(path)
        return Diagnostic(self.filename, line, col, format_path(path), message, severity)


def _flatten(root: Node) -> tuple[Any, dict, dict, dict]:
    """Plain data and position maps; iterative, bounded by max_nodes."""
    values: dict[Path, tuple[int, int]] = {}
    keys: dict[Path, tuple[int, int]] = {}
    numbers: dict[Path, str] = {}
    holder: list[Any] = [None]
    todo: list[tuple[Node, Path, Any, Any]] = [(root, (), holder, 0)]
    while todo:
        node, path, target, slot = todo.pop()
        values[path] = (node.line, node.col)
        if node.kind == "scalar":
            target[slot] = node.value
            if node.text:
                numbers[path] = node.text
        elif node.kind == "seq":
            items: list[Any] = [None] * len(node.value)
            target[slot] = items
            todo.extend((child, path + (i,), items, i) for i, child in enumerate(node.value))
        else:
            mapping: dict[str, Any] = {}
            target[slot] = mapping
            for key, (key_node, child) in node.value.items():
                mapping[key] = None  # keeps file order
                keys[path + (key,)] = (key_node.line, key_node.col)
                todo.append((child, path + (key,), mapping, key))
    return holder[0], values, keys, numbers


def load(
    data: bytes,
    filename: str,
    *,
    max_bytes: int = 1 << 20,
    max_depth: int = 64,
    max_nodes: int = 100_000,
    label: str = "file",
    allow_empty: bool = False,
) -> YamlDoc:
    """Load one YAML document from bytes; raise DocumentError listing every problem."""
    text, problem = yamltext.decode(data, filename, max_bytes, label)
    if text is None:
        raise DocumentError([problem])
    builder = Builder(filename, max_depth, max_nodes)
    builder.errors.extend(yamltext.bad_characters(text, filename, _MAX_REPORTED))
    if builder.errors:
        raise DocumentError(builder.errors)
    try:
        for event in yaml.parse(text, Loader=_PARSER):
            builder.feed(event)
    except Stop:
        pass
    except yaml.MarkedYAMLError as exc:
        diag = _syntax(exc, text, filename)
        if "maximum nesting depth" in (exc.problem or ""):
            # Newer libyaml stops deep nesting itself while scanning ahead,
            # before the depth check above sees the events: say it the same way.
            diag = replace(diag, message=f"nesting is deeper than {max_depth} levels")
        builder.errors.append(diag)
    except yaml.YAMLError as exc:  # ReaderError: no mark, only an index
        line, col = yamltext.line_col(text, getattr(exc, "position", 0) or 0)
        builder.errors.append(Diagnostic(filename, line, col, "", f"unreadable YAML: {exc}"))
    if builder.errors:
        raise DocumentError(sorted(builder.errors, key=lambda d: (d.line, d.col))[:_MAX_REPORTED])
    root = builder.root
    if root is None or (root.kind == "scalar" and root.text == ""):
        if allow_empty:
            return YamlDoc(filename, None)
        raise DocumentError([Diagnostic(filename, 1, 1, "", "empty document")])
    plain, values, keys, numbers = _flatten(root)
    return YamlDoc(filename, plain, values, keys, numbers)


def _syntax(exc: yaml.MarkedYAMLError, text: str, filename: str) -> Diagnostic:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line, mark.column) if mark else (0, 0)
    lines = text.split("\n")
    row = lines[line] if line < len(lines) else ""
    if col < len(row) and row[col] == "\t" or "tab" in (exc.problem or ""):
        tab = row.find("\t") if "\t" in row else col
        return Diagnostic(
            filename,
            line + 1,
            tab + 1,
            "",
            "tab character used for indentation; indent with spaces",
        )
    message = exc.problem or "invalid YAML"
    if exc.context and exc.context_mark and exc.context_mark is not mark:
        message = f"{message} ({exc.context} at line {exc.context_mark.line + 1})"
    return Diagnostic(filename, line + 1, col + 1, "", f"invalid YAML: {message}")
