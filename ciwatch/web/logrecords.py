"""Step log records as the web serves them: JSON records (line number, unix
time, kind, text without terminal escapes, colour spans) and the server-sent
events of a stream. Read from the file through a LogIndex, a batch at a time."""

from __future__ import annotations

import json

from ciwatch.logread import LineKind, LogLine
from ciwatch.model import StepRecord
from ciwatch.web import ansi
from ciwatch.web.logindex import LogIndex, Mark, records

STREAM_BATCH = 1000  # records per event at most


def record_json(n: int, line: LogLine, start: float | None, style: ansi.Style) -> tuple:
    """(the record as JSON-ready dict, the terminal style after it)."""
    if line.kind is LineKind.NOTE:
        spans, _ = ansi.render(line.data)
    else:
        spans, style = ansi.render(line.data, style)
    rec: dict = {
        "n": n,
        "t": round((start or 0.0) + line.time, 3),
        "kind": line.kind.value,
        "text": ansi.plain(spans),
    }
    if any(s.classes for s in spans):
        rec["spans"] = [[s.classes, s.text] for s in spans]
    return rec, style


def read_records(index: LogIndex, after: int, limit: int) -> list[dict]:
    """Up to `limit` records numbered after `after`, from the file."""
    end = index.end
    if after >= end.n or limit <= 0:
        return []
    out: list[dict] = []
    style = ansi.PLAIN
    for n, _off, line in records(index.path, index.seek(after), end.offset):
        rec, style = record_json(n, line, index.start, style)
        out.append(rec)
        if len(out) >= limit:
            break
    return out


def sse_event(name: str, data: str, ident: int | None = None) -> bytes:
    """One server-sent event; `data` is one line of JSON."""
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {name}\ndata: {data}\n\n".encode()


def stream_batch(index: LogIndex, start: Mark, end: Mark) -> tuple[Mark, bytes]:
    """The stream event of the records after `start` (at most STREAM_BATCH),
    and where the next batch starts."""
    recs = []
    style = ansi.PLAIN
    last = start
    for n, offset, line in records(index.path, start, end.offset):
        rec, style = record_json(n, line, index.start, style)
        recs.append(rec)
        last = Mark(n, offset, -1)
        if len(recs) >= STREAM_BATCH:
            break
    if not recs:
        return start, b""
    return last, sse_event("lines", json.dumps(recs, ensure_ascii=False), last.n)


def end_data(step: StepRecord | None) -> str:
    """The data of a stream's `end` event: how the step ended."""
    if step is None:
        return json.dumps({"state": "unknown"})
    r = step.result
    return json.dumps({"state": step.state.value, "exit_code": r.exit_code, "reason": r.reason})
