from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from krone_jobs.logfiles import QUARANTINE_SAMPLE_BYTES, LogReadError, OversizedLine, iter_lines
from krone_jobs.logformats import HDFS, QuarantineReason, Quarantined, parse_line
from tests.test_logformats import HDFS_LINE, parsed, quarantined


def test_iter_lines_plain_file_with_crlf_and_no_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"one\r\ntwo\r\n\r\nthree")
    assert list(iter_lines(path)) == [(1, b"one\r\n"), (2, b"two\r\n"), (3, b"\r\n"), (4, b"three")]
    assert list(iter_lines(path, max_bytes=5)) == list(iter_lines(path))
    assert list(iter_lines(path, max_bytes=3))[3] == (4, OversizedLine(b"three", 5))


@pytest.mark.parametrize("compress", [False, True])
def test_iter_lines_drops_a_byte_order_mark_opening_the_file(tmp_path: Path, compress: bool) -> None:
    body = b"\xef\xbb\xbf" + HDFS_LINE + b"\n\xef\xbb\xbfnot at the start\n"
    path = tmp_path / "bom.log"
    path.write_bytes(gzip.compress(body) if compress else body)
    (_, first), (_, second) = iter_lines(path)
    assert isinstance(first, bytes) and parsed(first).component == "dfs.DataNode$PacketResponder"
    assert second == b"\xef\xbb\xbfnot at the start\n"  # only the file's first bytes are a mark


def test_iter_lines_gzip_is_detected_by_content(tmp_path: Path) -> None:
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(HDFS_LINE + b"\n" + HDFS_LINE))
    assert [parse_line(raw, HDFS) for _, raw in iter_lines(path)] == [parsed(HDFS_LINE)] * 2


def test_iter_lines_truncated_gzip(tmp_path: Path) -> None:
    lines = [b"%06d line of text that compresses\n" % i for i in range(20000)]
    data = gzip.compress(b"".join(lines))
    path = tmp_path / "cut.log.gz"
    path.write_bytes(data[: len(data) // 2])
    got: list[bytes] = []
    with pytest.raises(LogReadError) as err:
        for line_no, raw in iter_lines(path):
            assert isinstance(raw, bytes) and line_no == len(got) + 1
            got.append(raw)
    assert err.value.kind == "truncated" and err.value.lines_read == len(got)
    assert 0 < len(got) < len(lines) and got == lines[: len(got)]
    assert "truncated compressed input" in str(err.value)


def test_iter_lines_corrupt_gzip(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(b"hello\n" * 1000))
    data[20:40] = b"\xff" * 20
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(LogReadError) as err:
        list(iter_lines(path))
    assert err.value.kind == "corrupt" and err.value.reason == "gz_corrupt"


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("bom", [b"\xff\xfe", b"\xfe\xff"])
def test_iter_lines_reads_a_utf16_file_as_utf8_lines(tmp_path: Path, bom: bytes, compress: bool) -> None:
    """A byte-order mark says UTF-16 (PowerShell 5's default): lines come out as the UTF-8 file's would,
    CRLF and all, and a line over the limit is still cut short."""
    last = "081109 203615 148 INFO dfs.DataNode: café ☃ blk_1\n"
    text = HDFS_LINE.decode() + "\r\n" + "x" * 70_000 + "\n" + last
    data = bom + text.encode("utf-16-le" if bom == b"\xff\xfe" else "utf-16-be")
    path = tmp_path / "win.log"
    path.write_bytes(gzip.compress(data) if compress else data)
    lines = [raw for _, raw in iter_lines(path)]
    assert lines[0] == HDFS_LINE + b"\r\n" and lines[2] == last.encode()
    assert isinstance(lines[1], OversizedLine) and lines[1].size == 70_000 and len(lines) == 3
    assert parse_line(lines[0], HDFS) == parsed(HDFS_LINE)


@pytest.mark.parametrize("compress", [False, True])
def test_iter_lines_reads_bare_cr_line_ends_as_lines(tmp_path: Path, compress: bool) -> None:
    """CR-only line ends used to make the whole file one oversized line (1 KiB of it kept): now each CR ends
    a line, an over-long one is still cut short, and a stray CR in an LF file stays inside its line."""
    body = HDFS_LINE + b"\r" + b"x" * 70_000 + b"\r\r" + HDFS_LINE
    path = tmp_path / "mac.log"
    path.write_bytes(gzip.compress(body) if compress else body)
    lines = [raw for _, raw in iter_lines(path)]
    assert lines[0] == HDFS_LINE + b"\n" and lines[2:] == [b"\n", HDFS_LINE]
    assert isinstance(lines[1], OversizedLine) and lines[1].size == 70_000
    assert parse_line(lines[0], HDFS) == parse_line(lines[3], HDFS) == parsed(HDFS_LINE)
    path.write_bytes(b"a\rb\nc\n")
    assert list(iter_lines(path)) == [(1, b"a\rb\n"), (2, b"c\n")]


def test_iter_lines_a_file_the_system_will_not_read_is_a_read_error(tmp_path: Path) -> None:
    """A link to a file that is gone, a folder named like a log: one ``unreadable`` error, not a crash."""
    (tmp_path / "gone.log").symlink_to(tmp_path / "rotated-away.log")
    (tmp_path / "folder.log").mkdir()
    for name, error in (("gone.log", "FileNotFoundError"), ("folder.log", "IsADirectoryError")):
        with pytest.raises(LogReadError) as err:
            list(iter_lines(tmp_path / name))
        assert err.value.kind == "unreadable" and err.value.reason == "unreadable" and err.value.lines_read == 0
        assert error in str(err.value)


@pytest.mark.parametrize("compress", [False, True])
def test_iter_lines_bounds_a_ten_megabyte_line(tmp_path: Path, compress: bool) -> None:
    huge = b"x" * (10 * 1024 * 1024)
    data = b"before\n" + huge + b"\r\nafter\n"
    path = tmp_path / "big.log"
    path.write_bytes(gzip.compress(data) if compress else data)
    items = list(iter_lines(path))
    assert items[0] == (1, b"before\n") and items[2] == (3, b"after\n")
    line_no, big = items[1]
    assert line_no == 2 and big == OversizedLine(huge[:QUARANTINE_SAMPLE_BYTES], len(huge))
    q = quarantined(big)
    assert q.reason is QuarantineReason.OVERSIZED and str(len(huge)) in q.message


def test_iter_lines_oversized_boundary(tmp_path: Path) -> None:
    path = tmp_path / "edge.log"
    path.write_bytes(b"a" * 10 + b"\r\n" + b"b" * 11 + b"\r\n" + b"c" * 13)
    items = [raw for _, raw in iter_lines(path, max_bytes=10)]
    assert items[0] == b"a" * 10 + b"\r\n"
    assert isinstance(parse_line(items[1], HDFS, max_bytes=10), Quarantined)  # 11 bytes: caught by parse_line
    assert items[2] == OversizedLine(b"c" * 12, 13)


# --- real data ----------------------------------------------------------------------------------------


def test_a_plain_file_is_entered_at_a_line_start_and_a_packed_one_read_from_its_start(tmp_path: Path) -> None:
    """A continued file (a log never rotated) is entered where the day before's copy ended; lines keep their
    numbers. A .gz cannot be entered mid-stream: it is read from its start (the caller skips by number)."""
    data = b"".join(b"line %d\n" % i for i in range(1, 101))
    plain, mac, packed = tmp_path / "a.log", tmp_path / "m.log", tmp_path / "a.log.gz"
    plain.write_bytes(data)
    mac.write_bytes(data.replace(b"\n", b"\r"))
    packed.write_bytes(gzip.compress(data))
    at = data.index(b"line 41\n")
    assert list(iter_lines(plain, start=(at, 40))) == list(iter_lines(plain))[40:]
    assert list(iter_lines(mac, start=(at, 40))) == list(iter_lines(mac))[40:]
    assert list(iter_lines(packed, start=(at, 40))) == list(iter_lines(packed))
