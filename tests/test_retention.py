"""Retention removes exactly a source's dated entries before the window, keeps the state a rerun of the oldest
kept day needs, leaves raw logs alone unless told, and never follows a link."""

from __future__ import annotations

import os
import time
from datetime import date, timedelta
from pathlib import Path

import pytest

from krone_jobs.retention import LEFTOVER_AGE_S, STAGES, plan_retention, run_retention

SRC = "web"
DAYS = [(date(2026, 11, 1) + timedelta(days=i)).isoformat() for i in range(6)]  # 11-01 .. 11-06


def _touch(path: Path, size: int = 10) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def _layout(root: Path, source: str = SRC) -> None:
    """Every dated entry the pipeline writes for ``source``, one per day, plus what retention must not touch."""
    for dt in DAYS:
        for stage in STAGES:
            _touch(root / stage / f"source={source}" / f"dt={dt}" / "part-00000.parquet")
        _touch(root / "quality" / "parsed" / f"source={source}" / f"dt={dt}" / "result.json")
        _touch(root / "reports" / source / f"dt={dt}" / "night_report.html")
        _touch(root / "raw" / source / f"dt={dt}" / "app.log")
        _touch(root / "state" / source / "templates" / f"dt={dt}.json")
        _touch(root / "state" / source / "hierarchy" / f"dt={dt}.csv")
        _touch(root / "state" / source / "open" / f"dt={dt}" / "part-00000.parquet")
    _touch(root / "state" / source / "hierarchy.csv")
    _touch(root / "state" / source / "source.json")
    _touch(root / "parsed" / f"source={source}" / "_tmp-rerun" / "part-00000.parquet")  # not a dt= entry


def _days(folder: Path) -> list[str]:
    return sorted(p.name.removeprefix("dt=").split(".")[0] for p in folder.iterdir() if p.name.startswith("dt="))


def test_a_window_keeps_its_days_and_the_state_before_it(tmp_path: Path) -> None:
    _layout(tmp_path)
    _layout(tmp_path, "other")
    m = run_retention(SRC, DAYS[-1], data_root=tmp_path, keep_days=3)  # keeps 11-04 .. 11-06
    kept = DAYS[3:]
    for stage in STAGES:
        assert _days(tmp_path / stage / f"source={SRC}") == kept, stage
        assert _days(tmp_path / stage / "source=other") == DAYS  # another source's days are its own
    assert _days(tmp_path / "quality" / "parsed" / f"source={SRC}") == kept
    assert _days(tmp_path / "reports" / SRC) == kept
    for name in ("templates", "hierarchy", "open"):  # the day before the window seeds a rerun of its first day
        assert _days(tmp_path / "state" / SRC / name) == DAYS[2:], name
    assert _days(tmp_path / "raw" / SRC) == DAYS  # raw logs only with a raw window
    assert (tmp_path / "state" / SRC / "hierarchy.csv").is_file() and (tmp_path / "state" / SRC / "source.json").is_file()
    assert (tmp_path / "parsed" / f"source={SRC}" / "_tmp-rerun").is_dir()
    assert m.oldest_kept == DAYS[3] and m.removed == 3 * (len(STAGES) + 2) + 2 * 3
    assert m.by_kind["kseqs"] == 3 and m.by_kind["state/open"] == 2 and m.bytes_freed == 10 * m.removed
    assert run_retention(SRC, DAYS[-1], data_root=tmp_path, keep_days=3).removed == 0  # idempotent


def test_raw_logs_go_only_with_their_own_window(tmp_path: Path) -> None:
    _layout(tmp_path)
    m = run_retention(SRC, DAYS[-1], data_root=tmp_path, keep_days=5, keep_raw_days=2)
    assert _days(tmp_path / "raw" / SRC) == DAYS[4:] and m.by_kind["raw"] == 4
    assert _days(tmp_path / "kseqs" / f"source={SRC}") == DAYS[1:]


def test_no_window_dry_run_and_too_short_a_window(tmp_path: Path) -> None:
    _layout(tmp_path)
    assert run_retention(SRC, DAYS[-1], data_root=tmp_path, keep_days=None).removed == 0
    planned = plan_retention(tmp_path, SRC, DAYS[-1], 2)
    dry = run_retention(SRC, DAYS[-1], data_root=tmp_path, keep_days=2, dry_run=True)
    assert dry.paths == [str(r.path) for r in planned] and dry.removed == len(planned) > 0
    assert all(Path(p).exists() for p in dry.paths)  # nothing removed
    with pytest.raises(ValueError, match="at least 2 days"):
        run_retention(SRC, DAYS[-1], data_root=tmp_path, keep_days=1)
    with pytest.raises(ValueError, match="raw retention window"):
        run_retention(SRC, DAYS[-1], data_root=tmp_path, keep_days=3, keep_raw_days=0)
    with pytest.raises(ValueError):
        plan_retention(tmp_path, "../etc", DAYS[-1], 3)


def test_a_partition_that_is_a_link_loses_the_link_not_its_target(tmp_path: Path) -> None:
    elsewhere = tmp_path / "archive" / "dt=2026-11-01"
    _touch(elsewhere / "part-00000.parquet")
    link = tmp_path / "data" / "parsed" / f"source={SRC}" / "dt=2026-11-01"
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere, target_is_directory=True)
    m = run_retention(SRC, DAYS[-1], data_root=tmp_path / "data", keep_days=2)
    assert m.removed == 1 and m.bytes_freed == 0
    assert not link.is_symlink() and (elsewhere / "part-00000.parquet").is_file()


def test_an_entry_the_system_keeps_is_reported_and_the_rest_still_go(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import krone_jobs.retention as retention

    _layout(tmp_path)
    stuck = tmp_path / "sessions" / f"source={SRC}" / f"dt={DAYS[0]}"
    real_rmtree = retention.shutil.rmtree

    def rmtree(path: Path) -> None:  # what a busy mount or a read-only folder does
        if Path(path) == stuck:
            raise PermissionError(13, "Permission denied")
        real_rmtree(path)

    monkeypatch.setattr(retention.shutil, "rmtree", rmtree)
    m = run_retention(SRC, DAYS[-1], data_root=tmp_path, keep_days=5)
    assert m.failed == 1 and m.errors == [f"{stuck}: Permission denied"] and stuck.is_dir()
    assert _days(tmp_path / "kseqs" / f"source={SRC}") == DAYS[1:] and str(stuck) not in m.paths


def test_staging_a_killed_job_left_is_swept_once_nothing_touched_it_for_a_day(tmp_path: Path) -> None:
    _layout(tmp_path)
    old = time.time() - LEFTOVER_AGE_S - 60
    staged = tmp_path / "parsed" / f"source={SRC}" / f"_tmp_dt={DAYS[-1]}_0f3a"  # a day inside the window
    _touch(staged / "_temporary" / "0" / "part-00000.parquet", 1000)
    swapped = tmp_path / "state" / SRC / "open" / f"_old_dt={DAYS[-2]}_9c1e"
    _touch(swapped / "part-00000.parquet", 100)
    state = tmp_path / "state" / SRC / "_tmp_source.json_77aa"
    _touch(state, 5)
    for path in (staged, swapped, state):
        for p in [path, *path.rglob("*")]:
            os.utime(p, (old, old), follow_symlinks=False)
    running = tmp_path / "sessions" / f"source={SRC}" / f"_tmp_dt={DAYS[-1]}_b2c4"  # a job still writing
    _touch(running / "part-00000.parquet")
    os.utime(running, (old, old))  # its folder is old, but a file inside was written just now

    assert run_retention(SRC, DAYS[-1], data_root=tmp_path, keep_days=None).removed == 0  # off: nothing at all
    assert staged.exists()
    m = run_retention(SRC, DAYS[-1], data_root=tmp_path, keep_days=3)
    assert m.by_kind["leftover"] == 3 and not staged.exists() and not swapped.exists() and not state.exists()
    assert running.exists() and (tmp_path / "parsed" / f"source={SRC}" / "_tmp-rerun").exists()
    assert m.bytes_freed >= 1105 and m.failed == 0
