"""When a day's raw partition is ready to parse: its marker, or a log file after the grace on the log's clock."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from krone_jobs.config import settings
from krone_jobs.raw_readiness import raw_readiness

DAY = "2026-01-15"


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


@pytest.fixture()
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("KRONE_RAW_MARKER", "KRONE_RAW_WAIT_FOR_MARKER", "KRONE_RAW_GRACE_MINUTES"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "raw" / "web" / f"dt={DAY}"


def test_a_day_with_log_files_is_ready_once_the_grace_after_its_end_has_passed(tmp_path: Path, folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "a.log").write_text("x\n")
    assert "the day ends at 2026-01-16 00:00 UTC" in raw_readiness(tmp_path, "web", DAY, now=_at(f"{DAY}T23:00:00")).reason
    early = raw_readiness(tmp_path, "web", DAY, now=_at("2026-01-16T00:59:00"))
    assert (early.ready, early.files, early.marker) == (False, 1, False)
    assert "the day ended at 2026-01-16 00:00 UTC and late files are waited for until 2026-01-16 01:00 UTC" in early.reason
    late = raw_readiness(tmp_path, "web", DAY, now=_at("2026-01-16T01:00:00"))
    assert late.ready and late.reason == f"raw/web/dt={DAY}: 1 log file(s), 60 min after the day ended"
    assert late.due == early.due == "2026-01-16T01:00:00+00:00"


def test_the_grace_runs_from_midnight_on_the_logs_clock(tmp_path: Path, folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "a.log").write_text("x\n")
    # New York is UTC-5 in January: its day ends at 05:00 UTC
    assert not raw_readiness(tmp_path, "web", DAY, zone="America/New_York", now=_at("2026-01-16T05:59:00")).ready
    assert raw_readiness(tmp_path, "web", DAY, zone="America/New_York", now=_at("2026-01-16T06:00:00")).ready


def test_the_marker_makes_a_day_ready_at_once_even_without_log_files(tmp_path: Path, folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "_SUCCESS").touch()
    verdict = raw_readiness(tmp_path, "web", DAY, now=_at("2026-01-16T00:01:00"))
    assert (verdict.ready, verdict.files, verdict.marker) == (True, 0, True)


def test_a_day_without_log_files_is_never_ready_and_says_what_to_do(tmp_path: Path, folder: Path) -> None:
    never = raw_readiness(tmp_path, "web", DAY, now=_at("2027-01-01T00:00:00"))
    assert not never.ready
    assert f"there is no folder {folder}" in never.reason and f"touch {folder / '_SUCCESS'}" in never.reason
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("x\n")
    named = raw_readiness(tmp_path, "web", DAY, now=_at("2027-01-01T00:00:00"))
    assert not named.ready and "holds 1 file(s) and none is named *.log" in named.reason
    assert named.reason.endswith(f"raw/web/dt={DAY}/notes.txt")


def test_waiting_for_the_marker_only(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRONE_RAW_WAIT_FOR_MARKER", "true")
    monkeypatch.setenv("KRONE_RAW_MARKER", "_DONE")
    folder.mkdir(parents=True)
    (folder / "a.log").write_text("x\n")
    (folder / "_SUCCESS").touch()
    waiting = raw_readiness(tmp_path, "web", DAY, now=_at("2027-01-01T00:00:00"))
    assert not waiting.ready and "waiting for the marker _DONE" in waiting.reason
    (folder / "_DONE").touch()
    assert raw_readiness(tmp_path, "web", DAY, now=_at("2026-01-16T00:00:01")).ready


@pytest.mark.parametrize("name", ["done.log", "_a/b", "..", "", "_" + "x" * 64])
def test_a_marker_that_could_be_read_as_data_is_refused(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRONE_RAW_MARKER", name)
    if name == "":  # unset: the default
        assert settings().raw_marker == "_SUCCESS"
        return
    with pytest.raises(ValueError, match="KRONE_RAW_MARKER"):
        settings().raw_marker


@pytest.mark.parametrize("value", ["-1", "nan", "20000"])
def test_a_grace_out_of_range_is_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRONE_RAW_GRACE_MINUTES", value)
    with pytest.raises(ValueError, match="KRONE_RAW_GRACE_MINUTES"):
        settings().raw_grace_minutes


def test_a_training_window_is_ready_once_its_last_day_is_sessionized(tmp_path: Path, folder: Path) -> None:
    from krone_jobs.pipeline import window_ready

    folder.mkdir(parents=True)
    (folder / "a.log").write_text("x\n")
    waiting = window_ready("web", DAY, data_root=tmp_path)
    assert not waiting["ready"] and waiting["reason"] == (f"the window's last day {DAY} has no sessions partition: its "
                                                          "logs are there and its krone_parse_web run has not got that "
                                                          "far yet")
    (tmp_path / "sessions" / "source=web" / f"dt={DAY}").mkdir(parents=True)
    assert window_ready("web", DAY, data_root=tmp_path)["ready"]
