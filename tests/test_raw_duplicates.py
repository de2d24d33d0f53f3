"""Duplicate and continued deliveries are found by content, plain or .gz, whole or cut short, and nothing else is
taken for one."""

from __future__ import annotations

import gzip
from pathlib import Path

from krone_jobs.raw_duplicates import ContinuedFile, DuplicateFile, check_deliveries

LINES = [b"081109 203615 148 INFO dfs.DataNode: line %06d of the day\n" % i for i in range(20_000)]
TEXT = b"".join(LINES[:500])


def find_duplicates(files: list[Path], read_before: list[Path] | None = None) -> list[DuplicateFile]:
    return check_deliveries(files, read_before or []).duplicates


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
    assert check_deliveries([again, other]).duplicates == []
    found = check_deliveries([grown], read_before=[old])  # it begins with yesterday's file: continued
    assert (found.duplicates, found.continued) == ([], [ContinuedFile(grown, old, 500, len(TEXT))])


def test_a_log_never_rotated_is_read_after_what_the_day_before_held(tmp_path: Path) -> None:
    """Shipped whole every day, plain or packed: of several earlier files it begins with, the longest counts;
    a copy of it the same day is still a duplicate; a file of the day never continues another of the day."""
    for day in ("d1", "d2"):
        (tmp_path / day).mkdir()
    whole = b"".join(LINES)
    monday, also_monday = _write(tmp_path / "d1", {"app.log": whole[: len(LINES[0]) * 900],
                                                   "app.log.1": whole[: len(LINES[0]) * 300]})
    tuesday, packed, other = _write(tmp_path / "d2", {"app.log": whole, "app.log.gz": gzip.compress(whole),
                                                      "early.log": whole[: len(LINES[0]) * 100]})
    found = check_deliveries([tuesday, packed, other], read_before=[monday, also_monday])
    assert found.continued == [ContinuedFile(tuesday, monday, 900, len(LINES[0]) * 900)]
    assert found.duplicates == [DuplicateFile(packed, tuesday, len(LINES)), DuplicateFile(other, tuesday, 100)]
    assert check_deliveries([packed], read_before=[monday]).continued == [ContinuedFile(packed, monday, 900,
                                                                                        len(LINES[0]) * 900)]


def test_a_line_the_day_before_held_in_part_is_read_again(tmp_path: Path) -> None:
    """Yesterday's copy was taken while a line was being written: only its complete lines are skipped, in LF
    and in bare-CR files; a UTF-16 file, whose line ends are not bytes, is read whole."""
    for day in ("d1", "d2"):
        (tmp_path / day).mkdir()
    text = b"".join(LINES[:1000])
    half = len(LINES[0]) * 400 + 17
    mac = text.replace(b"\n", b"\r")
    wide = text.decode().encode("utf-16")
    before = _write(tmp_path / "d1", {"a.log": text[:half], "b.log": mac[:half], "c.log": wide[: len(wide) // 2]})
    after = _write(tmp_path / "d2", {"a.log": text, "b.log": mac, "c.log": wide})
    found = check_deliveries(after, read_before=before)
    at = len(LINES[0]) * 400  # where the 400 complete lines end, the partial one not included
    assert found.continued == [ContinuedFile(after[0], before[0], 400, at), ContinuedFile(after[1], before[1], 400, at)]
    assert found.duplicates == []


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


def test_where_the_lines_read_end_is_found_past_the_first_read_chunk(tmp_path: Path) -> None:
    for day in ("d1", "d2"):
        (tmp_path / day).mkdir()
    whole = b"".join(LINES[:5000])
    cut = len(LINES[0]) * 3000 + 9  # 165 KB: the third 64 KiB read, and a partial line
    (before,) = _write(tmp_path / "d1", {"a.log": whole[:cut]})
    (after,) = _write(tmp_path / "d2", {"a.log": whole})
    assert check_deliveries([after], [before]).continued == [ContinuedFile(after, before, 3000, len(LINES[0]) * 3000)]
