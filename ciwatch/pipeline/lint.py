"""Reading a pipeline file: YAML -> validated Spec, plus the checks across steps.

`parse` raises PipelineError with every error at once; `lint` returns errors
and warnings and never raises for bad input. The cross-step checks (`check`)
work on the raw document so they run even when other parts are invalid.
"""

from __future__ import annotations

import difflib
from typing import Any

from ciwatch import validation, yamlsafe  # modules, not names: yamlsafe imports this package
from ciwatch.errors import DocumentError, PipelineError
from ciwatch.pipeline.compile import limit_warnings
from ciwatch.pipeline.plan import Diagnostic, Limits, Severity
from ciwatch.pipeline.spec import Spec
from ciwatch.pipeline.yamlcore import Path, quote

__all__ = ["parse", "lint", "check", "MAX_BYTES"]

MAX_BYTES = 1 << 20
_LIMITS = Limits()
_IMPLICIT = object()  # a dependency on the previous step, from file order


def parse(
    data: bytes, filename: str, limits: Limits = _LIMITS, *, max_bytes: int = MAX_BYTES
) -> Spec:
    """The validated spec of a pipeline file; PipelineError lists every error."""
    spec, found = _analyse(data, filename, limits, max_bytes)
    errors = [d for d in found if d.severity is Severity.ERROR]
    if errors or spec is None:
        raise PipelineError(errors)
    return spec


def lint(
    data: bytes, filename: str, limits: Limits = _LIMITS, *, max_bytes: int = MAX_BYTES
) -> list[Diagnostic]:
    """Every error and warning in a pipeline file, by position; never raises for bad input."""
    return _analyse(data, filename, limits, max_bytes)[1]


def _analyse(
    data: bytes, filename: str, limits: Limits, max_bytes: int
) -> tuple[Spec | None, list[Diagnostic]]:
    try:
        doc = yamlsafe.load(data, filename, max_bytes=max_bytes, label="pipeline file")
    except DocumentError as exc:
        return None, list(exc.diagnostics)
    found: list[Diagnostic] = []
    spec: Spec | None = None
    try:
        spec = validation.validate(Spec, doc, context={"limits": limits})
    except DocumentError as exc:
        found.extend(exc.diagnostics)
    semantic = check(doc)
    found.extend(semantic)
    if spec is not None:
        spec.with_source(doc, tuple(d for d in semantic if d.severity is Severity.WARNING))
        found.extend(limit_warnings(spec, limits))
    return spec, sorted(dict.fromkeys(found), key=lambda d: (d.line, d.col))


def check(doc: Any) -> list[Diagnostic]:
    """Problems across steps (names, depends_on, cycles) and lossy numbers.

    Anything malformed is skipped here: validation reports it.
    """
    data = doc.data
    steps = data.get("steps") if isinstance(data, dict) else None
    out = _number_warnings(doc)
    if not isinstance(steps, list):
        return out
    names: list[str | None] = []
    first: dict[str, int] = {}
    for i, step in enumerate(steps):
        raw = step.get("name") if isinstance(step, dict) else 0
        name = f"step {i + 1}" if raw is None else raw if isinstance(raw, str) else None
        names.append(name)
        if name is None:
            continue
        if name in first:
            line = doc.position(("steps", first[name]))[0]
            out.append(
                doc.diagnostic(
                    ("steps", i, "name"),
                    f"duplicate step name {quote(name)} (also the name of the step at line {line})",
                )
            )
        else:
            first[name] = i
    edges = [_edges(doc, i, step, names, first, out) for i, step in enumerate(steps)]
    out.extend(_cycles(doc, edges, names))
    return out


def _edges(
    doc: Any,
    i: int,
    step: Any,
    names: list[str | None],
    first: dict[str, int],
    out: list[Diagnostic],
) -> list[tuple[int, object]]:
    """Steps that step `i` waits for, as (index, _IMPLICIT or its list position)."""
    if not isinstance(step, dict):
        return []
    deps = step.get("depends_on")
    if deps is None:
        return [(i - 1, _IMPLICIT)] if i else []
    single = isinstance(deps, str)  # the one-name shorthand
    if single:
        deps = [deps]
    if not isinstance(deps, list):
        return []
    found = []
    for j, dep in enumerate(deps):
        if not isinstance(dep, str):
            continue
        path: Path = ("steps", i, "depends_on") + (() if single else (j,))
        if dep == names[i]:
            out.append(doc.diagnostic(path, "a step cannot depend on itself"))
        elif dep not in first:
            close = difflib.get_close_matches(dep, list(first), n=1, cutoff=0.6)
            hint = f"; did you mean {quote(close[0])}?" if close else ""
            out.append(doc.diagnostic(path, f"unknown step {quote(dep)}{hint}"))
        else:
            found.append((first[dep], j))
    return found


def _cycles(
    doc: Any, edges: list[list[tuple[int, object]]], names: list[str | None]
) -> list[Diagnostic]:
    """One error per distinct dependency cycle, at its first step in the file."""
    out: list[Diagnostic] = []
    seen: set[frozenset[int]] = set()
    state = [0] * len(edges)  # 0 new, 1 on the current path, 2 done
    for root in range(len(edges)):
        if state[root]:
            continue
        path: list[int] = [root]
        todo = [iter(edges[root])]
        state[root] = 1
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                todo.pop()
                continue
            target = nxt[0]
            if state[target] == 0:
                state[target] = 1
                path.append(target)
                todo.append(iter(edges[target]))
            elif state[target] == 1 and target != path[-1]:
                ring = path[path.index(target) :]
                if frozenset(ring) not in seen:
                    seen.add(frozenset(ring))
                    out.append(_cycle_error(doc, ring, edges, names))
    return out


def _cycle_error(
    doc: Any, ring: list[int], edges: list[list[tuple[int, object]]], names: list[str | None]
) -> Diagnostic:
    start = ring.index(min(ring))
    ring = ring[start:] + ring[:start]
    shown = " -> ".join(str(names[i]) for i in ring + ring[:1])
    implicit = [
        names[a]
        for a, b in zip(ring, ring[1:] + ring[:1], strict=True)
        if any(t == b and how is _IMPLICIT for t, how in edges[a])
    ]
    note = ""
    if len(implicit) == 1:
        note = (
            f" ({quote(implicit[0])} has no depends_on, so it waits for the step before "
            "it; `depends_on: []` starts it without waiting)"
        )
    elif implicit:
        note = (
            f" ({' and '.join(quote(n) for n in implicit)} have no depends_on, so each "
            "waits for the step before it; `depends_on: []` starts a step without waiting)"
        )
    first = ring[0]
    where: Path = ("steps", first, "depends_on")
    return doc.diagnostic(where, f"dependency cycle: {shown} (-> means 'depends on'){note}")


def _number_warnings(doc: Any) -> list[Diagnostic]:
    """Numbers used as text that would not read back as written (3.10 -> "3.1")."""
    out = []
    for path, text in doc.number_texts.items():
        used_as_text = (
            (len(path) == 2 and path[0] == "env")
            or (len(path) == 4 and path[0] == "steps" and path[2] == "env")
            or (len(path) == 3 and path[0] == "matrix")
        )
        if used_as_text:
            value = doc.data
            for part in path:
                value = value[part]
            out.append(
                doc.diagnostic(
                    path,
                    f"{text} is read as the number {value!r}, so the "
                    f"value is {str(value)!r}; quote it ('{text}') to keep "
                    "it as written",
                    severity=Severity.WARNING,
                )
            )
    return out
