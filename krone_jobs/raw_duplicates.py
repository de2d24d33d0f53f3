"""Duplicate deliveries: raw files of one partition whose content is byte-identical to an earlier file's.

Log shippers deliver twice (a retry after a lost acknowledgement, a rotated file sent both plain and as
``.gz``, a copy left by hand). Parsing both doubles every line of their sessions, and a session whose every
step ran twice is an anomaly to every detector: on the demo day (1,597 sessions, 55 anomalous) a ``.gz``
copy of its one file made 1,546 sessions anomalous. So the parse stage reads the first of identical files
(in path order) and skips the others, naming each and counting its files and lines in the run's metrics.

Only whole-file identity counts: two files that share some lines (overlapping rotations) are both read,
since equal lines in two files may be two real events.

Cost: a ``stat`` per file and the 4-byte trailer of each ``.gz`` (its uncompressed size); only files whose
content sizes collide are read in full and hashed, so a day without duplicates reads nothing more. The
``.gz`` trailer holds the size of its last member modulo 2**32, a hint only: a candidate is a duplicate only
when the hash of its whole decompressed content matches.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_GZIP_MAGIC = b"\x1f\x8b"
_READ = 1 << 20


@dataclass(frozen=True, slots=True)
class DuplicateFile:
    """A raw file skipped because ``original`` (earlier in path order) holds the same content."""

    path: Path
    original: Path
    lines: int


def find_duplicates(files: Sequence[Path]) -> list[DuplicateFile]:
    """The files of ``files`` (in order) whose decompressed content equals an earlier file's. Empty and
    unreadable files are never duplicates: the first holds no line, the parse stage reports the second."""
    by_size: dict[int, list[Path]] = {}
    for path in files:
        size = _content_size(path)
        if size:
            by_size.setdefault(size, []).append(path)
    out: list[DuplicateFile] = []
    for group in by_size.values():
        if len(group) < 2:
            continue
        first: dict[bytes, Path] = {}
        for path in group:
            digest = _digest(path)
            if digest is None:
                continue
            key, lines = digest
            if key in first:
                out.append(DuplicateFile(path, first[key], lines))
            else:
                first[key] = path
    order = {p: i for i, p in enumerate(files)}
    return sorted(out, key=lambda d: order[d.path])


def _content_size(path: Path) -> int | None:
    """Uncompressed size modulo 2**32 (a ``.gz`` by its magic bytes: its trailer), ``None`` if unreadable."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != _GZIP_MAGIC:
                return os.fstat(f.fileno()).st_size % 2**32
            f.seek(-4, os.SEEK_END)
            return int.from_bytes(f.read(4), "little")
    except OSError:
        return None


def _digest(path: Path) -> tuple[bytes, int] | None:
    """BLAKE2b of the decompressed content and its line count (lines end in LF, or in CR where the content
    has no LF, as :func:`~krone_jobs.logformats.iter_lines` reads them); ``None`` if it cannot be read to its
    end."""
    h = hashlib.blake2b(digest_size=32)
    lf = cr = 0
    last = b""
    try:
        with open(path, "rb") as plain:
            stream = gzip.GzipFile(fileobj=plain) if plain.read(2) == _GZIP_MAGIC else plain
            plain.seek(0)
            while chunk := stream.read(_READ):
                h.update(chunk)
                lf += chunk.count(b"\n")
                cr += chunk.count(b"\r")
                last = chunk[-1:]
    except (OSError, EOFError, zlib.error):
        return None
    end = b"\n" if lf or not cr else b"\r"
    return h.digest(), (lf or cr) + (last not in (b"", end))
