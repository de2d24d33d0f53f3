"""Parse job: reconciliation, stable template ids, idempotent reruns, hostile and empty input."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from drain3.masking import LogMasker

from krone_jobs.jobs.kseqs import run_kseqs
from krone_jobs.jobs.parse import (
    ORPHAN_MESSAGE,
    QUARANTINE_BATCH,
    TEMPLATE_FLOOD,
    group_units,
    mine_texts,
    orphan_continuations,
    repeated_hours,
    run_parse,
    session_keys,
)
from krone_jobs.jobs.sessionize import run_sessionize
from krone_jobs.logformats import (
    HDFS,
    KRONE,
    THUNDERBIRD,
    BlockIdSessionKey,
    IdPatternSessionKey,
    MAX_SESSION_KEY_CHARS,
    ParsedLine,
    bounded_session_key,
    get_format,
    parse_line,
)
from krone_jobs.miner_state import latest_templates
from krone_jobs.partitions import partition_dir, state_dir
from krone_jobs.quality import QualityGateError
from krone_jobs.raw_readiness import NoLogFilesError
from krone_jobs.synthetic import generate_sessions, json_line
from krone_jobs.templates import MinerSettings, TemplateStore, masker

SOURCE = "syn"
DAYS = ("2026-11-01", "2026-11-02")


def _frame(root: Path, stage: str, source: str, dt: str) -> pd.DataFrame:
    return pd.read_parquet(partition_dir(root, stage, source, dt))


def _digests(root: Path, source: str, dt: str) -> dict[str, str]:
    """sha256 of every file a day's parse, sessionize and kseqs runs write."""
    folders = [partition_dir(root, s, source, dt) for s in ("parsed", "quarantine", "sessions", "kseqs")]
    folders.append(state_dir(root, source) / "open" / f"dt={dt}")
    files = [p for f in folders for p in sorted(f.iterdir())]
    files.append(state_dir(root, source) / "templates" / f"dt={dt}.json")
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_every_line_is_accounted_for(pipeline: Any) -> None:
    for dt in DAYS:
        m = pipeline.parse[dt]
        assert m.raw_lines == pipeline.summary.lines_per_day[dt] == m.parsed + m.quarantined
        assert m.quarantined == 0 and m.unmatched == 0
        rows = _frame(pipeline.root, "parsed", SOURCE, dt)
        assert len(rows) == m.parsed
        assert sorted(rows["line_no"]) == list(range(1, m.parsed + 1))
        assert rows["template_id"].str.fullmatch(r"T[0-9a-f]{16}").all()
        assert rows["session_keys"].map(len).min() >= 1
        assert rows["file"].eq(f"raw/{SOURCE}/dt={dt}/{SOURCE}.log").all()


def test_template_ids_do_not_depend_on_partitions_or_backfill(
    spark: Any, pipeline: Any, tmp_path: Path
) -> None:
    """Day 2 parsed after day 1 on 2 partitions == day 2 parsed alone on 1 and on 4 partitions."""
    day = DAYS[1]
    columns = ["file", "line_no", "template_id"]
    expected = _frame(pipeline.root, "parsed", SOURCE, day)[columns].sort_values(columns).reset_index(drop=True)
    for parts in (1, 4):
        root = tmp_path / f"alone-{parts}"
        shutil.copytree(pipeline.root / "raw" / SOURCE / f"dt={day}", root / "raw" / SOURCE / f"dt={day}")
        m = run_parse(SOURCE, day, "krone", data_root=root, spark=spark, partitions=parts, gate=False)
        assert m.partitions == parts
        got = _frame(root, "parsed", SOURCE, day)[columns]
        pd.testing.assert_frame_equal(got.sort_values(columns).reset_index(drop=True), expected)


def test_rerun_rewrites_identical_files(spark: Any, pipeline: Any) -> None:
    day = DAYS[1]
    before = _digests(pipeline.root, SOURCE, day)
    run_parse(SOURCE, day, "krone", data_root=pipeline.root, spark=spark, gate=False)
    run_sessionize(SOURCE, day, data_root=pipeline.root, spark=spark, gate=False)
    run_kseqs(SOURCE, day, data_root=pipeline.root, spark=spark)
    assert _digests(pipeline.root, SOURCE, day) == before
    assert not any(p.name.startswith("_") for p in (pipeline.root / "parsed" / f"source={SOURCE}").iterdir())


def _hdfs_line(i: int, end: bytes = b"\n") -> bytes:
    if i % 2:
        text = f"081109 2036{i % 60:02d} 148 INFO dfs.DataNode$PacketResponder: PacketResponder {i % 3} for block blk_{1000 + i} terminating"
    else:
        text = (f"081109 2036{i % 60:02d} 35 INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: "
                f"10.251.73.{i % 250}:50010 is added to blk_{1000 + i} size 67108864")
    return text.encode() + end


HOSTILE = {
    "binary": b"\x00\x01\x02 garbage \xff\xfe\n",
    "oversized": b"081109 203615 148 INFO dfs.DataNode: " + b"A" * 10_000_000 + b" blk_1\n",
    "bad_encoding": b"081109 203615 148 INFO dfs.DataNode: Receiving \x81\x82\x83\x84 blk_5\n",
    "no_format_match": b"this is not an hdfs line blk_6\n",
    "bad_timestamp": b"081399 256199 148 INFO dfs.DataNode: Receiving block blk_9\n",
    "no_session_key": b"081109 203615 148 INFO dfs.DataNode: Starting thread pool\n",
    "empty": b"\r\n",
    "future_timestamp": b"491231 235959 148 INFO dfs.DataNode: Receiving block blk_10\n",  # a clock 41 years ahead
}


def test_hostile_input_is_quarantined_and_reconciled(spark: Any, tmp_path: Path) -> None:
    day = "2008-11-09"
    folder = tmp_path / "raw" / "hdfs" / f"dt={day}"
    folder.mkdir(parents=True)
    good = [_hdfs_line(i, b"\r\n" if i % 5 == 0 else b"\n") for i in range(400)]
    latin1 = "081109 203615 148 INFO dfs.DataNode: Receiving block blk_77 for café".encode("latin-1") + b"\n"
    # block ids of 3,000 digits, two alike but for the last digit, one of them twice: kept under bounded keys
    huge = [b"081109 203615 148 INFO dfs.DataNode: Receiving block blk_" + b"7" * 2999 + last + b" src: /10.0.0.1\n"
            for last in (b"1", b"2", b"1")]
    (folder / "a.log").write_bytes(b"".join(good[:200] + list(HOSTILE.values()) + [latin1, *huge] + good[200:]))
    packed = gzip.compress(b"".join(_hdfs_line(i) for i in range(500, 700)), mtime=0)
    (folder / "b.log.gz").write_bytes(packed[: len(packed) - 200])  # truncated .gz
    (folder / "c.log").symlink_to(tmp_path / "rotated-away.log")  # a link to a file that is gone

    m = run_parse("hdfs", day, "hdfs", data_root=tmp_path, spark=spark, partitions=2)

    expected = {reason: 1 for reason in HOSTILE} | {"gz_truncated": 1, "unreadable": 1}
    assert m.quarantine_reasons == expected
    assert m.raw_lines == m.parsed + m.quarantined
    gz_lines = m.raw_lines - 2 - len(good) - len(HOSTILE) - 1 - len(huge)
    assert 0 < gz_lines < 200 and m.parsed == len(good) + 1 + len(huge) + gz_lines
    assert m.long_session_keys == len(huge)
    a_log = (folder / "a.log").stat().st_size
    assert a_log < m.raw_bytes < a_log + len(packed) * 20  # the .gz's lines read before the damage
    assert m.quarantined_bytes == sum(map(len, HOSTILE.values())) - 1  # the oversized line whole, but its LF
    q = _frame(tmp_path, "quarantine", "hdfs", day).set_index("reason")
    assert q.loc["binary", "raw"].rstrip(b"\n") == HOSTILE["binary"].rstrip(b"\n")
    assert q.loc["oversized", "truncated"] and len(q.loc["oversized", "raw"]) <= 1024
    assert q.loc["gz_truncated", "file"] == f"raw/hdfs/dt={day}/b.log.gz"
    assert q.loc["unreadable", "file"] == f"raw/hdfs/dt={day}/c.log" and q.loc["unreadable", "line_no"] == 1
    assert "FileNotFoundError" in q.loc["unreadable", "message"]
    assert q.loc["no_session_key", "line_no"] == 206
    parsed = _frame(tmp_path, "parsed", "hdfs", day)
    assert set(parsed.loc[parsed["encoding"] == "latin-1", "content"]) == {"Receiving block blk_77 for café"}
    assert not parsed["content"].str.contains("\r").any()
    keys = [k for ks in parsed["session_keys"] for k in ks]
    assert max(map(len, keys)) == MAX_SESSION_KEY_CHARS
    one, two = (bounded_session_key("blk_" + "7" * 2999 + last) for last in "12")
    assert Counter(k for k in keys if k.startswith("blk_777")) == {one: 2, two: 1}


def test_a_file_of_binary_lines_is_quarantined_line_by_line_in_batches(spark: Any, tmp_path: Path) -> None:
    """2,500 binary lines (a core dump named .log) between good ones: written out in batches of
    ``QUARANTINE_BATCH`` records (a 1 GB dump, 4.1M lines, used to be held whole in memory), none lost."""
    day = "2008-11-09"
    folder = tmp_path / "raw" / "hdfs" / f"dt={day}"
    folder.mkdir(parents=True)
    junk = [b"\x00\x7f core %d \x01\n" % i for i in range(2500)]
    (folder / "a.log").write_bytes(b"".join([_hdfs_line(0), *junk, _hdfs_line(1)]))
    m = run_parse("hdfs", day, "hdfs", data_root=tmp_path, spark=spark, partitions=1, gate=False)
    assert (m.parsed, m.quarantine_reasons) == (2, {"binary": 2500}) and 2500 > QUARANTINE_BATCH
    q = _frame(tmp_path, "quarantine", "hdfs", day).sort_values("line_no")
    assert list(q["line_no"]) == list(range(2, 2502)) and list(q["raw"]) == junk


def test_a_utf16_file_parses_like_its_utf8_copy(spark: Any, tmp_path: Path) -> None:
    """What Windows PowerShell 5 writes by default: every line used to be quarantined as ``binary``."""
    day = "2008-11-09"
    text = b"".join(_hdfs_line(i, b"\r\n") for i in range(600)).decode()
    frames = []
    for name, data in (("utf8", text.encode()), ("utf16", text.encode("utf-16"))):
        folder = tmp_path / name / "raw" / "hdfs" / f"dt={day}"
        folder.mkdir(parents=True)
        (folder / "a.log").write_bytes(data)
        m = run_parse("hdfs", day, "hdfs", data_root=tmp_path / name, spark=spark, partitions=2, gate=False)
        assert (m.parsed, m.quarantined) == (600, 0), name
        frames.append(_frame(tmp_path / name, "parsed", "hdfs", day).drop(columns="file").sort_values("line_no")
                      .reset_index(drop=True))
    pd.testing.assert_frame_equal(*frames)


def test_a_duplicate_delivery_is_read_once(spark: Any, tmp_path: Path) -> None:
    """A re-delivered file (here also as .gz) would double every event of its sessions: each is skipped,
    named and counted, and the day parses as it does without the copies."""
    day = "2008-11-09"
    data = b"".join(_hdfs_line(i) for i in range(300))
    frames = []
    for name, copies in (("once", {}), ("twice", {"b.log": data, "a.log.gz": gzip.compress(data)})):
        folder = tmp_path / name / "raw" / "hdfs" / f"dt={day}"
        folder.mkdir(parents=True)
        for file, content in {"a.log": data, "c.log": data[:-1] + b"X", **copies}.items():
            (folder / file).write_bytes(content)
        m = run_parse("hdfs", day, "hdfs", data_root=tmp_path / name, spark=spark, partitions=2, gate=False)
        assert (m.files, m.raw_lines, m.parsed) == (2, 600, 600), name
        assert (m.duplicate_files, m.duplicate_lines) == ((2, 600) if copies else (0, 0))
        frames.append(_frame(tmp_path / name, "parsed", "hdfs", day).sort_values(["file", "line_no"])
                      .reset_index(drop=True))
    pd.testing.assert_frame_equal(*frames)


def test_a_file_name_that_is_not_utf8_is_read(spark: Any, tmp_path: Path) -> None:
    """Such a name came back from Spark with U+FFFD in it, a file that did not exist: its lines were lost as one
    ``unreadable`` record. Now they parse, and the name written in the rows is valid text."""
    day = "2008-11-09"
    folder = tmp_path / "raw" / "hdfs" / f"dt={day}"
    folder.mkdir(parents=True)
    (folder / os.fsdecode(b"caf\xe9 log\n.log")).write_bytes(b"".join(_hdfs_line(i) for i in range(300)))
    (folder / os.fsdecode(b"gone\xff.log")).symlink_to(tmp_path / "rotated-away.log")
    m = run_parse("hdfs", day, "hdfs", data_root=tmp_path, spark=spark, partitions=2, gate=False)
    assert (m.parsed, m.quarantine_reasons) == (300, {"unreadable": 1})
    assert set(_frame(tmp_path, "parsed", "hdfs", day)["file"]) == {f"raw/hdfs/dt={day}/caf\ufffd log\n.log"}
    assert _frame(tmp_path, "quarantine", "hdfs", day)["file"].item() == f"raw/hdfs/dt={day}/gone\ufffd.log"


def test_a_redelivery_of_the_day_before_is_skipped(spark: Any, tmp_path: Path) -> None:
    days = ("2008-11-09", "2008-11-10")
    data = b"".join(_hdfs_line(i) for i in range(300))
    for day, files in zip(days, ({"a.log": data}, {"a-retry.log": data, "b.log": data.replace(b"blk_", b"blk_9")})):
        folder = tmp_path / "raw" / "hdfs" / f"dt={day}"
        folder.mkdir(parents=True)
        for name, content in files.items():
            (folder / name).write_bytes(content)
    m = run_parse("hdfs", days[1], "hdfs", data_root=tmp_path, spark=spark, partitions=2, gate=False)
    assert (m.files, m.parsed, m.duplicate_files, m.duplicate_lines) == (1, 300, 1, 300)


def test_a_log_never_rotated_is_read_from_where_the_day_before_ended(spark: Any, tmp_path: Path) -> None:
    """Shipped whole every day (the third day packed): each day parses only its own lines, under their line
    numbers in the file, as it would from a rotated log; read whole, every earlier line came again (the demo
    HDFS day after 2008-11-09: 7,915 sessions instead of 4,019)."""
    days = ("2008-11-09", "2008-11-10", "2008-11-11")
    lines = [_hdfs_line(i) for i in range(900)]
    for n, day in enumerate(days, start=1):
        folder = tmp_path / "raw" / "hdfs" / f"dt={day}"
        folder.mkdir(parents=True)
        whole = b"".join(lines[: 300 * n])
        (folder / ("app.log.gz" if n == 3 else "app.log")).write_bytes(gzip.compress(whole) if n == 3 else whole)
    for n, day in enumerate(days):
        m = run_parse("hdfs", day, "hdfs", data_root=tmp_path, spark=spark, partitions=2, gate=False)
        assert (m.raw_lines, m.parsed, m.continued_files, m.continued_lines) == (300, 300, int(n > 0), 300 * n)
        assert sorted(_frame(tmp_path, "parsed", "hdfs", day)["line_no"]) == list(range(300 * n + 1, 300 * n + 301))


def test_units_are_cut_into_runs_of_about_equal_bytes() -> None:
    units = [{"u": i} for i in range(10)]
    runs = group_units(units, [100, 0, 0, 0, 0, 100, 100, 0, 0, 100], 2)
    assert [u for run in runs for u in run] == units and len(runs) == 2
    assert [sum(u["u"] in (0, 5, 6, 9) for u in run) for run in runs] == [2, 2]
    assert group_units(units, [0] * 10, 4) == [units[0:3], units[3:5], units[5:8], units[8:10]]
    assert group_units(units[:1], [5], 8) == [units[:1]] and group_units([], [], 2) == []


def test_many_small_files_make_few_tasks_and_files_and_the_same_ids(spark: Any, tmp_path: Path) -> None:
    """300 files of a few lines (a shipper's file per host and hour) are parsed in ``partitions`` tasks into
    as many part files, with the ids the same lines get in one file."""
    day = "2008-11-09"
    lines = [_hdfs_line(i) for i in range(900)]
    many, one = tmp_path / "many" / "raw" / "hdfs" / f"dt={day}", tmp_path / "one" / "raw" / "hdfs" / f"dt={day}"
    for i in range(300):
        folder = many / f"host={i % 30:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"h{i // 30:02d}.log").write_bytes(b"".join(lines[3 * i:3 * i + 3]))
    one.mkdir(parents=True)
    (one / "all.log").write_bytes(b"".join(path.read_bytes() for path in sorted(many.rglob("*.log"))))
    runs = {name: run_parse("hdfs", day, "hdfs", data_root=tmp_path / name, spark=spark, partitions=2, gate=False)
            for name in ("many", "one")}
    assert runs["many"].files == 300 and runs["many"].parsed == runs["one"].parsed == 900
    folder = partition_dir(tmp_path / "many", "parsed", "hdfs", day)
    assert len(list(folder.glob("*.parquet"))) == 2
    ids = {name: _frame(tmp_path / name, "parsed", "hdfs", day).set_index("content")["template_id"].to_dict()
           for name in runs}
    assert ids["many"] == ids["one"]


def test_on_a_flood_day_only_recurring_text_opens_templates() -> None:
    """Budget 3: the flood's five unique texts come first and used to spend it, so the real event seen
    later (three lines) fit nothing. Mined again with one-line texts barred from opening templates, the
    event keeps its template and the flood opens none; a normal day (budget not reached) is mined once."""
    garbage = [f"zq{'x' * i} vb{'y' * i} kk{'w' * i}" for i in range(5)]
    texts = [*garbage, "worker <NUM> started job <ID>", "worker <NUM> stopped job <ID>"]
    lines = dict.fromkeys(garbage, 1) | {texts[5]: 3, texts[6]: 2}
    store, ids, flooded = mine_texts(TemplateStore(MinerSettings()), texts, 3, lines)
    assert sorted(flooded) == sorted(garbage) and set(ids) == set(texts[5:])
    assert sorted(t.template for t in store.templates()) == ["worker <NUM> <*> job <ID>"]
    calm, calm_ids, none = mine_texts(TemplateStore(MinerSettings()), texts, 10, lines)
    assert none == [] and len(calm_ids) == 7 and len(calm.templates()) == 6


def _garbage_line(i: int) -> bytes:
    """A line of unique words the masks miss (no digits), as a flood of free text would bring."""
    digest = hashlib.sha256(str(i).encode()).hexdigest()
    words = " ".join("".join(chr(97 + int(c, 16)) for c in digest[k:k + 6]) for k in range(0, 48, 6))
    return f"081109 203615 148 INFO dfs.DataNode: {words} blk_{5000 + i}\n".encode()


def test_a_flood_of_unique_text_is_quarantined_beyond_the_days_template_budget(spark: Any, tmp_path: Path) -> None:
    """A day may open ``max_new_templates`` templates. On a day that would open more, a text of one line may
    open none: the flood's unique lines fit no template and are quarantined as ``template_flood`` with their
    raw bytes, whatever the partitioning; the real events (which recur) keep their templates, the state gains
    no garbage, and the next day has a budget of its own. Beyond the quarantine bound the day fails its gate,
    with the reason."""
    days = ("2008-11-09", "2008-11-10")
    for d, day in enumerate(days):
        good = [_hdfs_line(i) for i in range(300)]
        garbage = [_garbage_line(1000 * d + i) for i in range(120)]
        lines = good[:20] + [line for pair in zip(garbage, good[20:140]) for line in pair] + good[140:]
        for root in (tmp_path / "p1", tmp_path / "p3"):
            folder = root / "raw" / "hdfs" / f"dt={day}"
            folder.mkdir(parents=True)
            (folder / "day.log").write_bytes(b"".join(lines))
    runs = {parts: [run_parse("hdfs", day, "hdfs", data_root=tmp_path / f"p{parts}", spark=spark, partitions=parts,
                              max_new_templates=10, gate=False) for day in days] for parts in (1, 3)}
    first, second = runs[3]
    assert (first.new_templates, second.new_templates, first.templates, second.templates) == (2, 0, 2, 2)
    for m in (first, second):
        assert m.quarantine_reasons == {TEMPLATE_FLOOD: 120} and m.flooded_texts == 120
        assert m.raw_lines == 420 == m.parsed + m.quarantined
    for day in days:
        frames = [(_frame(tmp_path / f"p{parts}", "parsed", "hdfs", day), _frame(tmp_path / f"p{parts}", "quarantine",
                                                                              "hdfs", day)) for parts in (1, 3)]
        for columns, i in ((["line_no", "template_id"], 0), (["line_no", "raw"], 1)):
            one, three = (f[i][columns].sort_values("line_no").reset_index(drop=True) for f in frames)
            pd.testing.assert_frame_equal(one, three)
        parsed, flood = frames[1]
        lines = (tmp_path / "p3" / "raw" / "hdfs" / f"dt={day}" / "day.log").read_bytes().splitlines(keepends=True)
        assert all(lines[n - 1] == raw for n, raw in zip(flood["line_no"], flood["raw"]))
        assert all(b"dfs.DataNode: " in raw and b"PacketResponder" not in raw for raw in flood["raw"])
        assert flood["message"].str.contains("KRONE_MAX_NEW_TEMPLATES").all()
        assert len(parsed) == 300 and len(flood) == 120  # every real line kept, every garbage line quarantined
    with pytest.raises(QualityGateError, match=f"Quarantined by reason: {TEMPLATE_FLOOD} 1"):
        run_parse("hdfs", days[1], "hdfs", data_root=tmp_path / "p1", spark=spark, max_new_templates=10)


def test_first_day_mines_with_the_formats_settings_and_later_days_keep_them(spark: Any, tmp_path: Path) -> None:
    for day in ("2005-11-09", "2005-11-10"):
        folder = tmp_path / "raw" / "tb" / f"dt={day}"
        folder.mkdir(parents=True)
        (folder / "tb.log").write_text(
            "- 1131566461 2005.11.09 dn228 Nov 9 12:01:01 dn228/dn228 nfs: rpc.mountd startup succeeded\n"
            "- 1131566462 2005.11.09 dn228 Nov 9 12:01:02 dn228/dn228 xinetd: xinetd startup succeeded\n")
        run_parse("tb", day, "thunderbird", data_root=tmp_path, spark=spark, gate=False)
        store = latest_templates(tmp_path, "tb", day)
        assert store is not None and store.settings == THUNDERBIRD.miner != MinerSettings()
        assert [t.template for t in store.templates()] == ["<*> <*> startup succeeded"]


def _use_formats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str) -> None:
    """Name a formats file with ``toml`` in ``KRONE_FORMATS_FILE``: the driver reads it, executors get the format."""
    formats = tmp_path / "formats.toml"
    formats.write_text(toml)
    monkeypatch.setenv("KRONE_FORMATS_FILE", str(formats))


def test_a_format_from_the_formats_file_runs_through_parse_and_sessionize(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_formats(tmp_path, monkeypatch,
        "[gateway]\n"
        "regex = '^(?P<timestamp>\\S+ \\S+) (?P<level>[A-Z]+) (?P<component>\\S+): (?P<content>.*)$'\n"
        "timestamp_format = '%Y-%m-%d %H:%M:%S'\n"
        "session = 'id_pattern'\n"
        "session_pattern = '\\b(req-\\d+)\\b'\n")
    day = "2026-11-20"
    folder = tmp_path / "raw" / "gw" / f"dt={day}"
    folder.mkdir(parents=True)
    (folder / "gw.log").write_text("".join(
        f"2026-11-20 10:00:{i:02d} INFO api.Gateway: req-{i % 3} {step} in {i} ms\n"
        for i, step in enumerate(["accepted", "routed", "answered"] * 3)) + "not a gateway line\n")
    m = run_parse("gw", day, "Gateway", data_root=tmp_path, spark=spark, partitions=2,
                  max_quarantine_ratio=0.2)
    assert (m.format, m.raw_lines, m.parsed, m.quarantine_reasons) == ("gateway", 10, 9, {"no_format_match": 1})
    monkeypatch.delenv("KRONE_FORMATS_FILE")  # sessionize cuts by the rule the parse job recorded
    with pytest.raises(KeyError, match="unknown log format"):
        get_format("gateway")
    s = run_sessionize("gw", day, data_root=tmp_path, spark=spark, gap_seconds=60)
    assert s.sessions + s.open_sessions == 3


def test_yearless_stamps_take_the_year_of_their_day_across_new_year_and_leap_days(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Classic syslog stamps have no year. Parsed in strptime's 1900, every session closed at the end of its
    day (one crossing midnight as two halves) and every Feb 29 line was a bad timestamp."""
    _use_formats(tmp_path, monkeypatch,
        "[syslog]\n"
        "regex = '^(?P<timestamp>[A-Z][a-z]{2} [ \\d]\\d \\S+) (?P<node>\\S+) (?P<component>\\w+): (?P<content>.*)$'\n"
        "timestamp_format = '%b %d %H:%M:%S'\n"
        "session_gap_seconds = 120\n")
    days = {"2027-12-31": ["Dec 31 23:59:00", "Dec 31 23:59:40"], "2028-01-01": ["Jan  1 00:00:20", "Jan  1 06:00:00"],
            "2028-02-29": ["Feb 29 10:00:00"]}
    for day, stamps in days.items():
        folder = tmp_path / "raw" / "sys" / f"dt={day}"
        folder.mkdir(parents=True)
        (folder / "syslog.log").write_text("".join(f"{t} web1 sshd: Accepted key for user{i}\n"
                                                   for i, t in enumerate(stamps)))
        m = run_parse("sys", day, "syslog", data_root=tmp_path, spark=spark, partitions=1)
        assert m.parsed == len(stamps), day
        run_sessionize("sys", day, data_root=tmp_path, spark=spark, gap_seconds=120)
    sessions = pd.concat([_frame(tmp_path, "sessions", "sys", day) for day in days])
    assert sorted(zip(sessions["first_ts"].astype(str), sessions["n_events"])) == [
        ("2027-12-31 23:59:00", 3), ("2028-01-01 06:00:00", 1), ("2028-02-29 10:00:00", 1)]


def _wall_clock(start: str, steps: int, zone: str, every: int = 10) -> list[str]:
    """What a clock in ``zone`` shows every ``every`` seconds from ``start`` (local): it repeats or skips an hour
    where daylight saving time ends or begins."""
    first = datetime.fromisoformat(start).replace(tzinfo=ZoneInfo(zone))
    return [(first.astimezone(timezone.utc) + timedelta(seconds=every * i)).astimezone(ZoneInfo(zone))
            .strftime("%Y-%m-%d %H:%M:%S") for i in range(steps)]


def test_local_stamps_become_utc_and_the_repeated_hour_is_read_in_file_order(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node logging every 10 s across the end and the start of summer time in Berlin. Read as they are, the
    stamps of the hour the clocks went back over ran twice and interleaved (the session's steps out of order),
    and the hour the clocks skipped cut the node's activity in two sessions. With ``timezone`` the stamps
    are UTC, in file order across stripes and tasks (the second run starts at line 513, the first line of a
    stripe run of another task), and each night is one session in file order."""
    syslog = ("regex = '^(?P<timestamp>\\S+ \\S+) (?P<node>\\S+) (?P<component>\\w+): (?P<content>.*)$'\n"
              "timestamp_format = '%Y-%m-%d %H:%M:%S'\nsession_gap_seconds = 120\n")
    _use_formats(tmp_path, monkeypatch, f"[local]\n{syslog}\n[berlin]\n{syslog}timezone = 'Europe/Berlin'\n")
    nights = {"2026-10-25": _wall_clock("2026-10-25 01:34:40", 933, "Europe/Berlin"),
              "2026-03-29": _wall_clock("2026-03-29 01:50:00", 121, "Europe/Berlin")}
    assert nights["2026-10-25"][511:513] == ["2026-10-25 02:59:50", "2026-10-25 02:00:00"]
    assert nights["2026-03-29"][59:61] == ["2026-03-29 01:59:50", "2026-03-29 03:00:00"]
    for fmt in ("local", "berlin"):
        for day, stamps in nights.items():
            folder = tmp_path / fmt / "raw" / "web" / f"dt={day}"
            folder.mkdir(parents=True)
            (folder / "syslog.log").write_text("".join(f"{t} web1 cron: job {i % 7} ran\n" for i, t in enumerate(stamps)))
            m = run_parse("web", day, fmt, data_root=tmp_path / fmt, spark=spark, partitions=2)
            s = run_sessionize("web", day, data_root=tmp_path / fmt, spark=spark)
            sessions = _frame(tmp_path / fmt, "sessions", "web", day)
            in_order = [f"raw/web/dt={day}/syslog.log:{i + 1}" for i in range(len(stamps))]
            if fmt == "local":
                assert m.repeated_hour_lines == 0
                assert s.sessions == 2 if day == "2026-03-29" else list(sessions["lines"][0]) != in_order
                continue
            parsed = _frame(tmp_path / fmt, "parsed", "web", day).sort_values("line_no")
            assert (parsed["timestamp"].diff().dropna() == pd.Timedelta(seconds=10)).all(), day
            assert str(parsed["timestamp"].iloc[0]) == ("2026-10-24 23:34:40" if day == "2026-10-25"
                                                        else "2026-03-29 00:50:00")
            assert m.repeated_hour_lines == (360 if day == "2026-10-25" else 0)
            assert (s.sessions, list(sessions["lines"][0])) == (1, in_order)


def test_the_second_run_of_a_repeated_hour_starts_where_the_clock_goes_back_not_at_seconds_of_disorder() -> None:
    def run(first_line: int, first: str, top: str, jump: int | None = None) -> dict[str, Any]:
        return {"file_index": 0, "date": "2026-10-25", "first_line": first_line, "first": f"2026-10-25T{first}",
                "max": f"2026-10-25T{top}", "jump": jump, "lo": "2026-10-25T00:00:00", "hi": "2026-10-25T00:59:59",
                "later_s": 3600.0}

    assert repeated_hours([run(1, "02:10:00", "02:40:00"), run(257, "02:39:58", "02:59:59")]) == []  # 2 s back
    found = repeated_hours([run(513, "02:00:01", "02:20:00"), run(1, "02:10:00", "02:40:00"), run(257, "02:40:01", "02:59:59")])
    assert [(f["line"], f["later_s"]) for f in found] == [(513, 3600.0)]
    assert repeated_hours([run(1, "02:58:00", "02:59:59", jump=200)])[0]["line"] == 200


def test_stack_traces_under_their_log_lines_pass_the_quarantine_gate_and_orphans_do_not(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_formats(tmp_path, monkeypatch,
        "[shop]\n"
        "regex = '^(?P<timestamp>\\S+ \\S+) (?P<level>[A-Z]+) (?P<component>\\S+): (?P<content>.*)$'\n"
        "timestamp_format = '%Y-%m-%d %H:%M:%S'\n"
        "session = 'id_pattern'\n"
        "session_pattern = '\\b(order-\\d+)\\b'\n"
        "continuation = '^(?:\\s|Caused by: |[\\w.$]+(?:Exception|Error)\\b)'\n")
    day = "2026-11-20"
    trace = ["java.lang.IllegalStateException: card declined", "\tat shop.Orders.pay(Orders.java:42)",
             "Caused by: java.io.IOException: reset", "    ... 12 more"]
    lines = []
    for i in range(60):
        if len(lines) == 255:  # garbage as line 256, the last of the first stripe; an indented line under it
            lines += ["#### disk full, log truncated ####", "\tat a.frame.with.no.Record(X.java:1)"]
        lines.append(f"2026-11-20 10:{i // 60:02d}:{i % 60:02d} ERROR shop.Orders: order-{i % 4} payment failed")
        lines += trace
    folder = tmp_path / "raw" / "shop" / f"dt={day}"
    folder.mkdir(parents=True)
    (folder / "shop.log").write_text("\n".join(lines) + "\n")
    m = run_parse("shop", day, "shop", data_root=tmp_path, spark=spark, partitions=2)  # default bound: 5 % bad
    assert (m.raw_lines, m.parsed) == (302, 60)
    assert m.quarantine_reasons == {"continuation": 240, "no_format_match": 2}
    kept = _frame(tmp_path, "quarantine", "shop", day).set_index("line_no")
    assert kept.loc[3, "reason"] == "continuation"
    assert kept.loc[3, "raw"] == b"\tat shop.Orders.pay(Orders.java:42)\n"  # the raw bytes, line break included
    assert kept.loc[256, "reason"] == kept.loc[257, "reason"] == "no_format_match"  # across the stripe border
    assert kept.loc[257, "message"] == ORPHAN_MESSAGE


def test_a_continuation_run_needs_a_record_line_above_it() -> None:
    rows = [("a", 2, "continuation"), ("a", 3, "continuation"),  # under event line 1
            ("a", 5, "no_format_match"), ("a", 6, "continuation"), ("a", 7, "empty"), ("a", 8, "continuation"),
            ("a", 10, "binary"), ("a", 12, "continuation"),  # line 11 is an event
            ("b", 1, "continuation"), ("b", 2, "no_session_key"), ("b", 3, "continuation")]
    assert orphan_continuations(reversed(rows)) == {("a", 6), ("a", 8)}


def test_json_lines_make_the_same_sessions_and_templates_as_the_same_lines_as_text(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_formats(tmp_path, monkeypatch,  # the built-in krone-json format, as a user would write it
        "[jobs-json]\n"
        "fields = { timestamp = '@timestamp', level = 'log.level', node = 'host.name', component = 'log.logger', "
        "content = 'message', session = 'labels.job' }\n"
        "timestamp_format = 'iso8601'\n"
        "session = 'field'\n"
        "tag_content = true\n"  # '<component>: <message>', the content of the text format
        "depth = 6\n")  # and the text format's Drain depth: then the templates are the same too
    day = "2026-11-01"
    lines = sorted(line for s in generate_sessions(40, seed=5, start_date=day) for line in s.lines)  # interleaved
    hostile = [
        "not json at all",
        "[1, 2]",
        '{"@timestamp": "2026-11-01T10:00:00Z", "message": {"text": "an object"}}',
        "[" * 50_000,  # a nesting bomb under the size limit
        '{"message": "no timestamp", "labels": {"job": "job_1"}}',
        '{"@timestamp": "2026-11-01T10:00:00Z", "message": "no job named"}',
        # escapes no raw line could hold: a lone surrogate (unwritable as UTF-8) and a NUL (PostgreSQL refuses it)
        '{"@timestamp": "2026-11-01T10:00:00Z", "message": "job_1 \\ud83d", "labels": {"job": "job_1"}}',
        '{"@timestamp": "2026-11-01T10:00:00Z", "message": "job_1", "labels": {"job": "job_1\\u0000"}}',
    ]
    records = [json_line(line) for line in lines]
    for i, bad in enumerate(hostile):
        records.insert(i * len(records) // len(hostile), bad)
    for source, name, text in (("txt", "app.log", lines), ("js", "app.jsonl", records)):
        folder = tmp_path / "raw" / source / f"dt={day}"
        folder.mkdir(parents=True)
        (folder / name).write_text("\n".join(text) + "\n")
    (folder / "README.txt").write_text("exported by the log shipper\n")  # not a log file: skipped, counted
    (folder / "_SUCCESS").touch()  # a marker: skipped silently
    as_text = run_parse("txt", day, "krone", data_root=tmp_path, spark=spark, partitions=2)
    as_json = run_parse("js", day, "jobs-json", data_root=tmp_path, spark=spark, partitions=2,
                        max_quarantine_ratio=0.05)
    assert (as_json.files, as_json.ignored_files, as_text.ignored_files) == (1, 1, 0)
    assert as_json.raw_lines == len(records) == as_json.parsed + as_json.quarantined
    assert as_json.parsed == as_text.parsed == len(lines)
    assert as_json.quarantine_reasons == {"no_format_match": 4, "bad_timestamp": 1, "no_session_key": 1,
                                          "bad_encoding": 1, "binary": 1}
    reasons = _frame(tmp_path, "quarantine", "js", day).set_index("line_no")["reason"]
    assert reasons[records.index(hostile[3]) + 1] == "no_format_match"
    components = set(_frame(tmp_path, "parsed", "txt", day)["component"])
    assert set(_frame(tmp_path, "parsed", "js", day)["component"]) == components and len(components) > 3
    text_s = run_sessionize("txt", day, data_root=tmp_path, spark=spark)
    json_s = run_sessionize("js", day, data_root=tmp_path, spark=spark)
    assert (json_s.sessions, json_s.open_sessions, json_s.events) == (text_s.sessions, text_s.open_sessions,
                                                                       text_s.events)
    sessions = {source: dict(zip(f["session_id"], f["template_ids"].map(tuple)))
                for source, f in (("txt", _frame(tmp_path, "sessions", "txt", day)),
                                  ("js", _frame(tmp_path, "sessions", "js", day)))}
    assert sessions["js"] == sessions["txt"] and len(sessions["js"]) == json_s.sessions > 0


def test_a_day_of_files_not_named_as_logs_is_a_clear_error_not_an_empty_day(spark: Any, tmp_path: Path) -> None:
    folder = tmp_path / "raw" / "hdfs" / "dt=2008-11-09"
    folder.mkdir(parents=True)
    (folder / "hdfs.txt").write_bytes(_hdfs_line(1))
    (folder / "_SUCCESS").touch()
    named = r"holds 1 file\(s\) and none is named \*\.log.*raw/hdfs/dt=2008-11-09/hdfs.txt"
    with pytest.raises(NoLogFilesError, match=named):
        run_parse("hdfs", "2008-11-09", "hdfs", data_root=tmp_path, spark=spark)
    assert not partition_dir(tmp_path, "parsed", "hdfs", "2008-11-09").exists()


def test_unknown_format_is_a_clear_error(spark: Any, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown log format"):
        run_parse("hdfs", "2008-11-09", "no-such-format", data_root=tmp_path, spark=spark)


def test_a_day_without_log_files_or_marker_is_a_clear_error_not_an_empty_day(spark: Any, tmp_path: Path) -> None:
    folder = tmp_path / "raw" / "hdfs" / "dt=2008-11-09"
    with pytest.raises(NoLogFilesError, match=r"no log file was delivered \(there is no folder .*dt=2008-11-09.*touch "
                                              r".*dt=2008-11-09/_SUCCESS"):
        run_parse("hdfs", "2008-11-09", "hdfs", data_root=tmp_path, spark=spark)
    folder.mkdir(parents=True)
    with pytest.raises(NoLogFilesError, match=r"its folder is empty"):
        run_parse("hdfs", "2008-11-09", "hdfs", data_root=tmp_path, spark=spark)
    assert not partition_dir(tmp_path, "parsed", "hdfs", "2008-11-09").exists()


def test_empty_partitions_write_empty_outputs(spark: Any, tmp_path: Path) -> None:
    (tmp_path / "raw" / "hdfs" / "dt=2008-11-09").mkdir(parents=True)
    (tmp_path / "raw" / "hdfs" / "dt=2008-11-09" / "empty.log").write_bytes(b"")
    (tmp_path / "raw" / "hdfs" / "dt=2008-11-10").mkdir(parents=True)
    (tmp_path / "raw" / "hdfs" / "dt=2008-11-10" / "_SUCCESS").touch()
    for day, files in (("2008-11-09", 1), ("2008-11-10", 0)):  # an empty file; the marker of a day with no logs
        m = run_parse("hdfs", day, "hdfs", data_root=tmp_path, spark=spark, gate=files == 1)
        assert (m.files, m.raw_lines, m.parsed, m.quarantined, m.templates) == (files, 0, 0, 0, 0)
        assert len(_frame(tmp_path, "parsed", "hdfs", day)) == 0
        assert len(_frame(tmp_path, "quarantine", "hdfs", day)) == 0
    s = run_sessionize("hdfs", day, data_root=tmp_path, spark=spark)
    assert (s.events, s.sessions, s.open_sessions) == (0, 0, 0)


def test_fast_session_keys_and_masker_agree_with_the_library() -> None:
    lines = [_hdfs_line(i) for i in range(20)] + [
        b"081109 203615 148 INFO dfs.DataNode: Copying blk_1 to blk_-2 and blk_1 again 0x1F job_77 node-07\n"]
    rule = BlockIdSessionKey()
    mask = masker(MinerSettings())
    config = MinerSettings().to_config()
    reference = LogMasker(config.masking_instructions, config.mask_prefix, config.mask_suffix)
    for raw in lines:
        parsed = parse_line(raw, HDFS)
        assert isinstance(parsed, ParsedLine)
        assert session_keys(rule)(parsed) == rule.keys(parsed)
        assert mask(parsed.content + " é 12 ١٢") == reference.mask(parsed.content + " é 12 ١٢")
    grouped = IdPatternSessionKey(r"(job)_(\d+)")  # two groups: the library's own method is used
    line = parse_line(b"2026-11-01 00:00:00.000 INFO [n] a: job_1 job_2\n", KRONE)
    assert isinstance(line, ParsedLine) and session_keys(grouped)(line) == grouped.keys(line) == ("job",)


def test_masker_agrees_with_the_library_on_every_loghub_sample(shared_data: Path) -> None:
    """The fast masker is drain3's ``LogMasker`` on 32,000 real lines of 16 systems."""
    mask = masker(MinerSettings())
    config = MinerSettings().to_config()
    reference = LogMasker(config.masking_instructions, config.mask_prefix, config.mask_suffix)
    samples = sorted((shared_data / "loghub_2k").glob("*/*_2k.log"))
    assert len(samples) == 16
    for sample in samples:
        for line in sample.read_text(encoding="utf-8", errors="replace").splitlines():
            assert mask(line) == reference.mask(line), (sample.name, line)
