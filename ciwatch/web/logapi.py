"""Step logs over HTTP: the raw log (with Range), line records as JSON, and a
live stream of records (server-sent events) that resumes where it left off.

Everything is read from the log file in chunks through a `LogIndex`; nothing
loads a whole log, so a 50 MB log costs what a small one costs in memory.

- ``GET /api/steps/{id}/log``: the step's masked output as text/plain (notes
  as ``[ciwatch] ...`` lines); ``Range: bytes=...`` answers 206 with
  Content-Range; ``?download=1`` makes it an attachment.
- ``GET /api/steps/{id}/log/lines?after=N&limit=M`` (or ``?tail=M``): records
  ``{n, t, kind, text, spans?}``; ``n`` counts records from 1, ``t`` is unix
  time, ``text`` is the line with terminal escapes removed and ``spans``
  (only for coloured lines) is ``[[classes, text], ...]`` (ciwatch.web.ansi).
  The ``X-Log-Lines`` header says how many records there are so far.
- ``GET /api/steps/{id}/log/stream``: ``event: lines`` with a JSON list of
  records and ``id:`` the last record's number; a reconnecting client sends
  ``Last-Event-ID`` (or ``?after=N``) and gets what follows. ``event: end``
  (data: the step's state) once the step has finished and all is sent.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ciwatch.model import StepRecord, StepState
from ciwatch.web.logindex import LogIndex, LogIndexes, Mark, output_from
from ciwatch.web.logrecords import end_data, read_records, sse_event, stream_batch

MAX_LINES = 5000
POLL = 0.25  # seconds between looks at a growing log
STATE_EVERY = 2.0  # the step's state is read at least this often while idle
HEARTBEAT = 15.0  # a comment line keeps proxies from closing an idle stream
INLINE_READ = 64 * 1024  # a log that grew by at most this is read on the event loop
RAW_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # Opened directly, the log is inert text whatever it holds.
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cache-Control": "no-cache",
    "Accept-Ranges": "bytes",
}
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One `bytes=` range -> [start, stop); None when unsatisfiable. Several
    ranges are not supported: the caller sends the whole log instead."""
    m = _RANGE.fullmatch(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        raise ValueError(header)
    first, last = m.group(1), m.group(2)
    if not first:  # the last N bytes
        n = int(last)
        return (max(0, size - n), size) if n > 0 and size > 0 else None
    start = int(first)
    stop = min(size, int(last) + 1) if last else size
    if start >= size or stop <= start:
        return None
    return start, stop


class _TailCache:
    """Encoded stream events by (log, first record), shared by the clients
    following a log: a hundred browsers on one running step read and encode
    each new line once, also when they all ask at the same moment (they wait
    for the one read in progress). Only small batches are kept (a catch-up
    from the start of a long log is not), so the cache stays small. Used from
    the event loop's thread only."""

    def __init__(self, keep: int = 64, max_bytes: int = 32 * 1024) -> None:
        self.keep, self.max_bytes = keep, max_bytes
        self._items: OrderedDict[tuple, asyncio.Future] = OrderedDict()

    async def batch(self, key: tuple, read: Callable[[], tuple[Mark, bytes]]) -> tuple:
        future = self._items.get(key)
        if future is None:
            future = asyncio.ensure_future(run_in_threadpool(read))
            self._items[key] = future
            future.add_done_callback(lambda f: self._settled(key, f))
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        # Shielded: a follower that goes away does not cancel the others' read.
        return await asyncio.shield(future)

    def _settled(self, key: tuple, future: asyncio.Future) -> None:
        failed = future.cancelled() or future.exception() is not None
        if failed or len(future.result()[1]) > self.max_bytes:
            if self._items.get(key) is future:
                del self._items[key]


def log_router(
    step: Callable[[int], StepRecord | None],
    changes: Callable[[], int],
    *,
    indexes: LogIndexes | None = None,
    poll: float = POLL,
    removed: Callable[[int], str | None] = lambda run_id: None,
) -> APIRouter:
    """`step(id)` reads a step's record; `changes()` moves when the database did;
    `removed(run id)` says why a run's logs are gone (retention), else None."""
    router = APIRouter()
    indexes = indexes or LogIndexes()
    tails = _TailCache()

    def found(step_id: int) -> StepRecord:
        s = step(step_id)
        if s is None:
            raise HTTPException(404, f"no step {step_id}")
        gone = removed(s.run_id)
        if gone:
            raise HTTPException(410, gone)
        return s

    def index_of(s: StepRecord) -> LogIndex | None:
        """The log's index; None when the step has no log (skipped, or removed)."""
        if not s.log_path or not Path(s.log_path).is_file():
            return None
        try:
            return indexes.get(Path(s.log_path))
        except OSError as exc:
            detail = f"the log of step {s.id} cannot be read: {exc.strerror}"
            raise HTTPException(500, detail) from None

    @router.get("/api/steps/{step_id}/log", tags=["logs"], response_class=Response)
    def raw_log(request: Request, step_id: int, download: bool = False) -> Response:
        """The step's output as plain text; Range requests; `download=1`: a file."""
        s = found(step_id)
        index = index_of(s)
        size = index.end.out if index is not None else 0
        headers = dict(RAW_HEADERS)
        if download:
            headers["Content-Disposition"] = f'attachment; filename="run{s.run_id}-step{s.id}.log"'
        finished = s.state not in (StepState.RUNNING, StepState.PENDING)
        if finished:
            etag = f'"{s.id}-{size}"'
            headers["ETag"] = etag
            if request.headers.get("if-none-match") == etag:
                return Response(status_code=304, headers=headers)
        media = "text/plain; charset=utf-8"
        start, stop, status = 0, size, 200
        wanted = request.headers.get("range")
        if wanted and (not request.headers.get("if-range") or _if_range_ok(request, headers)):
            try:
                got = parse_range(wanted, size)
            except ValueError:
                got = (0, size)  # not a form we serve: the whole log, as RFC 9110 allows
            else:
                if got is None:
                    headers["Content-Range"] = f"bytes */{size}"
                    return Response(status_code=416, headers=headers)
                status = 206
            start, stop = got
            if status == 206:
                total = str(size) if finished else "*"
                headers["Content-Range"] = f"bytes {start}-{stop - 1}/{total}"
        headers["Content-Length"] = str(stop - start)
        if index is None or stop <= start:
            return Response(b"", status_code=status, media_type=media, headers=headers)
        body = output_from(index.path, index.mark_for_output(start), start, stop)
        return StreamingResponse(body, status_code=status, media_type=media, headers=headers)

    @router.get("/api/steps/{step_id}/log/lines", tags=["logs"], response_class=Response)
    def lines(
        step_id: int,
        after: int = Query(0, ge=0),
        limit: int = Query(1000, ge=1, le=MAX_LINES),
        tail: int | None = Query(None, ge=1, le=MAX_LINES),
    ) -> Response:
        """Line records after line `after` (or the last `tail`); X-Log-Lines: how many."""
        s = found(step_id)
        index = index_of(s)
        total = index.end.n if index is not None else 0
        if index is None:
            recs: list[dict] = []
        elif tail is not None:
            recs = read_records(index, max(0, total - tail), tail)
        else:
            recs = read_records(index, after, limit)
        return JSONResponse(recs, headers={"X-Log-Lines": str(total), "Cache-Control": "no-cache"})

    @router.get("/api/steps/{step_id}/log/stream", tags=["logs"], response_class=Response)
    async def stream(
        request: Request, step_id: int, after: int = Query(0, ge=0)
    ) -> StreamingResponse:
        """Server-sent events: the records after Last-Event-ID (or `after`) as the
        step writes them, then `event: end` with the step's state."""
        resume = request.headers.get("last-event-id", "").strip()
        if resume:
            if not resume.isdigit() or len(resume) > 18:
                raise HTTPException(400, f"Last-Event-ID {resume[:40]!r} is not a line number")
            after = int(resume)
        s = await run_in_threadpool(found, step_id)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(follow(s, after), media_type="text/event-stream", headers=headers)

    async def follow(s: StepRecord, after: int) -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        done = s.state not in (StepState.RUNNING, StepState.PENDING)
        seen, checked, quiet_since = changes(), time.monotonic(), time.monotonic()
        path = Path(s.log_path) if s.log_path else None
        index: LogIndex | None = None
        size = -1
        at: Mark | None = None  # where the next record starts in the file
        while True:
            # A stat per look; the file is read only when it changed: a little
            # growth right here, a lot (or a first look) off the event loop.
            now_size = _size(path)
            if now_size != size:
                size = now_size
                try:
                    if size < 0:
                        index = None
                    elif index is None or not index.try_refresh(INLINE_READ):
                        index = await run_in_threadpool(indexes.get, path)
                except OSError:
                    index, size = None, -1  # unreadable for now: looked at again
            if index is not None and index.end.n > after:
                end = index.end
                try:
                    if at is None or at.n != after:
                        at = await run_in_threadpool(index.seek, after)
                    # Records never change once written: a batch from `after`
                    # is right for every follower, whatever was added since.
                    key = (str(path), index.ident, after)
                    at, data = await tails.batch(key, partial(stream_batch, index, at, end))
                except OSError as exc:
                    detail = f"the log of step {s.id} cannot be read: {exc.strerror}"
                    yield sse_event("end", json.dumps({"state": "unknown", "error": detail}))
                    return
                after = at.n
                if data:
                    yield data
                    quiet_since = time.monotonic()
                    continue
            if done:
                yield sse_event("end", end_data(s))
                return
            now = time.monotonic()
            version = changes()
            if version != seen or now - checked >= STATE_EVERY:
                seen, checked = version, now
                fresh = await run_in_threadpool(step, s.id)
                if fresh is None or fresh.state not in (StepState.RUNNING, StepState.PENDING):
                    # Read once more: what was written before it ended.
                    done, s, size = True, fresh or s, -2
                    continue
            if now - quiet_since >= HEARTBEAT:
                quiet_since = now
                yield b": keep-alive\n\n"
            # Followers wake together, so the first one's batch serves the rest.
            await asyncio.sleep(poll - time.monotonic() % poll)

    return router


def _size(path: Path | None) -> int:
    if path is None:
        return -1
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _if_range_ok(request: Request, headers: dict) -> bool:
    """If-Range names the version the client has; a range of another is refused."""
    return request.headers.get("if-range") == headers.get("ETag")
