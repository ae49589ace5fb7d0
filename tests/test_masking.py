"""Secret masking: every form, across chunk boundaries, fast."""

from __future__ import annotations

import base64
import json
import random
import re
from urllib.parse import quote, quote_plus

import pytest

from ciwatch.masking import Masker

SECRET = "s3cr3t-Token_value-42"
PH = b"[MASKED]"


def stream_all(masker: Masker, chunks) -> bytes:
    s = masker.stream()
    return b"".join(s.feed(c) for c in chunks) + s.flush()


def reference(forms, data: bytes, placeholder: bytes) -> bytes:
    """Leftmost, then longest match, one byte at a time (slow and obvious)."""
    out, i = bytearray(), 0
    longest_first = sorted(forms, key=len, reverse=True)
    while i < len(data):
        for form in longest_first:
            if data.startswith(form, i):
                out += placeholder
                i += len(form)
                break
        else:
            out.append(data[i])
            i += 1
    return bytes(out)


def test_raw_secret_is_masked():
    m = Masker([SECRET])
    assert m.mask(b"token=" + SECRET.encode() + b"\n") == b"token=[MASKED]\n"


def test_secret_split_across_two_writes():
    m = Masker([SECRET])
    raw = b"before " + SECRET.encode() + b" after\n"
    for cut in range(1, len(raw)):
        out = stream_all(m, [raw[:cut], raw[cut:]])
        assert out == b"before [MASKED] after\n", cut


def test_secret_fed_one_byte_at_a_time():
    m = Masker([SECRET, "other-secret"])
    raw = b"x" + SECRET.encode() + b"y other-secret z" + SECRET.encode()
    chunks = [raw[i : i + 1] for i in range(len(raw))]
    assert stream_all(m, chunks) == b"x[MASKED]y [MASKED] z[MASKED]"


def test_stream_holds_back_only_a_possible_match():
    m = Masker([SECRET])
    s = m.stream()
    # Nothing that could start the secret: everything comes out at once.
    assert s.feed(b"hello world\n") == b"hello world\n"
    # A tail that could be the start of the secret waits for more data.
    assert s.feed(b"value s3cr") == b"value "
    assert s.pending == 4
    assert s.feed(b"ewed up\n") == b"s3crewed up\n"
    assert s.flush() == b""


def test_flush_releases_a_held_back_tail():
    s = Masker([SECRET]).stream()
    assert s.feed(b"abc s3c") == b"abc "
    assert s.flush() == b"s3c"


def test_two_secrets_where_one_is_a_prefix_of_the_other():
    short, long = "MASKED_VALUE", "MASKED_VALUE_OTHER"
    m = Masker([short, long])
    data = b"a=MASKED_VALUE b=MASKED_VALUE_OTHER c=MASKED_VALUE_\n"
    assert m.mask(data) == b"a=[MASKED] b=[MASKED] c=[MASKED]_\n"
    # The same, split right after the shorter secret: the longer one still wins.
    cut = data.index(b"_OTHER")
    assert stream_all(m, [data[:cut], data[cut:]]) == m.mask(data)


@pytest.mark.parametrize("offset", [0, 1, 2])
@pytest.mark.parametrize("alphabet", ["standard", "urlsafe"])
def test_base64_at_each_alignment(offset, alphabet):
    encode = base64.b64encode if alphabet == "standard" else base64.urlsafe_b64encode
    m = Masker([SECRET])
    rng = random.Random(offset)
    before = bytes(rng.randrange(256) for _ in range(30 + offset))
    after = bytes(rng.randrange(256) for _ in range(30))
    blob = encode(before + SECRET.encode() + after)
    out = m.mask(b"data: " + blob + b"\n")
    # Exactly the characters that depend on the secret's bits alone are masked.
    first = -(-8 * len(before) // 6)
    last = 8 * (len(before) + len(SECRET)) // 6
    assert out == b"data: " + blob[:first] + PH + blob[last:] + b"\n"


def test_base64_of_the_secret_alone():
    m = Masker([SECRET])
    enc = base64.b64encode(SECRET.encode())
    assert SECRET.encode() not in m.mask(enc)
    assert m.mask(enc).startswith(PH)


def test_url_encoded_forms():
    secret = "p@ss w/rd&x=1+é"
    m = Masker([secret])
    for text in (quote(secret, safe=""), quote(secret), quote_plus(secret)):
        url = f"https://h/x?token={text}&next=1".encode()
        assert m.mask(url) == b"https://h/x?token=[MASKED]&next=1", text
    lower = re.sub("%[0-9A-F]{2}", lambda x: x.group(0).lower(), quote(secret, safe=""))
    assert lower != quote(secret, safe="")
    assert m.mask(lower.encode()) == PH


def test_json_escaped_forms():
    secret = 'a"quoted\\path\tand é'
    m = Masker([secret])
    for ascii_only in (True, False):
        doc = json.dumps({"token": secret}, ensure_ascii=ascii_only).encode()
        assert m.mask(doc) == b'{"token": "[MASKED]"}'


def test_multi_line_secret_each_line_masked():
    key = "-----BEGIN KEY-----\nAAAAbbbbCCCCdddd\nEEEEffffGGGG\n-----END KEY-----"
    m = Masker([key])
    # Printed whole: one placeholder.
    assert m.mask(key.encode()) == PH
    # Printed line by line with other lines around, or with CRLF endings.
    out = m.mask(b"x\r\n" + key.replace("\n", "\r\n").encode() + b"\r\ny")
    assert b"AAAAbbbb" not in out and b"EEEEffff" not in out
    assert out.startswith(b"x\r\n") and out.endswith(b"\r\ny")


def test_empty_secrets_are_ignored():
    m = Masker(["", ""])
    assert not m
    assert m.mask(b"anything") == b"anything"
    assert stream_all(m, [b"a", b"b"]) == b"ab"


def test_short_derived_forms_are_not_masked():
    # The raw value is masked; its 2-3 character base64 fragments are not.
    m = Masker(["ab"])
    assert m.mask(b"cab YWI") == b"c[MASKED] YWI"


def test_mask_text_for_status_lines_and_non_utf8():
    m = Masker([SECRET])
    assert (
        m.mask_text(f"clone failed: https://x:{SECRET}@h/r")
        == "clone failed: https://x:[MASKED]@h/r"
    )
    odd = b"\xff" + SECRET.encode()
    text = odd.decode("utf-8", "surrogateescape")
    assert m.mask_text(text).encode("utf-8", "surrogateescape") == b"\xff[MASKED]"


def test_custom_placeholder():
    assert Masker([SECRET], placeholder=b"***").mask(SECRET.encode()) == b"***"


def test_stream_matches_reference_on_random_chunkings():
    rng = random.Random(7)
    for _ in range(400):
        secrets = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 6))) for _ in range(3)]
        m = Masker(secrets, placeholder=b"#")
        data = bytes(rng.choice(b"abcx") for _ in range(rng.randint(0, 60)))
        expected = reference(m.forms, data, b"#")
        assert m.mask(data) == expected
        chunks, i = [], 0
        while i < len(data):
            n = rng.randint(1, 7)
            chunks.append(data[i : i + n])
            i += n
        assert stream_all(m, chunks) == expected, (secrets, data, chunks)


def test_many_matches_in_one_chunk():
    m = Masker([SECRET, "zzzz"])
    data = (SECRET.encode() + b" zzzz\n") * 20000
    assert m.mask(data) == b"[MASKED] [MASKED]\n" * 20000


def test_masking_a_large_stream_in_chunks_catches_every_secret():
    # Its speed is measured by bench/log_throughput.py.
    secrets = [SECRET, "hunter2hunter2", "ghp_0123456789abcdefghijKLMNOP"]
    m = Masker(secrets)
    line = b"compiling module %d ... ok, took 0.01s\n"
    block = b"".join(line % i for i in range(20000)) + b"token " + SECRET.encode() + b"\n"
    data = block * (20_000_000 // len(block))
    s = m.stream()
    out = [s.feed(data[i : i + 65536]) for i in range(0, len(data), 65536)]
    out.append(s.flush())
    joined = b"".join(out)
    assert SECRET.encode() not in joined
    assert joined.count(PH) == data.count(SECRET.encode())
