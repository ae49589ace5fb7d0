"""Building a YAML document from PyYAML's event stream, with every check on the way.

Helpers for ciwatch.yamlsafe. The builder is iterative (PyYAML's composer is
recursive and crashes on deep nesting), counts the nodes that aliases would
expand to (so "billion laughs" is refused without expanding anything), refuses
tags beyond the core types, duplicate and non-scalar keys, and applies merge
keys (`<<`). Nodes keep their 1-based position.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from ciwatch.pipeline.plan import Diagnostic
from ciwatch.pipeline.yamlcore import BadScalar, Path, construct, format_path, quote, tag_name

__all__ = ["Builder", "Node", "Stop"]


class Node:
    __slots__ = ("kind", "value", "line", "col", "size", "text", "plain")

    def __init__(
        self, kind: str, value: Any, mark: Any, text: str | None = None, plain: bool = False
    ) -> None:
        self.kind, self.value, self.text, self.plain = kind, value, text, plain
        self.line, self.col = mark.line + 1, mark.column + 1
        self.size = 1


class _Frame:
    """A collection being built. `pending` is the key awaiting its value."""

    __slots__ = ("node", "anchor", "pending", "merges", "first_line")

    def __init__(self, node: Node, anchor: str | None) -> None:
        self.node, self.anchor = node, anchor
        self.pending: Any = None
        self.merges: list[Node] = []
        self.first_line: dict[str, int] = {}

    def slot(self) -> Any:
        """This frame's part of the path to the node being read (None: a key)."""
        if self.node.kind == "seq":
            return len(self.node.value)
        if isinstance(self.pending, tuple):
            return self.pending[0]
        return "<<" if self.pending is _MERGE else None


_MERGE, _BAD_KEY = object(), object()


class Stop(Exception):
    """Scanning cannot go on (depth, size, syntax); diagnostics say why."""


class Builder:
    def __init__(self, filename: str, max_depth: int, max_nodes: int) -> None:
        self.filename, self.max_depth, self.max_nodes = filename, max_depth, max_nodes
        self.errors: list[Diagnostic] = []
        self.stack: list[_Frame] = []
        self.anchors: dict[str, Node] = {}
        self.open_anchors: set[str] = set()
        self.root: Node | None = None
        self.aliases = False
        self.documents = 0

    def error(self, mark: Any, message: str, path: Path | None = None) -> None:
        if path is None:
            path = self.path(self.stack)
        self.errors.append(
            Diagnostic(self.filename, mark.line + 1, mark.column + 1, format_path(path), message)
        )

    @staticmethod
    def path(frames: list[_Frame]) -> Path:
        return tuple(s for s in (f.slot() for f in frames) if s is not None)

    def feed(self, event: Any) -> None:
        if isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                self.error(
                    event.start_mark,
                    "a second document starts here ('---'); "
                    "the file must hold exactly one document",
                    (),
                )
                raise Stop
        elif isinstance(event, yaml.ScalarEvent):
            self.add(self.scalar(event), event.anchor)
        elif isinstance(event, yaml.AliasEvent):
            self.alias(event)
        elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            self.start(event)
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            frame = self.stack.pop()
            if frame.node.kind == "map":
                self.finish_map(frame)
            if frame.anchor is not None:
                self.open_anchors.discard(frame.anchor)
            self.add(frame.node, frame.anchor)

    def scalar(self, event: Any) -> Node:
        tag = None if event.tag in (None, "!") else event.tag
        plain = bool(event.implicit[0]) and event.tag is None
        try:
            value = construct(event.value, tag, plain)
        except BadScalar as exc:
            self.error(event.start_mark, str(exc))
            value = event.value
        text = "" if plain and event.value == "" else None  # "": an empty plain scalar
        if plain and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not (isinstance(value, float) and math.isnan(value)) and str(value) != event.value:
                text = event.value
        return Node("scalar", value, event.start_mark, text, plain=plain)

    def alias(self, event: Any) -> None:
        self.aliases = True
        name = event.anchor
        if name in self.open_anchors:
            self.error(event.start_mark, f"alias *{name} refers to a node that contains it")
            self.add(Node("scalar", None, event.start_mark), None)
        elif name not in self.anchors:
            self.error(event.start_mark, f"alias *{name} has no anchor &{name} before it")
            self.add(Node("scalar", None, event.start_mark), None)
        else:
            self.add(self.anchors[name], None, alias_mark=event.start_mark)

    def start(self, event: Any) -> None:
        kind = "seq" if isinstance(event, yaml.SequenceStartEvent) else "map"
        if len(self.stack) >= self.max_depth:
            self.error(event.start_mark, f"nesting is deeper than {self.max_depth} levels", ())
            raise Stop
        if event.tag not in (None, "!", f"tag:yaml.org,2002:{kind}"):
            self.error(
                event.start_mark,
                f"unsupported tag {quote(tag_name(event.tag))}: "
                "only plain YAML types are read (strings, numbers, booleans, "
                "null, lists, mappings)",
            )
        node = Node(kind, [] if kind == "seq" else {}, event.start_mark)
        if event.anchor is not None:
            self.open_anchors.add(event.anchor)
        self.stack.append(_Frame(node, event.anchor))

    def add(self, node: Node, anchor: str | None, alias_mark: Any = None) -> None:
        if anchor is not None:
            self.anchors[anchor] = node
        if not self.stack:
            self.root = node
            return
        frame = self.stack[-1]
        parent = frame.node
        parent.size += node.size
        if parent.size > self.max_nodes:
            what = "anchors and aliases expand" if self.aliases else "the document has"
            self.error(
                alias_mark or _Mark(node),
                f"{what} to more than {self.max_nodes} nodes"
                if self.aliases
                else f"{what} more than {self.max_nodes} nodes",
                (),
            )
            raise Stop
        if parent.kind == "seq":
            parent.value.append(node)
        elif frame.pending is None:
            frame.pending = self.key(frame, node, alias_mark)
        else:
            self.put(frame, node, alias_mark)

    def key(self, frame: _Frame, node: Node, alias_mark: Any) -> Any:
        if node.kind != "scalar" or alias_mark is not None:
            self.error(
                alias_mark or _Mark(node),
                "mapping keys must be plain strings, not lists, mappings or aliases",
            )
            return _BAD_KEY
        if node.plain and node.value == "<<":
            return _MERGE
        key = node.value if isinstance(node.value, str) else _key_text(node.value)
        first = frame.first_line.get(key)
        if first is not None:
            self.error(
                _Mark(node),
                f"duplicate key {quote(key)} (first defined at line {first})",
                self.path(self.stack[:-1]) + (key,),
            )
            return _BAD_KEY
        frame.first_line[key] = node.line
        return (key, node)

    def put(self, frame: _Frame, node: Node, alias_mark: Any) -> None:
        pending, frame.pending = frame.pending, None
        if pending is _MERGE:
            sources = node.value if node.kind == "seq" else [node]
            if not sources or any(s.kind != "map" for s in sources):
                self.error(
                    alias_mark or _Mark(node),
                    "a merge key '<<' needs a mapping or a list of mappings",
                    self.path(self.stack[:-1]) + ("<<",),
                )
            else:
                frame.merges.extend(sources)
        elif pending is not _BAD_KEY:
            key, key_node = pending
            frame.node.value[key] = (key_node, node)

    def finish_map(self, frame: _Frame) -> None:
        node = frame.node
        if frame.merges:
            merged: dict[str, tuple[Node, Node]] = {}
            for source in frame.merges:  # earlier mappings win, as in YAML merge
                for key, entry in source.value.items():
                    merged.setdefault(key, entry)
            merged.update(node.value)  # explicit keys override merged ones
            node.value = merged
        node.size = 1 + sum(1 + v.size for _, v in node.value.values())


class _Mark:
    """A mark-like view of a node's position (0-based, like PyYAML marks)."""

    def __init__(self, node: Node) -> None:
        self.line, self.column = node.line - 1, node.col - 1


def _key_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
