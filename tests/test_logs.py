"""Step logs on disk: lossless, masked before storing, capped head + tail, followable."""

from __future__ import annotations

import threading
import time
import tracemalloc
from pathlib import Path

from ciwatch.logread import LineKind, LogLine, follow, log_start, raw_output, read_log, render
from ciwatch.logs import StepLog
from ciwatch.masking import Masker

SECRET = "s3cr3t-Token_value-42"


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def stored_output(path: Path) -> bytes:
    return b"".join(raw_output(read_log(path)))


def notes(path: Path) -> list[str]:
    return [line.data.decode() for line in read_log(path) if line.kind is LineKind.NOTE]


def test_output_round_trips_byte_exact_with_partial_last_line(tmp_path):
    path = tmp_path / "0.log"
    log = StepLog(path, Masker([]), 0, FakeClock())
    data = (
        b"plain line\n\xff\xfe not utf-8 \x80\r\nsplit li"
        + b"ne\n\x1b[31mred\x1b[0m\nno newline at end"
    )
    for i in range(0, len(data), 5):
        log.write(data[i : i + 5])
    summary = log.close()
    assert stored_output(path) == data
    assert summary.bytes_seen == summary.bytes_stored == len(data)
    assert not summary.truncated
    last = list(read_log(path))[-1]
    assert last.data == b"no newline at end" and last.newline is False


def test_each_line_carries_the_time_of_its_chunk_since_step_start(tmp_path):
    clock = FakeClock(5000.0)
    path = tmp_path / "0.log"
    log = StepLog(path, Masker([]), 0, clock)
    clock.t = 5001.5
    log.write(b"a\nb\n")
    clock.t = 5003.25
    log.write(b"c\n")
    log.note("done")
    log.close()
    lines = list(read_log(path))
    assert [(ln.time, ln.kind, ln.data) for ln in lines] == [
        (1.5, LineKind.OUTPUT, b"a"),
        (1.5, LineKind.OUTPUT, b"b"),
        (3.25, LineKind.OUTPUT, b"c"),
        (3.25, LineKind.NOTE, b"done"),
    ]
    assert log_start(path) == 5000.0


def test_notes_keep_their_place_among_output_lines(tmp_path):
    path = tmp_path / "0.log"
    log = StepLog(path, Masker([]), 0, FakeClock())
    log.write(b"compiling... ")
    log.note("timed out after 2s: sending SIGTERM")
    log.write(b"interrupted\n")
    log.close()
    kinds = [(ln.kind, ln.data) for ln in read_log(path)]
    assert kinds == [
        (LineKind.OUTPUT, b"compiling... "),
        (LineKind.NOTE, b"timed out after 2s: sending SIGTERM"),
        (LineKind.OUTPUT, b"interrupted"),
    ]
    assert stored_output(path) == b"compiling... interrupted\n"


def test_secrets_are_masked_in_the_file_and_the_live_view(tmp_path):
    path = tmp_path / "0.log"
    live: list[bytes] = []
    shown_notes: list[str] = []
    log = StepLog(
        path, Masker([SECRET]), 0, FakeClock(), on_output=live.append, on_note=shown_notes.append
    )
    raw = b"token=" + SECRET.encode() + b"\n"
    for i in range(len(raw)):  # one byte at a time
        log.write(raw[i : i + 1])
    log.note(f"git said: https://x:{SECRET}@host/repo")
    log.close()
    content = path.read_bytes()
    assert SECRET.encode() not in content
    assert stored_output(path) == b"token=[MASKED]\n"
    assert b"".join(live) == b"token=[MASKED]\n"
    assert shown_notes == ["git said: https://x:[MASKED]@host/repo"]
    assert notes(path) == ["git said: https://x:[MASKED]@host/repo"]


def test_cap_keeps_head_and_tail_and_says_how_much_was_left_out(tmp_path):
    path = tmp_path / "0.log"
    cap = 10_000
    log = StepLog(path, Masker([]), cap, FakeClock())
    lines = [b"line %06d\n" % i for i in range(100_000)]
    data = b"".join(lines)
    for i in range(0, len(data), 4096):
        log.write(data[i : i + 4096])
    summary = log.close()
    stored = stored_output(path)
    assert summary.truncated
    assert summary.bytes_seen == len(data)
    assert summary.bytes_stored == len(stored) <= cap
    assert summary.bytes_stored + summary.bytes_omitted == len(data)
    assert notes(path) == [f"log truncated: {summary.bytes_omitted} bytes omitted"]
    # Head and tail are whole lines: the first ones and the last ones.
    records = [ln for ln in read_log(path)]
    cut = next(i for i, ln in enumerate(records) if ln.kind is LineKind.NOTE)
    head = b"".join(raw_output(records[:cut]))
    tail = b"".join(raw_output(records[cut + 1 :]))
    assert data.startswith(head) and data.endswith(tail)
    assert len(head) > cap // 2 - 20 and len(tail) > cap // 2 - 20
    assert head.endswith(b"\n") and tail.startswith(b"line ")


def test_no_truncation_below_the_cap(tmp_path):
    path = tmp_path / "0.log"
    log = StepLog(path, Masker([]), 1000, FakeClock())
    data = b"x" * 300 + b"\n" + b"y" * 500 + b"\n"
    log.write(data)
    summary = log.close()
    assert not summary.truncated and stored_output(path) == data and notes(path) == []


def test_notes_after_the_head_filled_are_kept_in_order(tmp_path):
    path = tmp_path / "0.log"
    log = StepLog(path, Masker([]), 2000, FakeClock())
    log.write(b"a" * 99 + b"\n" * 1 + b"b\n" * 5000)
    log.note("timed out after 1s: sending SIGTERM")
    log.write(b"c\n")
    log.close()
    records = list(read_log(path))
    assert [r.data for r in records if r.kind is LineKind.NOTE][-1] == (
        b"timed out after 1s: sending SIGTERM"
    )
    assert records[-1].data == b"c" and records[-2].kind is LineKind.NOTE


def test_a_secret_cut_at_the_cap_boundary_never_appears_partially(tmp_path):
    secret = "Sup3rSecretValue0123456789abcdef"
    for shift in range(0, 40, 3):
        path = tmp_path / f"{shift}.log"
        cap = 2000
        log = StepLog(path, Masker([secret]), cap, FakeClock())
        # Put the secret right across the head limit (cap/2) and the tail start.
        data = (
            b"x" * (cap // 2 - shift)
            + secret.encode()
            + b"y" * 5000
            + secret.encode()
            + b"z" * (cap // 2 - 20)
        )
        for i in range(0, len(data), 7):
            log.write(data[i : i + 7])
        log.close()
        content = path.read_bytes()
        for n in range(6, len(secret) + 1):
            for start in range(0, len(secret) - n + 1):
                assert secret[start : start + n].encode() not in content, (shift, n)


def test_memory_stays_bounded_whatever_the_step_prints(tmp_path):
    path = tmp_path / "0.log"
    log = StepLog(path, Masker([SECRET]), 256 * 1024, FakeClock())
    chunk = b"".join(b"output line %d with some text\n" % i for i in range(2000))
    tracemalloc.start()
    try:
        for _ in range(16 * 1024 * 1024 // len(chunk)):
            log.write(chunk)
        log.write(b"x" * 3_000_000)  # one long line without a newline
        for _ in range(50_000):  # and tiny writes
            log.write(b"y")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    summary = log.close()
    assert summary.truncated
    assert peak < 8 * 1024 * 1024, peak
    assert stored_output(path).endswith(b"y" * 50_000)


def test_unbounded_line_without_newline_is_stored_in_pieces(tmp_path):
    path = tmp_path / "0.log"
    log = StepLog(path, Masker([]), 0, FakeClock())
    data = bytes(range(256)).replace(b"\n", b"") * 2000
    for i in range(0, len(data), 1000):
        log.write(data[i : i + 1000])
    log.write(b"\n")
    log.close()
    records = list(read_log(path))
    assert len(records) > 1 and all(not r.newline for r in records[:-1])
    assert max(len(r.data) for r in records) < 200_000
    assert stored_output(path) == data + b"\n"


def test_disk_full_does_not_stop_the_step_and_is_reported():
    log = StepLog(Path("/dev/full"), Masker([]), 0, FakeClock())
    log.write(b"hello\n" * 1000)
    log.note("done")
    summary = log.close()
    assert "No space left on device" in summary.error
    assert summary.bytes_seen == 6000 and summary.bytes_stored == 0 and summary.truncated


def test_follow_yields_lines_as_written_until_done(tmp_path):
    path = tmp_path / "0.log"
    done = threading.Event()
    seen_early = threading.Event()
    got: list[LogLine] = []

    def writer():
        log = StepLog(path, Masker([SECRET]), 0, time.time)
        log.write(b"first\n")
        seen_early.wait(5)
        log.write(b"second " + SECRET.encode() + b"\nthird, no newline")
        log.note("finished")
        log.close()
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    for line in follow(path, done.is_set, poll=0.01):
        got.append(line)
        if line.data == b"first":
            seen_early.set()  # the reader saw it before the writer went on
    thread.join()
    assert [(ln.kind, ln.data) for ln in got] == [
        (LineKind.OUTPUT, b"first"),
        (LineKind.OUTPUT, b"second [MASKED]"),
        (LineKind.OUTPUT, b"third, no newline"),
        (LineKind.NOTE, b"finished"),
    ]


def test_follow_of_a_log_that_never_appears_ends_when_done(tmp_path):
    assert list(follow(tmp_path / "missing.log", lambda: True, poll=0.01)) == []


def test_render_neutralises_terminal_escapes_and_bad_utf8():
    line = LogLine(
        1.0,
        LineKind.OUTPUT,
        b"\x1b[32mok\x1b[0m \x1b]0;pwned\x07 50%\r100% \xff\xfe\t\xe2\x80\xaeabc",
    )
    text = render(line)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "\u202e" not in text
    assert text.startswith("ok ") and "\\e]0;pwned" in text and "\\r" in text
    assert "\ufffd\ufffd\t" in text
    note = render(LogLine(2.5, LineKind.NOTE, b"timed out"), timestamps=True)
    assert note == "    2.500 [ciwatch] timed out"


def test_a_log_that_cannot_be_opened_does_not_stop_the_step(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    live: list[bytes] = []
    log = StepLog(blocker / "0.log", Masker([]), 0, FakeClock(), on_output=live.append)
    log.write(b"still shown\n")
    summary = log.close()
    assert summary.error.startswith("opening ") and summary.bytes_stored == 0
    assert live == [b"still shown\n"]


def test_a_failing_live_view_does_not_stop_the_log(tmp_path):
    def broken(_: bytes) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    path = tmp_path / "0.log"
    log = StepLog(path, Masker([]), 0, FakeClock(), on_output=broken)
    log.write(b"a\n")
    log.write(b"b\n")
    log.close()
    assert stored_output(path) == b"a\nb\n"
