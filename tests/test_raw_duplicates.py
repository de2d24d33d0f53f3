"""Duplicate deliveries are found by content, plain or .gz, whole or cut short, and nothing else is taken for one."""

from __future__ import annotations

import gzip
from pathlib import Path

from krone_jobs.raw_duplicates import DuplicateFile, find_duplicates

LINES = [b"081109 203615 148 INFO dfs.DataNode: line %06d of the day\n" % i for i in range(20_000)]
TEXT = b"".join(LINES[:500])


def _write(folder: Path, files: dict[str, bytes]) -> list[Path]:
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return sorted(folder / name for name in files)


def test_copies_plain_or_gz_are_duplicates_of_the_first_in_path_order(tmp_path: Path) -> None:
    a, a_gz, b, c = _write(tmp_path, {"a.log": TEXT, "a.log.gz": gzip.compress(TEXT), "b.log": TEXT,
                                      "c.log": TEXT.replace(b"000007", b"000008")})
    assert find_duplicates([a, a_gz, b, c]) == [DuplicateFile(a_gz, a, 500), DuplicateFile(b, a, 500)]
    assert find_duplicates([a_gz, b]) == [DuplicateFile(b, a_gz, 500)]


def test_a_partial_delivery_is_held_by_the_whole_one(tmp_path: Path) -> None:
    """A growing file shipped at noon and again at midnight; an upload cut short (a .gz that ends early)."""
    whole = b"".join(LINES)
    packed = gzip.compress(whole)
    cut, day, noon = _write(tmp_path, {"noon.log": whole[: len(whole) // 3], "cut.log.gz": packed[: len(packed) // 2],
                                       "day.log": whole})
    found = find_duplicates([cut, day, noon])
    assert [(d.path, d.original) for d in found] == [(cut, day), (noon, day)]
    assert found[1].lines == len(LINES) // 3 + 1  # a cut-off last line counts


def test_a_file_the_day_before_holds_is_skipped_but_never_a_file_of_that_day(tmp_path: Path) -> None:
    """A re-delivery that crossed midnight: yesterday's copy was parsed with yesterday."""
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    (old,) = _write(tmp_path / "d1", {"app.log": TEXT})
    again, grown, other = _write(tmp_path / "d2", {"again.log.gz": gzip.compress(TEXT), "grown.log": TEXT + LINES[600],
                                                   "other.log": b"".join(LINES[500:600])})
    assert find_duplicates([again, other], read_before=[old]) == [DuplicateFile(again, old, 500)]
    assert find_duplicates([grown], read_before=[old]) == []  # it holds yesterday's file: read whole


def test_files_that_only_share_lines_are_all_read(tmp_path: Path) -> None:
    """Overlapping rotations, and a file that has lines of its own after a common start."""
    files = _write(tmp_path, {"r1.log": b"".join(LINES[:300]), "r2.log": b"".join(LINES[200:500]),
                              "own.log": b"".join(LINES[:100]) + b"a line of its own\n"})
    assert find_duplicates(files) == []


def test_empty_unreadable_and_unrelated_files_are_never_duplicates(tmp_path: Path) -> None:
    files = _write(tmp_path, {"e1.log": b"", "e2.log": b"", "bad.log.gz": b"\x1f\x8b" + b"\xff" * 64, "t.log": TEXT})
    gone = tmp_path / "gone.log"
    gone.symlink_to(tmp_path / "nowhere.log")
    assert find_duplicates([*files, gone]) == []


def test_lines_are_counted_as_they_are_read(tmp_path: Path) -> None:
    """A last line without its newline counts; so do lines that end in a bare CR."""
    mac = TEXT.replace(b"\n", b"\r")
    a, b, c, d = _write(tmp_path, {"a.log": TEXT + b"tail", "b.log": TEXT + b"tail", "c.log": mac, "d.log": mac})
    assert find_duplicates([a, b, c, d]) == [DuplicateFile(b, a, 501), DuplicateFile(d, c, 500)]
