"""Raw partitions and the per-source record the parse job leaves for later stages."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from krone_jobs.logformats import SessionSpec
from krone_jobs.partitions import (
    PartitionUnreadable,
    SourceRecordError,
    atomic_write_text,
    count_rows,
    ignored_raw_files,
    partition_dir,
    raise_if_damaged,
    read_table,
    raw_files,
    record_source_format,
    source_format,
    source_session,
    source_timezone,
    state_dir,
)


def test_source_record_keeps_format_and_session_rule(tmp_path: Path) -> None:
    spec = SessionSpec("id_pattern", r"\b(req-\d+)\b")
    record_source_format(tmp_path, "gw", "gateway", asdict(spec))
    assert source_format(tmp_path, "gw") == "gateway"
    recorded = source_session(tmp_path, "gw")
    assert recorded is not None and SessionSpec(**recorded) == spec


def test_a_record_from_before_session_rules_were_kept_has_none(tmp_path: Path) -> None:
    path = state_dir(tmp_path, "hdfs") / "source.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": "hdfs"}), encoding="utf-8")
    assert (source_format(tmp_path, "hdfs"), source_session(tmp_path, "hdfs")) == ("hdfs", None)


@pytest.mark.parametrize("text", ['{"format": "kro', '["krone"]', '{"session": null}'])
def test_a_damaged_source_record_says_which_run_writes_it(tmp_path: Path, text: str) -> None:
    path = state_dir(tmp_path, "gw") / "source.json"
    path.parent.mkdir(parents=True)
    path.write_text(text, encoding="utf-8")
    for read in (source_format, source_session, source_timezone):
        with pytest.raises(SourceRecordError, match=rf"^{re.escape(str(path))} is not a readable source record \(.*\): "
                                                    r"each parse run writes it, so run `krone parse --source gw "):
            read(tmp_path, "gw")


def test_raw_files_take_log_files_at_any_depth_and_name_the_others(tmp_path: Path) -> None:
    day = tmp_path / "raw" / "app" / "dt=2026-11-20"
    names = ["a.log", "b.log.gz", "hour=13/c.jsonl", "hour=14/d.ndjson.gz", "notes.txt", "hour=13/e.csv",
             "_SUCCESS", ".a.log.crc", ".staging/f.log", "_temporary/g.log"]
    for name in names:
        (day / name).parent.mkdir(parents=True, exist_ok=True)
        (day / name).write_text("x\n")
    found = [p.relative_to(day).as_posix() for p in raw_files(tmp_path, "app", "2026-11-20")]
    assert found == ["a.log", "b.log.gz", "hour=13/c.jsonl", "hour=14/d.ndjson.gz"]
    skipped = [p.relative_to(day).as_posix() for p in ignored_raw_files(tmp_path, "app", "2026-11-20")]
    assert skipped == ["hour=13/e.csv", "notes.txt"]
    assert raw_files(tmp_path, "app", "2026-11-21") == ignored_raw_files(tmp_path, "app", "2026-11-21") == []


def _two_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = [folder / "part-00000.parquet", folder / "part-00001.parquet"]
    pq.write_table(pa.table({"session_id": ["a", "b"], "n": [1, 2]}), paths[0])
    pq.write_table(pa.table({"session_id": ["c"], "n": [3]}), paths[1])
    return paths


def test_a_partition_reads_as_its_files_in_order(tmp_path: Path) -> None:
    folder = partition_dir(tmp_path, "sessions", "app", "2026-11-20")
    _two_files(folder)
    assert count_rows(folder) == 3
    assert read_table(folder, ["session_id"]).to_pydict() == {"session_id": ["a", "b", "c"]}
    assert read_table(folder).equals(pq.read_table(folder))


@pytest.mark.parametrize(("where", "writes_it"), [
    (("sessions", "source=app"), "krone sessionize --source app --date 2026-11-20` again"),
    (("parsed", "source=app"), "krone parse --source app --date 2026-11-20 --format <the source's format>`"),
    (("state", "app", "open"), "krone sessionize --source app --date 2026-11-20` again"),
])
def test_a_damaged_file_is_named_with_the_run_that_writes_it_again(
        tmp_path: Path, where: tuple[str, ...], writes_it: str) -> None:
    folder = tmp_path.joinpath(*where, "dt=2026-11-20")
    damaged = _two_files(folder)[1]
    damaged.write_bytes(damaged.read_bytes()[:-20])  # a copy cut short: no footer
    for read in (count_rows, read_table):
        with pytest.raises(PartitionUnreadable) as err:
            read(folder)
        assert str(err.value).startswith(f"{damaged} is not a readable Parquet file (ArrowInvalid: ")
        assert writes_it in str(err.value)


def test_a_failure_is_put_on_a_damaged_page_only_when_there_is_one(tmp_path: Path) -> None:
    folder = partition_dir(tmp_path, "sessions", "app", "2026-11-20")
    folder.mkdir(parents=True)
    path = folder / "part-00000.parquet"
    pq.write_table(pa.table({"session_id": [f"s{i}" for i in range(50_000)]}), path)
    failure = RuntimeError("Spark: [FAILED_READ_FILE.NO_HINT] ...")
    raise_if_damaged(failure, folder, tmp_path / "absent")  # every file reads: the caller's error stands
    page = bytearray(path.read_bytes())
    page[len(page) // 3: len(page) // 3 + 64] = bytes(64)  # a page behind an intact footer
    path.write_bytes(bytes(page))
    assert count_rows(folder) == 50_000
    with pytest.raises(PartitionUnreadable, match=f"^{re.escape(str(path))} is not a readable Parquet file") as err:
        raise_if_damaged(failure, tmp_path / "absent", folder)
    assert err.value.__cause__ is failure


def test_a_state_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = state_dir(tmp_path, "app") / "source.json"
    atomic_write_text(path, "old\r\n")
    assert path.read_bytes() == b"old\r\n"  # written as given

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(path, "new")
    assert path.read_bytes() == b"old\r\n" and [p.name for p in path.parent.iterdir()] == ["source.json"]
