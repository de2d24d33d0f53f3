"""Duplicate deliveries: raw files of one partition whose content another file of it holds whole.

Log shippers deliver twice: a retry after a lost acknowledgement, a rotated file sent both plain and as
``.gz``, a copy left by hand, an upload cut short and then sent again, a growing file shipped at noon and
again at midnight. Parsing both doubles the events of their sessions, and a session whose every step ran
twice is an anomaly to every detector: on the demo day (1,597 sessions, 55 anomalous) a ``.gz`` copy of its
one file made 1,546 sessions anomalous. So the parse stage skips a file whose (decompressed) content is
equal to another file's or a prefix of it (for a damaged ``.gz``: what can be read of it), reads the file
that holds it whole, and names and counts what it skipped in the run's metrics. Of equal files the first
in path order is read. A file that the previous day's partition holds whole (a re-delivery that crossed
midnight) is skipped too: its lines were parsed, sessionized and scored with that day.

Only whole-content containment counts: two files that share some lines but each has lines of its own
(overlapping rotations) are both read, since equal lines in two files may be two real events. A file that
holds the previous day's whole (a log never rotated, shipped whole every day) is read whole, its old lines
again: skipping what was read needs an offset per stream, kept from day to day, as a tailer keeps one.

Cost: every file's first line (at most :data:`HEAD_BYTES`) is read; files that share a first line, which
different hosts, processes or rotations practically never do, are read in full, twice at most (lengths,
then BLAKE2b digests at each other member's length). A day without duplicates reads a few KiB per file.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_GZIP_MAGIC = b"\x1f\x8b"
_READ = 1 << 16
HEAD_BYTES = 4096
"""How much of a file's first line keys it: files of one delivery share their first line."""


@dataclass(frozen=True, slots=True)
class DuplicateFile:
    """A raw file skipped because ``original`` holds its whole content (equal, or longer with it as prefix)."""

    path: Path
    original: Path
    lines: int


def find_duplicates(files: Sequence[Path], read_before: Sequence[Path] = ()) -> list[DuplicateFile]:
    """The files of ``files`` (in their order) whose content another file of ``files``, or a file of
    ``read_before`` (the previous day's, already parsed), holds whole. Empty and unreadable files are never
    duplicates: the first holds no line, the parse stage reports the second."""
    groups: dict[bytes, list[Path]] = {}
    for path in [*read_before, *files]:
        head = _first_line(path)
        if head:
            groups.setdefault(head, []).append(path)
    order = {p: i for i, p in enumerate([*read_before, *files])}  # an earlier day's file comes first
    skippable = set(files)
    out = [d for group in groups.values() if len(group) > 1 and skippable.intersection(group)
           for d in _contained(group, order) if d.path in skippable]
    return sorted(out, key=lambda d: order[d.path])


def _contained(group: list[Path], order: dict[Path, int]) -> list[DuplicateFile]:
    """Members of one first-line group that another member holds whole."""
    lengths = {p: n for p in group if (n := _length(p)) is not None}
    cuts = set(lengths.values())
    digests = {p: d for p in lengths if (d := _digests(p, cuts)) is not None and lengths[p] in d}
    out = []
    for path, own in digests.items():
        n = lengths[path]
        holders = [q for q, d in digests.items() if q != path and n in d and d[n][0] == own[n][0]
                   and (lengths[q] > n or order[q] < order[path])]
        if holders:  # the longest holder, the first of equals: the file that is read
            original = min(holders, key=lambda q: (-lengths[q], order[q]))
            out.append(DuplicateFile(path, original, own[n][1]))
    return out


def _open(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(file, content stream): a ``.gz`` (by its magic bytes) is decompressed."""
    plain = open(path, "rb")  # closed by _chunks
    if plain.read(2) == _GZIP_MAGIC:
        plain.seek(0)
        return plain, gzip.GzipFile(fileobj=plain)  # type: ignore[return-value]
    plain.seek(0)
    return plain, plain


def _chunks(path: Path) -> Iterator[bytes]:
    """The decompressed content in chunks; a damaged ``.gz`` ends where it can no longer be read."""
    plain, stream = _open(path)
    with plain:
        try:
            while chunk := stream.read(_READ):
                yield chunk
        except (EOFError, zlib.error, gzip.BadGzipFile):
            return


def _first_line(path: Path) -> bytes | None:
    """The first line (to LF or CR, at most :data:`HEAD_BYTES`); ``None`` if empty or unreadable."""
    chunks = _chunks(path)
    try:
        head = next(chunks, b"")[:HEAD_BYTES]
    except OSError:
        return None
    finally:
        chunks.close()
    ends = [i for i in (head.find(b"\n"), head.find(b"\r")) if i >= 0]
    return head[: min(ends) + 1] if ends else head or None


def _length(path: Path) -> int | None:
    try:
        return sum(map(len, _chunks(path)))
    except OSError:
        return None


def _digests(path: Path, cuts: set[int]) -> dict[int, tuple[bytes, int]] | None:
    """BLAKE2b digest and line count of the content's first ``n`` bytes for each ``n`` in ``cuts`` it reaches
    (its own length among them). Lines end in LF, or in CR where the content has no LF, as
    :func:`~krone_jobs.logformats.iter_lines` reads them; a last line without its end counts."""
    h = hashlib.blake2b(digest_size=32)
    done = lf = cr = 0
    out: dict[int, tuple[bytes, int]] = {}
    try:
        for chunk in _chunks(path):
            end = done + len(chunk)
            for cut in sorted(c for c in cuts if done < c <= end):
                part = chunk[: cut - done]
                snap = h.copy()
                snap.update(part)
                out[cut] = (snap.digest(), _lines(lf + part.count(b"\n"), cr + part.count(b"\r"), part[-1:]))
            h.update(chunk)
            lf, cr, done = lf + chunk.count(b"\n"), cr + chunk.count(b"\r"), end
    except OSError:
        return None
    return out


def _lines(lf: int, cr: int, last: bytes) -> int:
    end = b"\n" if lf or not cr else b"\r"
    return (lf or cr) + (last not in (b"", end))
