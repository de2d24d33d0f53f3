"""A day whose score failed for good stays set aside while what it is scored from is unchanged, and only then."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from krone_jobs.partitions import partition_dir, state_dir, swap_in, temp_dir_for
from krone_jobs.score_failures import record, recorded, score_inputs, set_aside
from krone_jobs.warehouse import Warehouse

SOURCE, DAY, LATER = "app", "2026-11-20", "2026-11-21"


def _sessions(root: Path, dt: str, rows: list[str]) -> Path:
    """A sessions partition as the sessionize stage leaves it (staged, swapped in with its manifest)."""
    target = partition_dir(root, "sessions", SOURCE, dt)
    staged = temp_dir_for(target)
    staged.mkdir(parents=True)
    pq.write_table(pa.table({"session_id": rows}), staged / "part-00000.parquet")
    swap_in(staged, target, None)
    return target


def _hierarchy(root: Path, dt: str, text: str) -> Path:
    path = state_dir(root, SOURCE) / "hierarchy" / f"dt={dt}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _touch(path: Path) -> None:
    """Another modification time, as any rewrite gives (the same bytes put back included)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_the_inputs_change_with_the_sessions_the_hierarchy_in_force_and_the_champion(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path, DAY, ["s1", "s2"])
    hierarchy = _hierarchy(tmp_path, DAY, "template_id,entity\n")
    first = score_inputs(tmp_path, SOURCE, DAY, "3")
    assert score_inputs(tmp_path, SOURCE, DAY, "3") == first  # nothing changed: the same id
    assert score_inputs(tmp_path, SOURCE, DAY, "4") != first  # another champion

    _hierarchy(tmp_path, LATER, "template_id,entity\nT9,x\n")  # a later day's hierarchy is not read for DAY
    _sessions(tmp_path, LATER, ["s9"])
    assert score_inputs(tmp_path, SOURCE, DAY, "3") == first

    _touch(hierarchy)  # the day's hierarchy put back (or edited)
    second = score_inputs(tmp_path, SOURCE, DAY, "3")
    assert second != first
    _sessions(tmp_path, DAY, ["s1", "s2"])  # the day's sessions written again, byte for byte
    [part] = sessions.glob("*.parquet")
    _touch(part)
    assert score_inputs(tmp_path, SOURCE, DAY, "3") != second


@pytest.fixture()
def wh(tmp_path: Path) -> Warehouse:
    warehouse = Warehouse(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    warehouse.ensure_schema()
    return warehouse


def test_a_recorded_failure_sets_its_day_aside_until_an_input_changes(tmp_path: Path, wh: Warehouse) -> None:
    _sessions(tmp_path, DAY, ["s1"])
    _sessions(tmp_path, LATER, ["s2"])
    record(wh, tmp_path, SOURCE, DAY, "run-1", ValueError("the reports gate failed\nexpectation 3 of 7"), "3")
    failures = recorded(wh, SOURCE)
    assert list(failures) == [DAY]
    f = failures[DAY]
    assert (f.error, f.message, f.attempts, f.run_id) == ("ValueError", "the reports gate failed\nexpectation 3 of 7",
                                                           1, "run-1")
    assert set(set_aside(failures, tmp_path, SOURCE, [DAY, LATER], "3")) == {DAY}
    assert set_aside(failures, tmp_path, SOURCE, [LATER], "3") == {}  # only the days asked about
    assert set_aside(failures, tmp_path, SOURCE, [DAY], "4") == {}  # a new champion: tried again
    _hierarchy(tmp_path, DAY, "template_id,entity\n")
    assert set_aside(failures, tmp_path, SOURCE, [DAY], "3") == {}  # a hierarchy put in place: tried again


def test_a_failure_that_cannot_be_recorded_is_logged_not_raised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = Warehouse(f"postgresql+psycopg://krone@127.0.0.1:{port}/krone")
    with caplog.at_level(logging.WARNING, logger="krone_jobs.score_failures"):
        record(down, tmp_path, SOURCE, DAY, "run-1", ValueError("gate"), "3")
    assert "the score failure could not be recorded" in caplog.text and "will try the day again" in caplog.text
