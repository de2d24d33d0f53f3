"""Sessionize job: every session once, whole, ordered; midnight carry-over; node windows as the format says."""

from __future__ import annotations

import csv
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from krone_jobs.jobs.parse import run_parse
from krone_jobs.jobs.sessionize import SkippedDayError, run_sessionize
from krone_jobs.logformats import THUNDERBIRD, NodeWindowSessionKey, ParsedLine, parse_line
from krone_jobs.partitions import partition_dir

SOURCE = "syn"
DAYS = ("2026-11-01", "2026-11-02")


def _sessions(root: Path, source: str, days: tuple[str, ...]) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(partition_dir(root, "sessions", source, d)).assign(dt=d) for d in days],
                     ignore_index=True)


def _labels(pipeline: Any) -> dict[str, dict[str, str]]:
    with open(pipeline.root / "labels" / SOURCE / "labels.csv", newline="") as fh:
        return {row["session_id"]: row for row in csv.DictReader(fh)}


def test_every_generated_session_is_emitted_once_and_whole(pipeline: Any) -> None:
    sessions = _sessions(pipeline.root, SOURCE, DAYS)
    labels = _labels(pipeline)
    assert sessions["session_id"].is_unique
    assert set(sessions["session_id"]) == set(labels)
    assert sum(m.sessions for m in pipeline.sessionize.values()) == len(labels) == pipeline.summary.sessions
    for row in sessions.itertuples():
        assert row.n_events == len(row.template_ids) == len(row.lines) == int(labels[row.session_id]["n_lines"])
        assert row.first_ts <= row.last_ts


def test_session_crossing_midnight_is_emitted_once_on_the_day_it_ends(pipeline: Any) -> None:
    sessions = _sessions(pipeline.root, SOURCE, DAYS)
    files = sessions["lines"].map(lambda refs: {r.rsplit(":", 1)[0] for r in refs})
    crossing = sessions[files.map(len) == 2]
    assert len(crossing) >= 1 and pipeline.sessionize[DAYS[0]].open_sessions >= len(crossing)
    assert pipeline.sessionize[DAYS[1]].carried_in_events > 0
    for row in crossing.itertuples():
        assert row.dt == DAYS[1]
        assert row.first_ts.date().isoformat() == DAYS[0] and row.last_ts.date().isoformat() == DAYS[1]
        refs = [(r.rsplit(":", 1)[0], int(r.rsplit(":", 1)[1])) for r in row.lines]
        assert refs[0][0].endswith(f"dt={DAYS[0]}/{SOURCE}.log") and refs[-1][0].endswith(f"dt={DAYS[1]}/{SOURCE}.log")


def _tb_line(node: str, at: datetime, i: int) -> str:
    epoch = int((at - datetime(1970, 1, 1)).total_seconds())
    return (f"- {epoch} {at:%Y.%m.%d} {node} {at:%b} {at.day} {at:%H:%M:%S} {node}/{node} "
            f"sshd[{100 + i}]: session opened for user u{i}")


def test_node_windows_follow_the_format_rule_across_midnight(spark: Any, tmp_path: Path) -> None:
    day1, day2 = "2005-11-09", "2005-11-10"
    t = datetime(2005, 11, 9, 23, 50)
    plan = {  # node -> offsets in seconds from 23:50 on day 1
        "a": [0, 10, 20, 220, 230],          # two windows (200 s of silence)
        "b": [100, 170],                     # a gap of 70 s > 60 s: two windows
        "c": [560, 590, 630, 645],           # 23:59:20 .. 00:00:45: one window across midnight
        "d": [4200, 4205],                   # day 2 only
    }
    events = sorted((t + timedelta(seconds=s), node, i) for node, offs in plan.items() for i, s in enumerate(offs))
    by_day: dict[str, list[str]] = defaultdict(list)
    for at, node, i in events:
        by_day[at.date().isoformat()].append(_tb_line(node, at, i))
    for day, lines in by_day.items():
        folder = tmp_path / "raw" / "tb" / f"dt={day}"
        folder.mkdir(parents=True)
        (folder / "tb.log").write_text("\n".join(lines) + "\n")

    rule = NodeWindowSessionKey()
    expected: dict[str, list[str]] = defaultdict(list)
    for day in (day1, day2):
        for no, line in enumerate(by_day[day], start=1):
            parsed = parse_line(line.encode(), THUNDERBIRD)
            assert isinstance(parsed, ParsedLine)
            expected[rule.keys(parsed)[0]].append(f"raw/tb/dt={day}/tb.log:{no}")

    for day in (day1, day2):
        run_parse("tb", day, "thunderbird", data_root=tmp_path, spark=spark, gate=False)
    first = run_sessionize("tb", day1, data_root=tmp_path, spark=spark, gate=False)
    second = run_sessionize("tb", day2, data_root=tmp_path, spark=spark, gate=False)
    assert (first.open_sessions, second.carried_in_events) == (1, 2)
    got = _sessions(tmp_path, "tb", (day1, day2))
    assert dict(zip(got["session_id"], got["lines"].map(list))) == expected
    crossing = got[got["session_id"].str.startswith("c#")]
    assert len(crossing) == 1 and crossing["dt"].item() == day2 and crossing["n_events"].item() == 4


def _hdfs_line(at: datetime, block: str) -> str:
    return f"{at:%y%m%d %H%M%S} 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block {block} terminating"


def test_a_session_that_never_falls_silent_is_cut_after_a_day_not_carried_forever(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block id and a node (900 s gap here) that log every 10 minutes for three days: without a bound
    neither would ever close. The block is carried over day 1, cut at the end of day 2 (spanning more than
    the default day) and its rest closes once it falls silent (day 4 is empty). The node, with
    ``KRONE_MAX_SESSION_SECONDS`` at half a day, is cut at the end of each day instead of carried."""
    days = ("2008-11-09", "2008-11-10", "2008-11-11", "2008-11-12")
    start = datetime(2008, 11, 9, 0, 5)
    stamps = [start + timedelta(minutes=10 * i) for i in range(3 * 144)]
    for source, line in (("blk", lambda at, i: _hdfs_line(at, "blk_-42")), ("tb", lambda at, i: _tb_line("n1", at, i))):
        for day in days:
            folder = tmp_path / "raw" / source / f"dt={day}"
            folder.mkdir(parents=True)
            (folder / "a.log").write_text("".join(f"{line(at, i)}\n" for i, at in enumerate(stamps)
                                                  if at.date().isoformat() == day))
    e = int((start - datetime(1970, 1, 1)).total_seconds())  # of the first line; each day's first: + 86,400
    cases = (
        ("blk", "hdfs", None, None, [(0, 1, 0), (1, 0, 1), (0, 1, 0), (1, 0, 0)], [f"blk_-42@{e}", "blk_-42"],
         [288, 144]),
        ("tb", "thunderbird", 900.0, "43200", [(1, 0, 1), (1, 0, 1), (1, 0, 1), (0, 0, 0)],
         [f"n1#{e}", f"n1#{e + 86_400}", f"n1#{e + 2 * 86_400}"], [144, 144, 144]),
    )
    for source, fmt, gap, bound, counts, names, sizes in cases:
        if bound is not None:
            monkeypatch.setenv("KRONE_MAX_SESSION_SECONDS", bound)
        for day in days:
            run_parse(source, day, fmt, data_root=tmp_path, spark=spark, gate=False)
        runs = [run_sessionize(source, day, data_root=tmp_path, spark=spark, gap_seconds=gap, gate=False)
                for day in days]
        assert [(m.sessions, m.open_sessions, m.cut_sessions) for m in runs] == counts, source
        got = _sessions(tmp_path, source, days)
        assert (list(got["session_id"]), list(got["n_events"])) == (names, sizes), source
        assert got["lines"].map(len).sum() == len(stamps)  # every line in exactly one session


def test_a_huge_session_is_emitted_in_pieces_not_gathered_into_one_row(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``KRONE_MAX_SESSION_EVENTS`` at 50: a block of 120 events closes as pieces of 50, 50 and 20 in
    time order; a block still open at midnight with 40 events is carried, and with its 30 events of day 2
    splits into 50 + 20 there; a block of 30 and a node window of 120 events (one line a second, so
    several lines share a second and the file order decides) follow the same rule."""
    monkeypatch.setenv("KRONE_MAX_SESSION_EVENTS", "50")
    day1, day2 = "2008-11-09", "2008-11-10"
    t = datetime(2008, 11, 9, 10, 0)
    late = datetime(2008, 11, 9, 23, 59, 20)
    rows = ([(t + timedelta(seconds=i // 3), "blk_1") for i in range(120)]
            + [(t + timedelta(seconds=i), "blk_2") for i in range(30)]
            + [(late + timedelta(seconds=i), "blk_3") for i in range(70)])  # 40 before midnight, 30 after
    for day in (day1, day2):
        folder = tmp_path / "raw" / "hdfs" / f"dt={day}"
        folder.mkdir(parents=True)
        (folder / "a.log").write_text("".join(f"{_hdfs_line(at, blk)}\n" for at, blk in sorted(rows)
                                              if at.date().isoformat() == day))
        run_parse("hdfs", day, "hdfs", data_root=tmp_path, spark=spark, gate=False)
    first = run_sessionize("hdfs", day1, data_root=tmp_path, spark=spark)
    second = run_sessionize("hdfs", day2, data_root=tmp_path, spark=spark)
    assert [(m.sessions, m.open_sessions, m.split_sessions) for m in (first, second)] == [(4, 1, 1), (2, 0, 1)]
    got = _sessions(tmp_path, "hdfs", (day1, day2))
    epoch = lambda at: int((at - datetime(1970, 1, 1)).total_seconds())  # noqa: E731
    assert dict(zip(got["session_id"], got["n_events"])) == {
        f"blk_1@{epoch(t)}~0": 50, f"blk_1@{epoch(t)}~1": 50, f"blk_1@{epoch(t)}~2": 20, "blk_2": 30,
        f"blk_3@{epoch(late)}~0": 50, f"blk_3@{epoch(late)}~1": 20}
    pieces = got[got["session_id"].str.startswith("blk_1@")].sort_values("session_id")
    numbers = [int(ref.rsplit(":", 1)[1]) for refs in pieces["lines"] for ref in refs]
    assert numbers == sorted(numbers) and len(set(numbers)) == 120  # time (and file) order, every line once

    node = tmp_path / "raw" / "tb" / f"dt={day1}"
    node.mkdir(parents=True)
    (node / "a.log").write_text("".join(f"{_tb_line('n1', t + timedelta(seconds=i // 2), i)}\n" for i in range(120)))
    run_parse("tb", day1, "thunderbird", data_root=tmp_path, spark=spark, gate=False)
    m = run_sessionize("tb", day1, data_root=tmp_path, spark=spark)
    assert (m.sessions, m.split_sessions) == (3, 1)
    got = _sessions(tmp_path, "tb", (day1,))
    assert list(got.sort_values("session_id")["session_id"]) == [f"n1#{epoch(t)}~{k}" for k in range(3)]


def test_a_line_stamped_years_ahead_does_not_close_the_sessions_crossing_midnight(spark: Any, tmp_path: Path) -> None:
    """A block crossing midnight is emitted whole on day 2 although day 1 holds a line stamped 2049 (a wrong
    clock). That line used to be day 1's "end of the day", so the block closed as two halves, and, carried
    as open, it did the same to every later day; now parse quarantines it (``future_timestamp``)."""
    day1, day2 = "2008-11-09", "2008-11-10"
    rows = [(datetime(2008, 11, 9, 23, 50) + timedelta(minutes=5 * i), "blk_7") for i in range(4)]  # to 00:05
    rows += [(datetime(2008, 11, 9, 12, 0), "blk_8"), (datetime(2008, 11, 10, 12, 0), "blk_9")]
    for day in (day1, day2):
        folder = tmp_path / "raw" / "hdfs" / f"dt={day}"
        folder.mkdir(parents=True)
        lines = [_hdfs_line(at, blk) for at, blk in sorted(rows) if at.date().isoformat() == day]
        if day == day1:
            lines.append(_hdfs_line(datetime(2049, 12, 31, 23, 59), "blk_10"))
        (folder / "a.log").write_text("".join(f"{line}\n" for line in lines))
        assert run_parse("hdfs", day, "hdfs", data_root=tmp_path, spark=spark, gate=False).quarantine_reasons == (
            {"future_timestamp": 1} if day == day1 else {})
    runs = [run_sessionize("hdfs", day, data_root=tmp_path, spark=spark, gate=False) for day in (day1, day2)]
    assert [(m.sessions, m.open_sessions) for m in runs] == [(1, 1), (2, 0)]
    got = _sessions(tmp_path, "hdfs", (day1, day2))
    assert dict(zip(got["session_id"], got["n_events"])) == {"blk_8": 1, "blk_7": 4, "blk_9": 1}


def test_a_day_after_one_never_sessionized_is_refused_while_sessions_are_open(spark: Any, tmp_path: Path) -> None:
    """Sessions open at the end of a day are carried only into the next one: sessionizing day 3 when day 2 was
    skipped dropped the block crossing the first midnight without a word. Now it is refused with what to do;
    once day 2 (a day without logs) has run, the block is emitted whole there, and day 3 runs."""
    days = ("2008-11-09", "2008-11-10", "2008-11-11")
    folder = tmp_path / "raw" / "hdfs" / f"dt={days[0]}"
    folder.mkdir(parents=True)
    (folder / "a.log").write_text("".join(f"{_hdfs_line(datetime(2008, 11, 9, 23, 50, 0) + timedelta(minutes=i), 'blk_7')}\n"
                                          for i in range(5)))
    for day in days[1:]:  # days without logs, as their markers say
        (tmp_path / "raw" / "hdfs" / f"dt={day}").mkdir()
        (tmp_path / "raw" / "hdfs" / f"dt={day}" / "_SUCCESS").touch()
    for day in days:
        run_parse("hdfs", day, "hdfs", data_root=tmp_path, spark=spark, gate=False)
    assert run_sessionize("hdfs", days[0], data_root=tmp_path, spark=spark, gate=False).open_sessions == 1
    with pytest.raises(SkippedDayError, match=f"{days[1]} was never sessionized.*sessionize {days[1]} first"):
        run_sessionize("hdfs", days[2], data_root=tmp_path, spark=spark, gate=False)
    runs = [run_sessionize("hdfs", day, data_root=tmp_path, spark=spark, gate=False) for day in days[1:]]
    assert [(m.sessions, m.open_sessions) for m in runs] == [(1, 0), (0, 0)]
    assert _sessions(tmp_path, "hdfs", days[1:2])["n_events"].tolist() == [5]
