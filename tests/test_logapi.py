"""Step logs over real HTTP: line records, the raw log with ranges, and the live
stream that follows a log as a step writes it and resumes after a reconnect.
Real log files written by StepLog, a real store, a real server on 127.0.0.1."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from ciwatch.logs import StepLog
from ciwatch.masking import Masker
from ciwatch.model import Event, EventKind, StepResult, StepState
from ciwatch.store import Store
from ciwatch.web.live import ChangeSignal
from ciwatch.web.logapi import log_router
from ciwatch.web.server import WebServer, create_app


@dataclass
class Env:
    store: Store
    url: str
    run_id: int
    tmp: Path
    clock: list  # a settable clock for the log writer

    def step(self, name: str, idx: int) -> tuple[int, StepLog]:
        path = self.tmp / "logs" / f"-{idx}.log"
        step_id = self.store.start_step(self.run_id, 1, "", idx, name, str(path))
        log = StepLog(path, Masker(["hunter2"]), 0, lambda: self.clock[0])
        return step_id, log

    def finish(self, step_id: int, log: StepLog, state=StepState.SUCCESS, code=0) -> None:
        summary = log.close()
        self.store.finish_step(
            step_id, StepResult(state=state, exit_code=code, log_bytes=summary.bytes_stored)
        )

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **kw)


@pytest.fixture
def env(tmp_path):
    store = Store.open(tmp_path / "ciwatch.db")
    store.ensure_repo("app", str(tmp_path), "main")
    run, _ = store.submit(
        Event(repo="app", kind=EventKind.PUSH, ref="refs/heads/main", sha="a" * 40, source="hook")
    )
    store.start_attempt(run.id, "test", 60)
    changes = ChangeSignal(tmp_path / "ciwatch.db", min_interval=0.02)
    server = WebServer(
        create_app(log_router(store.get_step, changes.version, poll=0.02)), "127.0.0.1", 0
    )
    server.start()
    try:
        yield Env(store, server.url, run.id, tmp_path, [1_700_000_000.0])
    finally:
        server.stop()
        changes.close()
        store.close()


def sse(resp: requests.Response):
    """(event, id, data) of a text/event-stream, as they arrive."""
    event, ident, data = "message", None, []
    for line in resp.iter_lines(decode_unicode=True):
        if line == "":
            if data:
                yield event, ident, "\n".join(data)
            event, ident, data = "message", None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "id":
                ident = value
            elif field == "data":
                data.append(value)


def stream_records(env: Env, step_id: int, headers=None, params=None):
    """Every record streamed, then the end event's data."""
    got = []
    with env.get(
        f"/api/steps/{step_id}/log/stream", headers=headers, params=params, stream=True
    ) as resp:
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("text/event-stream")
        for event, ident, data in sse(resp):
            if event == "end":
                return got, json.loads(data)
            assert event == "lines"
            batch = json.loads(data)
            assert ident == str(batch[-1]["n"])  # resume point = the last record sent
            got += batch
    raise AssertionError("the stream closed without an end event")


def test_records_are_numbered_and_paged_by_after_limit_and_tail(env):
    sid, log = env.step("build", 0)
    for i in range(1, 2501):
        env.clock[0] += 0.001
        log.write(f"line {i} hunter2\n".encode())
    log.note("retrying")
    log.write(b"no newline at the end")
    env.finish(sid, log)

    r = env.get(f"/api/steps/{sid}/log/lines", params={"limit": 3})
    assert r.status_code == 200 and r.headers["x-log-lines"] == "2502"
    first = r.json()
    assert [x["n"] for x in first] == [1, 2, 3]
    assert first[0]["text"] == "line 1 [MASKED]"  # masked when written: never unmasked here
    assert first[0]["kind"] == "output"
    assert first[0]["t"] == pytest.approx(1_700_000_000.001, abs=0.002)

    middle = env.get(f"/api/steps/{sid}/log/lines", params={"after": 1500, "limit": 1000}).json()
    assert [x["n"] for x in middle] == list(range(1501, 2501))
    assert middle[0]["text"] == "line 1501 [MASKED]"

    tail = env.get(f"/api/steps/{sid}/log/lines", params={"tail": 3}).json()
    assert [(x["n"], x["kind"], x["text"]) for x in tail] == [
        (2500, "output", "line 2500 [MASKED]"),
        (2501, "note", "retrying"),
        (2502, "output", "no newline at the end"),
    ]
    assert env.get(f"/api/steps/{sid}/log/lines", params={"after": 9999}).json() == []
    bad = env.get(f"/api/steps/{sid}/log/lines", params={"limit": 0})
    assert bad.status_code == 422


def test_colours_arrive_as_classes_and_control_sequences_as_nothing(env):
    sid, log = env.step("colours", 0)
    log.write(b"\x1b[1;31mFAIL\x1b[0m tests \x1b]0;title\x07<b>x</b>\n\x1b[2Kplain\n")
    env.finish(sid, log)
    a, b = env.get(f"/api/steps/{sid}/log/lines").json()
    assert a["text"] == "FAIL tests <b>x</b>"
    assert a["spans"] == [["fg1 ab", "FAIL"], ["", " tests <b>x</b>"]]
    assert b == {"n": 2, "t": b["t"], "kind": "output", "text": "plain"}


def expected_raw(lines: list[bytes], note: str) -> bytes:
    return b"".join(lines) + f"[ciwatch] {note}\n".encode()


def test_the_raw_log_is_the_output_and_ranges_get_206(env):
    sid, log = env.step("build", 0)
    rng = random.Random(7)
    lines = []
    for i in range(40_000):  # ~3 MB: several index marks and read chunks
        line = f"{i} {'x' * rng.randrange(0, 150)}\n".encode()
        lines.append(line)
        log.write(line)
    log.note("done")
    env.finish(sid, log)
    want = expected_raw(lines, "done")

    full = env.get(f"/api/steps/{sid}/log")
    assert full.status_code == 200
    assert full.content == want
    assert full.headers["content-type"] == "text/plain; charset=utf-8"
    assert full.headers["accept-ranges"] == "bytes"
    assert full.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in full.headers["content-security-policy"]
    assert "content-disposition" not in full.headers

    for _ in range(25):
        a = rng.randrange(0, len(want))
        b = rng.randrange(a, min(len(want), a + 300_000))
        part = env.get(f"/api/steps/{sid}/log", headers={"Range": f"bytes={a}-{b}"})
        assert part.status_code == 206
        assert part.headers["content-range"] == f"bytes {a}-{b}/{len(want)}"
        assert part.content == want[a : b + 1]

    suffix = env.get(f"/api/steps/{sid}/log", headers={"Range": "bytes=-7"})
    assert (suffix.status_code, suffix.content) == (206, want[-7:])
    rest = env.get(f"/api/steps/{sid}/log", headers={"Range": f"bytes={len(want) - 10}-"})
    assert rest.content == want[-10:]
    beyond = env.get(f"/api/steps/{sid}/log", headers={"Range": f"bytes={len(want)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(want)}"
    several = env.get(f"/api/steps/{sid}/log", headers={"Range": "bytes=0-1,5-6"})
    assert (several.status_code, several.content) == (200, want)  # not served: the whole log

    down = env.get(f"/api/steps/{sid}/log", params={"download": 1}, headers={"Range": "bytes=0-3"})
    assert (
        down.headers["content-disposition"]
        == f'attachment; filename="run{env.run_id}-step{sid}.log"'
    )
    assert down.content == want[:4]

    etag = full.headers["etag"]
    assert env.get(f"/api/steps/{sid}/log", headers={"If-None-Match": etag}).status_code == 304
    stale = env.get(f"/api/steps/{sid}/log", headers={"Range": "bytes=0-3", "If-Range": '"other"'})
    assert (stale.status_code, stale.content) == (200, want)


def test_a_stream_follows_the_log_while_the_step_writes_it_and_ends_with_it(env):
    sid, log = env.step("slow", 0)
    log.write(b"before anyone watched\n")
    wrote = {}

    def writer():
        for i in range(1, 21):
            time.sleep(0.03)
            env.clock[0] += 0.03
            log.write(f"tick {i}\n".encode())
            wrote[i] = time.monotonic()
        env.finish(sid, log, StepState.FAILURE, 3)

    arrived = {}
    t = threading.Thread(target=writer)
    with env.get(f"/api/steps/{sid}/log/stream", stream=True) as resp:
        t.start()
        records, end = [], None
        for event, _ident, data in sse(resp):
            if event == "end":
                end = json.loads(data)
                break
            for rec in json.loads(data):
                records.append(rec)
                arrived[rec["n"]] = time.monotonic()
    t.join()
    assert [r["n"] for r in records] == list(range(1, 22))
    assert [r["text"] for r in records] == ["before anyone watched"] + [
        f"tick {i}" for i in range(1, 21)
    ]
    assert end["state"] == "failure" and end["exit_code"] == 3
    # Live: the first ticks arrived while the step was still writing the rest.
    assert arrived[2] < wrote[20]


def test_a_reconnecting_client_resumes_after_the_last_event_it_saw(env):
    sid, log = env.step("build", 0)
    for i in range(1, 51):
        log.write(f"l{i}\n".encode())
    env.finish(sid, log)

    records, end = stream_records(env, sid, headers={"Last-Event-ID": "30"})
    assert [r["text"] for r in records] == [f"l{i}" for i in range(31, 51)]
    assert end["state"] == "success"
    records, _ = stream_records(env, sid, params={"after": 45})
    assert [r["n"] for r in records] == [46, 47, 48, 49, 50]
    records, _ = stream_records(env, sid, headers={"Last-Event-ID": "50"})
    assert records == []
    bad = env.get(f"/api/steps/{sid}/log/stream", headers={"Last-Event-ID": "abc"})
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["detail"]


def test_a_stream_resumed_mid_run_has_no_gap_and_no_repeat(env):
    sid, log = env.step("slow", 0)
    for i in range(1, 6):
        log.write(f"l{i}\n".encode())
    first = []
    with env.get(f"/api/steps/{sid}/log/stream", stream=True) as resp:
        for _event, ident, data in sse(resp):
            first += json.loads(data)
            if first[-1]["n"] >= 5:
                last_id = ident
                break  # the connection drops here
    for i in range(6, 11):
        log.write(f"l{i}\n".encode())
    threading.Timer(0.2, lambda: env.finish(sid, log)).start()
    rest, end = stream_records(env, sid, headers={"Last-Event-ID": last_id})
    assert [r["n"] for r in first + rest] == list(range(1, 11))
    assert end["state"] == "success"


def test_unknown_steps_and_steps_without_a_log(env):
    for path in ("/log", "/log/lines", "/log/stream"):
        r = env.get(f"/api/steps/999{path}")
        assert r.status_code == 404 and r.json()["detail"] == "no step 999"
    skipped = env.store.skip_step(env.run_id, 1, "", 5, "later", "when: branch is not main")
    assert env.get(f"/api/steps/{skipped}/log/lines").json() == []
    raw = env.get(f"/api/steps/{skipped}/log")
    assert (raw.status_code, raw.content) == (200, b"")
    records, end = stream_records(env, skipped)
    assert records == [] and end["state"] == "skipped"


def test_the_index_agrees_with_the_log_reader_on_any_mix_of_records(tmp_path):
    """Ranges and record numbers from the index equal what ciwatch.logread
    reads, across chunk boundaries, notes, fragments and foreign lines."""
    rng = random.Random(3)
    path = tmp_path / "mixed.log"
    lines = [b"#ciwatch-log 1 start=1700000000.000000"]
    for i in range(30_000):
        kind = rng.choices(["o", "p", "n", "odd", "long"], [900, 30, 30, 20, 1])[0]
        if kind == "odd":
            lines.append(b"not a record %d" % i)
        elif kind == "long":
            lines.append(b"%d.000 o " % i + b"y" * rng.randrange(100_000, 400_000))
        else:
            lines.append(b"%d.500 %s text %d" % (i, kind.encode(), i))
    path.write_bytes(b"\n".join(lines) + b"\n")

    from ciwatch.logread import read_log
    from ciwatch.web.logindex import LogIndex, output_bytes, output_from, records

    want_records = list(read_log(path))
    want_raw = b"".join(output_bytes(x) for x in want_records)
    index = LogIndex(path)
    end = index.refresh()
    assert (end.n, end.out, end.offset) == (len(want_records), len(want_raw), path.stat().st_size)
    everything = [line for _n, _o, line in records(path, index.seek(0), end.offset)]
    assert everything == want_records
    for n in [1, 2, 4095, 4096, 20_001, len(want_records) - 1, len(want_records)]:
        got = [line for _n, _o, line in itertools.islice(records(path, index.seek(n)), 50)]
        assert got == want_records[n : n + 50]
    for _ in range(20):
        a = rng.randrange(0, len(want_raw))
        b = rng.randrange(a, len(want_raw) + 1)
        assert b"".join(output_from(path, index.mark_for_output(a), a, b)) == want_raw[a:b]

    # The log grows (a writer appends, possibly half a record at a time).
    with open(path, "ab") as f:
        f.write(b"99999.000 o appended\n99999.000 n half")
    assert index.refresh().n == len(want_records) + 1
    with open(path, "ab") as f:
        f.write(b" a note\n")
    assert index.refresh().n == len(want_records) + 2
    tail = [line.data for _n, _o, line in records(path, index.seek(len(want_records)), None)]
    assert tail == [b"appended", b"half a note"]
