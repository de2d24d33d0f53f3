"""A bounded streaming reader for raw log files: plain or gzip, UTF-8 or UTF-16, LF, CRLF or bare CR.

Log files are attacker-controlled: a line may be 10 MB long and a ``.gz`` may be cut off or corrupt. The
reader yields raw BYTES per line and never holds more than a bounded line in memory; what it cannot read
is a :class:`LogReadError` with the lines read before it, so the parse stage quarantines only the rest.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import zlib
from collections.abc import Iterator
from typing import Literal, NamedTuple

DEFAULT_MAX_LINE_BYTES = 64 * 1024
"""Longer lines are quarantined as ``oversized`` without running any regex on them."""
QUARANTINE_SAMPLE_BYTES = 1024
"""How much of an oversized line is kept for the quarantine record."""
UTF8_BOM = b"\xef\xbb\xbf"


class OversizedLine(NamedTuple):
    """What :func:`iter_lines` yields instead of a line longer than its limit: a head sample and the size."""

    head: bytes
    size: int


class LogReadError(Exception):
    """A log file could not be read to its end (``kind``: ``truncated`` or ``corrupt`` compressed data, or
    ``unreadable``: the system refused it, e.g. permission denied, a link to a file that is gone, an I/O error)."""

    def __init__(self, path: str, kind: Literal["truncated", "corrupt", "unreadable"], lines_read: int,
                 detail: str) -> None:
        what = "unreadable" if kind == "unreadable" else f"{kind} compressed input"
        super().__init__(f"{path}: {what} after {lines_read} complete lines ({detail})")
        self.path = path
        self.kind = kind
        self.lines_read = lines_read

    @property
    def reason(self) -> str:
        """The quarantine reason of the file's unread rest: ``gz_truncated``, ``gz_corrupt`` or ``unreadable``."""
        return self.kind if self.kind == "unreadable" else f"gz_{self.kind}"


_GZIP_MAGIC = b"\x1f\x8b"
_SKIP_CHUNK = 1024 * 1024


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class _Utf16AsUtf8:
    """A UTF-16 file (a byte-order mark opens it: what Windows PowerShell 5 writes by default) read as UTF-8
    lines, so parsing sees what it would in a UTF-8 copy. Without this every line held NUL bytes and was
    quarantined as ``binary``. Text that is not valid UTF-16 is decoded with U+FFFD in its place."""

    def __init__(self, stream: io.BufferedIOBase) -> None:
        self.text = io.TextIOWrapper(stream, encoding="utf-16", errors="replace", newline="\n")

    def readline(self, limit: int) -> bytes:
        """At most ``limit`` characters of the next line, as UTF-8 (which may be longer in bytes: the caller's
        line-length bound then applies to the bytes)."""
        return self.text.readline(limit).encode("utf-8")


_SNIFF_BYTES = 8192


class _CrAsLf(io.RawIOBase):
    """A stream whose lines end in a bare CR (classic Mac OS, some serial consoles and network devices) with
    every CR read as LF. Read by LF, such a file was one oversized "line": 5,000 HDFS lines became one
    quarantine record of which 1 KiB was kept, and the day's quarantine ratio (1 line) passed the gate."""

    def __init__(self, stream: io.BufferedIOBase) -> None:
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.stream.read(len(buffer)).replace(b"\r", b"\n")
        buffer[: len(data)] = data
        return len(data)


def _cr_terminated(stream: io.BufferedIOBase) -> bool:
    """Whether the stream's head has CRs and no LF: its lines end in a bare CR."""
    head = stream.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]
    return b"\r" in head and b"\n" not in head


def _skip_rest(stream: io.BufferedIOBase | _Utf16AsUtf8, first: bytes) -> OversizedLine:
    """Consume the rest of an over-long line in bounded reads; count its bytes without the CR/LF."""
    size, tail, chunk = len(first), first[-2:], first
    while not chunk.endswith(b"\n") and (chunk := stream.readline(_SKIP_CHUNK)):
        size += len(chunk)
        tail = (tail + chunk)[-2:]
    terminator = 2 if tail == b"\r\n" else 1 if tail.endswith(b"\n") else 0
    return OversizedLine(first[:QUARANTINE_SAMPLE_BYTES], size - terminator)


def iter_lines(
    path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_LINE_BYTES, start: tuple[int, int] = (0, 0)
) -> Iterator[tuple[int, bytes | OversizedLine]]:
    """Yield ``(line_no, raw)`` from a plain or gzip file (detected by magic bytes), 1-based.

    Memory stays bounded: a line longer than ``max_bytes`` (plus its CR/LF) is yielded as an
    :class:`OversizedLine` and the rest of it is skipped in 1 MiB reads. A truncated or corrupt .gz
    yields every complete line before the damage, then raises :class:`LogReadError`; the partial last
    line is dropped. A UTF-8 byte-order mark opening the file (Windows tools write one) is not part of the
    first line; a UTF-16 one makes the file read as UTF-16 and yielded as UTF-8 lines. A file whose head has
    CRs and no LF has lines that end in a bare CR: each CR is read as LF. A file the system will not open or
    read raises :class:`LogReadError` (``unreadable``) too.

    ``start`` = (byte offset, lines before it): a plain UTF-8 file is read from that offset, its first line
    numbered one more (the offset must be a line start, as a continued file's is); a ``.gz`` or UTF-16 file
    cannot be entered there and is read from its start.
    """
    limit = max_bytes + 2
    line_no = 0
    try:
        with open(path, "rb") as plain, contextlib.ExitStack() as stack:
            stream: io.BufferedIOBase | _Utf16AsUtf8 = plain
            if plain.peek(2)[:2] == _GZIP_MAGIC:
                stream = stack.enter_context(gzip.GzipFile(fileobj=plain))
            try:
                if stream.peek(2)[:2] in UTF16_BOMS:  # inside: peeking a .gz decompresses
                    stream = _Utf16AsUtf8(stream)
                else:
                    crs = _cr_terminated(stream)
                    if start[0] and stream is plain:
                        plain.seek(start[0])
                        line_no = start[1]
                    if crs:
                        stream = io.BufferedReader(_CrAsLf(stream))
                while chunk := stream.readline(limit):
                    raw = chunk if len(chunk) < limit or chunk.endswith(b"\n") else _skip_rest(stream, chunk)
                    line_no += 1
                    if line_no == 1 and isinstance(raw, bytes) and raw.startswith(UTF8_BOM):
                        raw = raw[len(UTF8_BOM):]
                    yield line_no, raw
            except EOFError as exc:
                raise LogReadError(os.fspath(path), "truncated", line_no, str(exc)) from exc
            except (zlib.error, gzip.BadGzipFile) as exc:  # BadGzipFile is an OSError: caught first
                raise LogReadError(os.fspath(path), "corrupt", line_no, str(exc)) from exc
    except OSError as exc:  # cannot open or read: permission denied, a dangling link, an I/O error
        raise LogReadError(os.fspath(path), "unreadable", line_no,
                           f"{type(exc).__name__}: {exc.strerror or exc}") from exc
