"""Duplicate and continued deliveries: raw files whose content another file, of the day or the day before, holds.

Log shippers deliver twice: a retry after a lost acknowledgement, a rotated file sent both plain and as
``.gz``, a copy left by hand, an upload cut short and then sent again, a growing file shipped at noon and
again at midnight. Parsing both doubles the events of their sessions, and a session whose every step ran
twice is an anomaly to every detector: on the demo day (1,597 sessions, 55 then anomalous) a ``.gz`` copy of its
one file made 1,546 sessions anomalous. So the parse stage skips a file whose (decompressed) content is
equal to another file's or a prefix of it (for a damaged ``.gz``: what can be read of it), reads the file
that holds it whole, and names and counts what it skipped in the run's metrics. Of equal files the first
in path order is read. A file that the previous day's partition holds whole (a re-delivery that crossed
midnight) is skipped too: its lines were parsed, sessionized and scored with that day.

A file that holds a file of the previous day whole, as its beginning, is a log never rotated and shipped
whole every day: it is *continued*, read after the lines that file holds whole, which were parsed with that
day (the previous day's raw partition is the offset a tailer would keep per stream). Read whole, the
rendered HDFS log of 2008-11-09 and 11-10 in one file gave 11-10 7,915 sessions instead of its 4,019: every
session of the day before a second time. A last line the earlier file holds only in part is read again,
whole (a line is skipped only if it was read whole). UTF-16 files, whose line ends are not bytes, are read
whole.

Only whole-content containment counts: two files that share some lines but each has lines of its own
(overlapping rotations) are both read, since equal lines in two files may be two real events.

Cost: every file's first line (at most :data:`HEAD_BYTES`) is read; files that share a first line, which
different hosts, processes or rotations practically never do, are read in full, twice at most (lengths,
then BLAKE2b digests at each other member's length). A day without duplicates reads a few KiB per file. A log
never rotated is read in full with its copy of the day before (32 MB: 0.07 s); the parse stage then enters a
plain one where the lines read end, and reads a ``.gz`` past them (they cannot be skipped undecompressed).
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from krone_jobs.logfiles import UTF16_BOMS

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


@dataclass(frozen=True, slots=True)
class ContinuedFile:
    """A raw file whose beginning is ``previous``, a file of the previous day, whole: only the lines after the
    ``lines`` complete ones ``previous`` holds are read; they end at byte ``offset`` of the content, where the
    parse stage enters a plain file (a ``.gz`` is read past them)."""

    path: Path
    previous: Path
    lines: int
    offset: int


@dataclass(frozen=True, slots=True)
class Deliveries:
    """What :func:`check_deliveries` found: files to skip, and files to read after their first lines."""

    duplicates: list[DuplicateFile]
    continued: list[ContinuedFile]


def check_deliveries(files: Sequence[Path], read_before: Sequence[Path] = ()) -> Deliveries:
    """The files of ``files`` (in their order) whose content another file of ``files``, or a file of
    ``read_before`` (the previous day's, already parsed), holds whole, and the other files of ``files`` that
    hold a file of ``read_before`` whole as their beginning. Empty and unreadable files are neither: the first
    holds no line, the parse stage reports the second."""
    groups: dict[bytes, list[Path]] = {}
    for path in [*read_before, *files]:
        head = _first_line(path)
        if head:
            groups.setdefault(head, []).append(path)
    order = {p: i for i, p in enumerate([*read_before, *files])}  # an earlier day's file comes first
    today = set(files)
    duplicates: list[DuplicateFile] = []
    continued: list[ContinuedFile] = []
    for head, group in groups.items():
        if len(group) > 1 and today.intersection(group):
            skipped, grown = _contained(group, order, set(read_before), utf16=head.startswith(UTF16_BOMS))
            duplicates += [d for d in skipped if d.path in today]
            continued += grown
    return Deliveries(sorted(duplicates, key=lambda d: order[d.path]), sorted(continued, key=lambda c: order[c.path]))


def _contained(group: list[Path], order: dict[Path, int], before: set[Path],
               utf16: bool) -> tuple[list[DuplicateFile], list[ContinuedFile]]:
    """Members of one first-line group that another member holds whole, and the members (of the day, not
    skipped) that begin with a previous-day member whole."""
    lengths = {p: n for p in group if (n := _length(p)) is not None}
    cuts = set(lengths.values())
    digests = {p: d for p in lengths if (d := _digests(p, cuts)) is not None and lengths[p] in d}

    def holds(q: Path, path: Path) -> bool:
        n = lengths[path]
        return q != path and n in digests[q] and digests[q][n][0] == digests[path][n][0]

    out = []
    for path, own in digests.items():
        n = lengths[path]
        holders = [q for q in digests if holds(q, path) and (lengths[q] > n or order[q] < order[path])]
        if holders:  # the longest holder, the first of equals: the file that is read
            original = min(holders, key=lambda q: (-lengths[q], order[q]))
            out.append(DuplicateFile(path, original, own[n][1]))
    if utf16:  # a continued file's lines are counted in bytes
        return out, []
    grown = []
    for path in digests.keys() - {d.path for d in out} - before:
        starts = [p for p in before & digests.keys() if lengths[p] < lengths[path] and holds(path, p)]
        if starts:
            previous = max(starts, key=lambda p: (lengths[p], -order[p]))
            _, _, lines, offset = digests[path][lengths[previous]]
            grown.append(ContinuedFile(path, previous, lines, offset))
    return out, grown


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


def _digests(path: Path, cuts: set[int]) -> dict[int, tuple[bytes, int, int, int]] | None:
    """BLAKE2b digest, line count, complete-line count and the byte where the complete lines end, of the
    content's first ``n`` bytes for each ``n`` in ``cuts`` it reaches (its own length among them). Lines end in
    LF, or in CR where the content has no LF, as :func:`~krone_jobs.logfiles.iter_lines` reads them; a last
    line without its end counts, but not as complete."""
    h = hashlib.blake2b(digest_size=32)
    done = lf = cr = after_lf = after_cr = 0
    out: dict[int, tuple[bytes, int, int, int]] = {}
    try:
        for chunk in _chunks(path):
            end = done + len(chunk)
            for cut in sorted(c for c in cuts if done < c <= end):
                part = chunk[: cut - done]
                snap = h.copy()
                snap.update(part)
                n_lf, n_cr = lf + part.count(b"\n"), cr + part.count(b"\r")
                mark, after = (b"\n", after_lf) if n_lf or not n_cr else (b"\r", after_cr)
                if (i := part.rfind(mark)) >= 0:
                    after = done + i + 1
                ends = n_lf or n_cr
                out[cut] = (snap.digest(), ends + (part[-1:] != mark), ends, after)
            h.update(chunk)
            if (i := chunk.rfind(b"\n")) >= 0:
                after_lf = done + i + 1
            if (i := chunk.rfind(b"\r")) >= 0:
                after_cr = done + i + 1
            lf, cr, done = lf + chunk.count(b"\n"), cr + chunk.count(b"\r"), end
    except OSError:
        return None
    return out
