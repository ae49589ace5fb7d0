"""Secret masking over byte streams (pure: no I/O).

A `Masker` is built once per step from the secret values the step may see. It
masks every *form* a secret is likely to be printed in:

- the raw value, and each line of a multi-line value separately (a PEM key
  printed with different line endings is still covered line by line);
- base64 (standard and URL-safe) at the three byte alignments: only the inner
  part that does not depend on the neighbouring bytes, so the secret is found
  inside a larger encoded blob too;
- URL-encoded (``quote`` with and without ``/`` kept, ``quote_plus``, upper and
  lower case hex);
- JSON string-escaped (ASCII-only and not).

Not masked (documented limits): double encodings (base64 of base64, ...),
other escapings, and secrets transformed by the step. Secrets are simply never
given to untrusted refs.

Forms are tried longest first, so of two secrets where one is a prefix of the
other, both are masked whole. `StreamMasker` masks a stream fed in arbitrary
chunks (a secret split across writes, even one byte at a time, is masked) and
holds back only a tail that could still become a match.

Matching is leftmost, then longest. The scan is C-speed: ``in`` and
``bytes.find`` per form over whole chunks; Python work is per match, not per byte.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

# Derived forms (lines of a multi-line secret, encodings) shorter than this are
# not masked: a 2-character base64 fragment would blank out ordinary text.
MIN_DERIVED_LEN = 4

# Above this many matches per chunk (per byte), one compiled regex over the chunk
# is cheaper than collecting matches with find() in Python.
_MANY_MATCHES_PER_BYTE = 1 / 256

_HEX_ESCAPE = re.compile(rb"%[0-9A-F]{2}")


def _b64_inner(raw: bytes, encode) -> list[bytes]:
    """The parts of encode(x + raw + y) that depend on `raw` only, for each
    alignment of `raw` in its 3-byte group."""
    forms = []
    for offset in range(3):
        encoded = encode(b"\0" * offset + raw)
        first = -(-8 * offset // 6)  # first char not touched by the prefix
        last = (8 * (offset + len(raw))) // 6  # chars past this touch the suffix
        forms.append(encoded[first:last])
    return forms


def secret_forms(secret: str) -> set[bytes]:
    """Every byte string to mask for one secret (empty set for an empty one)."""
    if not secret:
        return set()
    raw = secret.encode("utf-8", "surrogateescape")
    derived: set[bytes] = set()
    lines = secret.splitlines()
    if len(lines) > 1:
        derived.update(line.encode("utf-8", "surrogateescape") for line in lines)
    derived.update(_b64_inner(raw, base64.b64encode))
    derived.update(_b64_inner(raw, base64.urlsafe_b64encode))
    for text in (quote(raw, safe=""), quote(raw, safe="/"), quote_plus(raw, safe="")):
        upper = text.encode("ascii")
        derived.add(upper)
        derived.add(_HEX_ESCAPE.sub(lambda m: m.group(0).lower(), upper))
    for ascii_only in (True, False):
        escaped = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
        derived.add(escaped.encode("utf-8", "surrogateescape"))
    forms = {f for f in derived if len(f) >= MIN_DERIVED_LEN and f.strip()}
    forms.add(raw)
    return forms


class Masker:
    """Masks a fixed set of secrets. Immutable once built; share it freely."""

    def __init__(self, secrets: Iterable[str], placeholder: bytes = b"[MASKED]") -> None:
        forms: set[bytes] = set()
        for secret in secrets:
            forms |= secret_forms(secret)
        # Longest first: at one position the longest form wins.
        self.forms: tuple[bytes, ...] = tuple(sorted(forms, key=lambda f: (-len(f), f)))
        self.placeholder = placeholder
        self._firsts = tuple(f[:1] for f in self.forms)
        self._regex = (
            re.compile(b"|".join(re.escape(f) for f in self.forms)) if self.forms else None
        )

    def __bool__(self) -> bool:
        return bool(self.forms)

    def stream(self) -> StreamMasker:
        return StreamMasker(self)

    def mask(self, data: bytes) -> bytes:
        """Mask a complete piece of data (nothing follows it)."""
        if not self.forms:
            return data
        return self._scan(data, final=True)[0]

    def mask_text(self, text: str) -> str:
        """Mask a str (daemon log lines, status descriptions); lossless for
        surrogate-escaped bytes."""
        if not self.forms:
            return text
        raw = text.encode("utf-8", "surrogateescape")
        return self.mask(raw).decode("utf-8", "surrogateescape")

    # -- internals ---------------------------------------------------------

    def _spans(self, buf: bytes) -> list[tuple[int, int]]:
        """Non-overlapping matches in buf, leftmost then longest, in order."""
        present = [f for f in self.forms if f in buf]
        if not present:
            return []
        if len(present) == 1:
            form = present[0]
            spans = []
            i = buf.find(form)
            while i != -1:
                spans.append((i, i + len(form)))
                i = buf.find(form, i + len(form))
            return spans
        limit = int(len(buf) * _MANY_MATCHES_PER_BYTE) + 64
        starts: list[tuple[int, int]] = []
        for form in present:
            i = buf.find(form)
            while i != -1:
                starts.append((i, -len(form)))
                if len(starts) > limit:
                    return [m.span() for m in self._regex.finditer(buf)]
                i = buf.find(form, i + 1)
        starts.sort()
        spans = []
        end = 0
        for start, neg_len in starts:
            if start >= end:
                end = start - neg_len
                spans.append((start, end))
        return spans

    def _hold(self, buf: bytes, lo: int) -> int:
        """Smallest i >= lo such that buf[i:] is a proper prefix of a form:
        the bytes from there could still become a match. len(buf) if none."""
        n = len(buf)
        best = n
        for form, first in zip(self.forms, self._firsts, strict=True):
            start = max(lo, n - len(form) + 1)
            if start >= best:
                continue
            j = buf.find(first, start, best)
            while j != -1:
                if form.startswith(buf[j:]):
                    best = j
                    break
                j = buf.find(first, j + 1, best)
        return best

    def _scan(self, buf: bytes, final: bool) -> tuple[bytes, bytes]:
        """(masked output, held-back rest). With final, nothing is held back."""
        n = len(buf)
        spans = self._spans(buf)
        hold = n if final else self._hold(buf, 0)
        if not spans:
            return (buf, b"") if hold == n else (buf[:hold], buf[hold:])
        pieces = []
        last = 0
        for start, end in spans:
            if start >= hold:
                break  # undecided: more data could make a longer match here
            pieces.append(buf[last:start])
            pieces.append(self.placeholder)
            last = end
            if end > hold:
                hold = self._hold(buf, end)
        pieces.append(buf[last:hold])
        return b"".join(pieces), buf[hold:]


class StreamMasker:
    """Masks one stream fed in arbitrary chunks. Not thread-safe (one per stream)."""

    def __init__(self, masker: Masker) -> None:
        self._masker = masker
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        """Masked bytes that are final; may return less than given (held back)."""
        if not self._masker.forms:
            return data
        buf = self._pending + data if self._pending else bytes(data)
        out, self._pending = self._masker._scan(buf, final=False)
        return out

    def flush(self) -> bytes:
        """The held-back rest, masked: call once the stream has ended."""
        rest, self._pending = self._pending, b""
        return self._masker.mask(rest) if rest else b""

    @property
    def pending(self) -> int:
        """How many bytes are held back right now."""
        return len(self._pending)
