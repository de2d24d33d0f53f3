"""Duplicate deliveries are found by content, plain or .gz, and nothing else is taken for one."""

from __future__ import annotations

import gzip
from pathlib import Path

from krone_jobs.raw_duplicates import DuplicateFile, find_duplicates

TEXT = b"".join(b"081109 203615 148 INFO dfs.DataNode: line %d\n" % i for i in range(500))


def _write(folder: Path, files: dict[str, bytes]) -> list[Path]:
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return sorted(folder / name for name in files)


def test_copies_plain_or_gz_are_duplicates_of_the_first_in_path_order(tmp_path: Path) -> None:
    a, a_gz, b, c = _write(tmp_path, {"a.log": TEXT, "a.log.gz": gzip.compress(TEXT), "b.log": TEXT,
                                      "c.log": TEXT.replace(b"line 7\n", b"line 8\n")})
    assert find_duplicates([a, a_gz, b, c]) == [DuplicateFile(a_gz, a, 500), DuplicateFile(b, a, 500)]
    assert find_duplicates([a_gz, b]) == [DuplicateFile(b, a_gz, 500)]


def test_empty_unreadable_and_damaged_files_are_never_duplicates(tmp_path: Path) -> None:
    files = _write(tmp_path, {"e1.log": b"", "e2.log": b"", "t.log": TEXT[:-1],
                              "t.log.gz": gzip.compress(TEXT[:-1])[:-9] + gzip.compress(TEXT[:-1])[-4:]})
    gone = tmp_path / "gone.log"
    gone.symlink_to(tmp_path / "nowhere.log")
    assert find_duplicates([*files, gone]) == []


def test_lines_are_counted_as_they_are_read(tmp_path: Path) -> None:
    """A last line without its newline counts; so do lines that end in a bare CR."""
    mac = TEXT.replace(b"\n", b"\r")
    a, b, c, d = _write(tmp_path, {"a.log": TEXT + b"tail", "b.log": TEXT + b"tail", "c.log": mac, "d.log": mac})
    assert find_duplicates([a, b, c, d]) == [DuplicateFile(b, a, 501), DuplicateFile(d, c, 500)]
