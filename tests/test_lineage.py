"""Lineage: a partition is stale when what it was built from changed since, and only then."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from krone_jobs.lineage import UNSEALED, content_id, inputs, parsed_before, stale_partitions, stale_reasons
from krone_jobs.manifests import MANIFEST
from krone_jobs.partitions import partition_dir, raw_dir, swap_in, temp_dir_for

SOURCE, DAY = "app", "2026-11-20"


def _write(target: Path, rows: list[str], built_from: dict | None = None) -> Path:
    """A partition as a stage leaves it: staged, then swapped in with its manifest."""
    staged = temp_dir_for(target)
    staged.mkdir(parents=True)
    pq.write_table(pa.table({"session_id": rows}), staged / "part-00000.parquet")
    swap_in(staged, target, built_from)
    return target


def _day(root: Path) -> tuple[Path, Path, Path]:
    """raw -> parsed (seeded from a miner state) -> sessions, each recording what it read."""
    raw = raw_dir(root, SOURCE, DAY)
    raw.mkdir(parents=True)
    (raw / "a.log").write_text("line 1\nline 2\n", encoding="utf-8")
    seed = root / "state" / SOURCE / "templates" / "dt=2026-11-19.json"
    seed.parent.mkdir(parents=True)
    seed.write_text("{}", encoding="utf-8")
    parsed = _write(partition_dir(root, "parsed", SOURCE, DAY), ["l1", "l2"],
                    inputs(root, files=[seed, None], raw=sorted(raw.glob("*.log"))))
    sessions = _write(partition_dir(root, "sessions", SOURCE, DAY), ["s1"], inputs(root, partitions=[parsed]))
    return raw, parsed, sessions


def test_nothing_is_stale_while_every_input_is_as_it_was_read(tmp_path: Path) -> None:
    _, parsed, _ = _day(tmp_path)
    assert stale_partitions(tmp_path, SOURCE) == []
    seed = tmp_path / "state" / SOURCE / "templates" / "dt=2026-11-19.json"
    raw = sorted(raw_dir(tmp_path, SOURCE, DAY).glob("*.log"))
    _write(parsed, ["l1", "l2"], inputs(tmp_path, files=[seed], raw=raw))
    assert stale_partitions(tmp_path, SOURCE) == []  # a rerun that writes the same bytes makes nothing stale


def test_a_late_log_file_makes_the_parsed_day_stale_and_then_what_was_built_from_it(tmp_path: Path) -> None:
    raw, parsed, sessions = _day(tmp_path)
    (raw / "late.log").write_text("line 3\n", encoding="utf-8")
    (raw / "a.log").write_text("line 1\nline 2\nline 2b\n", encoding="utf-8")
    [stale] = stale_partitions(tmp_path, SOURCE)
    assert (stale.dt, stale.partition) == (DAY, f"parsed/source={SOURCE}/dt={DAY}")
    assert str(stale) == (f"parsed/source={SOURCE}/dt={DAY} is stale: 1 raw file delivered after it was parsed: "
                          f"raw/{SOURCE}/dt={DAY}/late.log; 1 raw file changed size after it was parsed: "
                          f"raw/{SOURCE}/dt={DAY}/a.log")
    _write(parsed, ["l1", "l2", "l2b", "l3"],
           inputs(tmp_path, files=[tmp_path / "state" / SOURCE / "templates" / "dt=2026-11-19.json"],
                  raw=sorted(raw.glob("*.log"))))  # parsed again: now the sessions are behind
    assert [str(s) for s in stale_partitions(tmp_path, SOURCE)] == [
        f"sessions/source={SOURCE}/dt={DAY} is stale: parsed/source={SOURCE}/dt={DAY} was written anew after it"]
    _write(sessions, ["s1", "s2"], inputs(tmp_path, partitions=[parsed]))
    assert stale_partitions(tmp_path, SOURCE) == []


def test_a_raw_file_rewritten_with_its_size_is_found_and_one_only_touched_or_copied_again_is_not(
        tmp_path: Path) -> None:
    """A shipper's corrected re-delivery may keep the size; a file touched, or copied in again with the same
    bytes (a new modification time), changed nothing that was parsed."""
    raw, parsed, _ = _day(tmp_path)
    log = raw / "a.log"
    stamp = log.stat().st_mtime_ns
    os.utime(log, ns=(stamp + 10**9, stamp + 10**9))
    shutil.copyfile(log, raw / "copy")
    (raw / "copy").replace(log)
    assert log.stat().st_mtime_ns != stamp and stale_partitions(tmp_path, SOURCE) == []
    log.write_text("line 1\nline X\n", encoding="utf-8")
    os.utime(log, ns=(stamp + 2 * 10**9, stamp + 2 * 10**9))
    assert stale_reasons(tmp_path, parsed, SOURCE, DAY) == [
        f"1 raw file rewritten after it was parsed (same size, other content): raw/{SOURCE}/dt={DAY}/a.log"]
    os.utime(log, ns=(stamp, stamp))  # the same time as when it was parsed: taken as unchanged, not read
    assert stale_reasons(tmp_path, parsed, SOURCE, DAY) == []


def test_a_manifest_from_before_raw_digests_is_compared_by_size(tmp_path: Path) -> None:
    raw, parsed, _ = _day(tmp_path)
    staged = temp_dir_for(parsed)
    shutil.copytree(parsed, staged)
    (staged / MANIFEST).unlink()
    swap_in(staged, parsed, {"partitions": {}, "files": {}, "raw": {f"raw/{SOURCE}/dt={DAY}/a.log": 14}})
    (raw / "a.log").write_text("line 1\nline X\n", encoding="utf-8")
    assert stale_reasons(tmp_path, parsed, SOURCE, DAY) == []
    (raw / "a.log").write_text("line 1\nline 2\nline 3\n", encoding="utf-8")
    assert stale_reasons(tmp_path, parsed, SOURCE, DAY) == [
        f"1 raw file changed size after it was parsed: raw/{SOURCE}/dt={DAY}/a.log"]


def test_a_changed_seed_or_input_partition_is_named_but_not_inputs_removed_since(tmp_path: Path) -> None:
    raw, parsed, sessions = _day(tmp_path)
    (tmp_path / "state" / SOURCE / "templates" / "dt=2026-11-19.json").write_text('{"x": 1}', encoding="utf-8")
    (raw / "a.log").rename(raw / "a.log.gz")  # compressed in place (the size is not compared), then removed
    assert stale_reasons(tmp_path, parsed, SOURCE, DAY) == [
        f"state/{SOURCE}/templates/dt=2026-11-19.json was written anew after it"]
    (raw / "a.log.gz").unlink()  # retention or a log shipper: what was parsed from it stands
    assert len(stale_reasons(tmp_path, parsed, SOURCE, DAY)) == 1
    (parsed / MANIFEST).unlink()  # an input without a manifest (from before manifests) is not compared
    assert content_id(parsed) == UNSEALED and stale_reasons(tmp_path, sessions, SOURCE, DAY) == []
    _write(parsed, ["l1"])
    assert stale_reasons(tmp_path, sessions, SOURCE, DAY) == [
        f"parsed/source={SOURCE}/dt={DAY} was written anew after it"]
    shutil.rmtree(parsed)  # removed (retention): what was built from it stands
    assert stale_reasons(tmp_path, sessions, SOURCE, DAY) == []


def test_a_miner_state_written_later_for_a_day_before_the_seed_or_the_first_day_makes_the_day_stale(
        tmp_path: Path) -> None:
    """A backfill of earlier days: the day was seeded from an older state (or none) than the newest before it."""
    states = tmp_path / "state" / SOURCE / "templates"
    states.mkdir(parents=True)
    first = _write(partition_dir(tmp_path, "parsed", SOURCE, DAY), ["l1"], inputs(tmp_path, seed=(states, None)))
    assert stale_reasons(tmp_path, first, SOURCE, DAY) == []
    (states / f"dt={DAY}.json").write_text("{}", encoding="utf-8")  # its own state: not one before it
    (states / "dt=2026-11-21.json").write_text("{}", encoding="utf-8")  # a later day's
    assert stale_reasons(tmp_path, first, SOURCE, DAY) == []
    (states / "dt=2026-11-18.json").write_text("{}", encoding="utf-8")  # a day before it, parsed afterwards
    assert stale_reasons(tmp_path, first, SOURCE, DAY) == [
        f"it was parsed with no miner state before it, and state/{SOURCE}/templates/dt=2026-11-18.json was written "
        "after it (a day before it parsed later)"]
    assert [s.partition for s in parsed_before(tmp_path, SOURCE, "2026-11-18")] == [f"parsed/source={SOURCE}/dt={DAY}"]
    assert parsed_before(tmp_path, SOURCE, DAY) == []  # what the parse run of a day says of the days after it

    seed = states / "dt=2026-11-18.json"
    seeded = _write(first, ["l1"], inputs(tmp_path, files=[seed], seed=(states, seed)))  # parsed again from it
    assert stale_reasons(tmp_path, seeded, SOURCE, DAY) == []
    (states / "dt=2026-11-19.json").write_text("{}", encoding="utf-8")  # the day between, parsed afterwards
    assert stale_reasons(tmp_path, seeded, SOURCE, DAY) == [
        f"it was seeded from state/{SOURCE}/templates/dt=2026-11-18.json, and "
        f"state/{SOURCE}/templates/dt=2026-11-19.json was written after it (a day before it parsed later)"]
    for name in ("dt=2026-11-18.json", "dt=2026-11-19.json"):
        (states / name).unlink()  # retention: what was parsed from them stands
    assert stale_reasons(tmp_path, seeded, SOURCE, DAY) == []
