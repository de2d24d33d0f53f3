"""``krone night``: the DAGs' daily chain over a range of days, parse-only until a champion exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from krone_jobs import pipeline
from krone_jobs.cli import main
from krone_jobs.night import day_range, run_night
from krone_jobs.synthetic import generate
from krone_jobs.warehouse import Warehouse
from tests.alert_inbox import AlertInbox

SOURCE = "nightly"
DAYS = ("2026-11-01", "2026-11-02")


def test_day_range() -> None:
    assert day_range("2026-11-30", "2026-12-02") == ["2026-11-30", "2026-12-01", "2026-12-02"]
    assert day_range("2026-11-30", None) == ["2026-11-30"]
    with pytest.raises(ValueError, match="before"):
        day_range("2026-11-30", "2026-11-29")


def test_night_parses_a_range_in_order_then_scores_once_there_is_a_champion(
        spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        alert_inbox: AlertInbox) -> None:
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    monkeypatch.setenv("KRONE_WAREHOUSE_URL", url)
    monkeypatch.setenv("KRONE_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("KRONE_MLFLOW_ARTIFACTS", (tmp_path / "artifacts").as_uri())
    generate(tmp_path, days=2, sessions_per_day=80, seed=3, start_date=DAYS[0], source=SOURCE)

    said: list[str] = []
    first = run_night(SOURCE, "krone", *DAYS, data_root=tmp_path, say=said.append)
    assert said[0].startswith(f"no champion for krone-{SOURCE} yet: parsing only")
    assert [line.split(":")[0] for line in said[1:]] == [f"{SOURCE} {d}" for d in DAYS]
    assert all("score" not in out for out in first)
    assert pipeline.backlog(SOURCE, data_root=tmp_path) == []  # nothing to catch up on without a champion
    assert first[0]["sessionize"]["metrics"]["open_sessions"] > 0  # jobs running at midnight ...
    assert first[1]["sessionize"]["metrics"]["carried_in_events"] > 0  # ... are closed by day 2, in order

    pipeline.train_window(SOURCE, DAYS[0], days=1, data_root=tmp_path, fp_bound=1.0, min_heldout=0)
    said.clear()
    again = run_night(SOURCE, "krone", DAYS[1], data_root=tmp_path, say=said.append)
    assert said[0].startswith(f"{SOURCE} {DAYS[1]}:") and said[1].startswith(f"  {SOURCE} {DAYS[1]}: ")
    assert said[2].startswith(f"1 earlier day(s) of {SOURCE} have KRONE Seqs but no score run ({DAYS[0]} .. {DAYS[0]})")
    assert again[0]["score"]["metrics"]["sessions"] == again[0]["sessionize"]["metrics"]["sessions"]
    assert Path(again[0]["report"]["path"]).is_file()
    with Warehouse(url) as wh, wh.engine.connect() as conn:
        query = text("SELECT DISTINCT stage FROM run_metrics WHERE dt = :dt")
        stages = set(conn.execute(query, {"dt": DAYS[1]}).scalars())
    assert {"parse", "sessionize", "hierarchy", "kseqs", "score"} <= stages
    # the day parsed before the first model: `krone score --unscored` catches it up, report included
    assert pipeline.unscored_days(SOURCE, data_root=tmp_path) == [DAYS[0]]
    assert pipeline.backlog(SOURCE, data_root=tmp_path) == [DAYS[0]]  # what a scoring run catches up on
    assert pipeline.backlog(SOURCE, before=DAYS[0], data_root=tmp_path) == []
    assert main(["score", "--source", SOURCE, "--unscored", "--data-root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"{SOURCE} {DAYS[0]}: ")
    assert pipeline.unscored_days(SOURCE, data_root=tmp_path) == []
    assert (tmp_path / "reports" / SOURCE / f"dt={DAYS[0]}" / "night_report.html").is_file()
    assert main(["score", "--source", SOURCE, "--unscored", "--data-root", str(tmp_path)]) == 0
    assert "every day of nightly with KRONE Seqs is scored" in capsys.readouterr().out

    # a late log file taken in by hand, without scoring: the day's reports are of sessions that are gone now
    from krone_jobs.partitions import raw_dir
    from krone_jobs.status import source_status

    (raw_dir(tmp_path, SOURCE, DAYS[0]) / "late.log").write_text(
        "2026-11-01 23:10:00.000 INFO [node-07] worker: job_999999 started on node-07\n", encoding="utf-8")
    run_night(SOURCE, "krone", DAYS[0], data_root=tmp_path, score=False, say=lambda _: None)
    assert pipeline.unscored_days(SOURCE, data_root=tmp_path) == [DAYS[0]]  # the next catch-up scores it again
    assert source_status(tmp_path, SOURCE, warehouse_url=url)["scored_from_older"] == [DAYS[0]]
    assert main(["score", "--source", SOURCE, "--unscored", "--data-root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"{SOURCE} {DAYS[0]}: ")
    assert pipeline.unscored_days(SOURCE, data_root=tmp_path) == []
    assert_night_alerts(tmp_path, alert_inbox, monkeypatch, capsys)


def assert_night_alerts(root: Path, inbox: AlertInbox, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    """``krone night`` under cron: its digest and its failure reach the ``KRONE_ALERT_URLS`` targets, and a
    target Apprise cannot read stops it before it starts."""
    night = ["night", "--source", SOURCE, "--format", "krone", "--data-root", str(root), "--date"]
    monkeypatch.setenv("KRONE_ALERT_URLS", "nosuch://host")
    assert main([*night, DAYS[1]]) == 2
    assert "krone night: alerts: alert target 1 of 1 (nosuch://...)" in capsys.readouterr().err
    monkeypatch.setenv("KRONE_ALERT_URLS", inbox.url)
    monkeypatch.setenv("KRONE_ALERT_DIGEST", "always")
    assert main([*night, DAYS[1]]) == 0
    [digest] = inbox.received
    assert digest["title"].startswith("krone: ") and digest["title"].endswith(f", {SOURCE} {DAYS[1]}")
    assert digest["message"].startswith(f"{SOURCE} {DAYS[1]}: ")
    assert main([*night, "2026-11-05"]) == 1  # never delivered
    assert "no log file" in capsys.readouterr().err
    assert inbox.received[1]["title"] == f"krone: krone night --source {SOURCE} failed, 2026-11-05"
    assert inbox.received[1]["message"].splitlines()[1].startswith("error: NoLogFilesError: ")


def test_a_score_that_fails_for_good_holds_up_no_other_day_of_the_range(
        spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A damaged champion fails every day's score; each day is still parsed, each failure said and recorded (the
    catch-up sets those days aside while the champion is the same), and the command exits 1."""
    from krone_jobs.partitions import partition_dir

    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    monkeypatch.setenv("KRONE_WAREHOUSE_URL", url)
    monkeypatch.setenv("KRONE_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("KRONE_MLFLOW_ARTIFACTS", (tmp_path / "artifacts").as_uri())
    generate(tmp_path, days=2, sessions_per_day=60, seed=4, start_date=DAYS[0], source=SOURCE)
    run_night(SOURCE, "krone", DAYS[0], data_root=tmp_path, score=False, say=lambda _: None)
    pipeline.train_window(SOURCE, DAYS[0], days=1, data_root=tmp_path, fp_bound=1.0, min_heldout=0)
    [weights] = (tmp_path / "artifacts").rglob("detector.pt")
    weights.write_bytes(weights.read_bytes()[:100])

    night = ["night", "--source", SOURCE, "--format", "krone", "--date", DAYS[0], "--end", DAYS[1],
             "--data-root", str(tmp_path)]
    assert main(night) == 1
    out = capsys.readouterr().out
    for dt in DAYS:
        assert f"  {SOURCE} {dt}: the score failed for good, the range goes on: ModelUnloadable: the champion " in out
        assert partition_dir(tmp_path, "kseqs", SOURCE, dt).is_dir()  # the day after a failed score is parsed
    with Warehouse(url) as wh, wh.engine.connect() as conn:
        assert conn.execute(text("SELECT error, COUNT(*) FROM score_failures GROUP BY error")).all() == [
            ("ModelUnloadable", 2)]
    assert pipeline.backlog(SOURCE, data_root=tmp_path) == []  # set aside until another champion
    assert pipeline.backlog(SOURCE, data_root=tmp_path, retry_failed=True) == list(DAYS)


def test_a_day_parsed_after_the_days_that_follow_it_leaves_them_stale_until_they_run_again(
        spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backfill of earlier days after the later ones: the later days were neither seeded from the earlier
    days' miner state nor carried their open sessions. The backfilled day's parse says so; status names them."""
    from krone_jobs.status import source_status

    monkeypatch.setenv("KRONE_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    monkeypatch.setenv("KRONE_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # status asks for a champion
    generate(tmp_path, days=2, sessions_per_day=60, seed=6, start_date=DAYS[0], source=SOURCE)
    said: list[str] = []
    run_night(SOURCE, "krone", DAYS[1], data_root=tmp_path, score=False, say=said.append)
    [backfill] = run_night(SOURCE, "krone", DAYS[0], data_root=tmp_path, score=False, say=said.append)
    assert backfill["parse"]["metrics"]["stale_later_days"] == 1
    assert "later days stale 1 (parsed before this day, not seeded from it: `krone status` says what to run)" in said[1]
    status = source_status(tmp_path, SOURCE)
    assert status["rerun_from"] == DAYS[1]
    stale = dict(line.split(" is stale: ") for line in status["stale"])
    seeded = (f"it was parsed with no miner state before it, and state/{SOURCE}/templates/dt={DAYS[0]}.json was "
              "written after it (a day before it parsed later)")
    carried = f"state/{SOURCE}/open/dt={DAYS[0]} was written after it"
    assert stale == {f"parsed/source={SOURCE}/dt={DAYS[1]}": seeded, f"quarantine/source={SOURCE}/dt={DAYS[1]}": seeded,
                     f"sessions/source={SOURCE}/dt={DAYS[1]}": carried, f"state/{SOURCE}/open/dt={DAYS[1]}": carried}
    run_night(SOURCE, "krone", DAYS[1], data_root=tmp_path, score=False, say=said.append)  # what status says to run
    assert source_status(tmp_path, SOURCE)["stale"] == []


def test_a_retention_window_removes_old_days_and_the_oldest_kept_day_reruns_the_same(
        spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three days with KRONE_RETAIN_DAYS=2: the first day's partitions go, its state stays (it seeds the second
    day), and parsing the second day again gives the same sessions and KRONE Seqs as it did."""
    import pyarrow.parquet as pq

    from krone_jobs.partitions import partition_dir

    monkeypatch.setenv("KRONE_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    monkeypatch.setenv("KRONE_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # status asks for a champion
    monkeypatch.setenv("KRONE_RETAIN_DAYS", "2")
    days = ("2026-11-01", "2026-11-02", "2026-11-03")
    generate(tmp_path, days=3, sessions_per_day=60, seed=5, start_date=days[0], source=SOURCE)
    said: list[str] = []
    run_night(SOURCE, "krone", days[0], days[-1], data_root=tmp_path, score=False, say=said.append)
    assert said[-1].startswith(f"  retention: 6 entries before {days[1]} removed")  # 4 stages, 2 quality results
    for stage in ("parsed", "quarantine", "sessions", "kseqs"):
        assert sorted(p.name for p in (tmp_path / stage / f"source={SOURCE}").iterdir()) == [f"dt={d}" for d in days[1:]]
    assert (tmp_path / "state" / SOURCE / "open" / f"dt={days[0]}").is_dir()  # seeds a rerun of the second day

    def outputs() -> list[Any]:
        return [pq.read_table(partition_dir(tmp_path, stage, SOURCE, days[1])).to_pandas().sort_values(keys)
                .reset_index(drop=True) for stage, keys in (("sessions", ["session_id"]), ("kseqs", ["level", "key"]))]

    before = outputs()
    assert all(len(frame) > 0 for frame in before)
    run_night(SOURCE, "krone", days[1], data_root=tmp_path, score=False, say=said.append)
    for old, new in zip(before, outputs()):
        assert old.astype(str).equals(new.astype(str))
    from krone_jobs.status import source_status

    assert source_status(tmp_path, SOURCE)["stale"] == []  # what retention removed was never an input of a kept day


def test_a_late_log_file_leaves_its_day_stale_until_the_days_from_it_run_again(
        spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The stages record what they read: a night run again on the same input makes nothing stale (same bytes);
    a log file delivered after its day was parsed makes that day stale, taking it in makes the next day stale,
    and the run `krone status` names brings it up to date."""
    from krone_jobs.partitions import raw_dir
    from krone_jobs.status import source_status

    monkeypatch.setenv("KRONE_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    monkeypatch.setenv("KRONE_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    generate(tmp_path, days=2, sessions_per_day=40, seed=11, start_date=DAYS[0], source=SOURCE)
    first: list[str] = []
    with monkeypatch.context() as mp:  # as if the shipper had not said yet that the days are complete
        mp.setenv("KRONE_RAW_WAIT_FOR_MARKER", "true")
        run_night(SOURCE, "krone", *DAYS, data_root=tmp_path, score=False, say=first.append)
    assert first[0] == (f"{SOURCE} {DAYS[0]}: parsed before its logs are all there (raw/{SOURCE}/dt={DAYS[0]}: waiting "
                        "for the marker _SUCCESS (KRONE_RAW_WAIT_FOR_MARKER), 1 log file(s) so far); a file delivered "
                        "later makes the day stale (krone status names it)")
    assert source_status(tmp_path, SOURCE)["stale"] == []
    run_night(SOURCE, "krone", DAYS[0], data_root=tmp_path, score=False, say=lambda _: None)
    assert source_status(tmp_path, SOURCE)["stale"] == []  # the first day again, alone: the second is not behind

    late = raw_dir(tmp_path, SOURCE, DAYS[0]) / "late.log"
    late.write_text("2026-11-01 23:10:00.000 INFO [node-07] worker: job_999999 started on node-07\n", encoding="utf-8")
    delivered = f"1 raw file delivered after it was parsed: raw/{SOURCE}/dt={DAYS[0]}/late.log"
    said: list[str] = []
    [out] = run_night(SOURCE, "krone", DAYS[1], data_root=tmp_path, score=False, say=said.append)
    assert out["parse"]["metrics"]["stale_earlier_days"] == 1  # the next night's parse says so, in Airflow too
    assert "earlier days stale 1 (a log file delivered late? `krone status` says what to run)" in said[0]
    status = source_status(tmp_path, SOURCE)
    assert status["stale"] == [f"{stage}/source={SOURCE}/dt={DAYS[0]} is stale: {delivered}"
                               for stage in ("parsed", "quarantine")]
    assert f"--format krone --date {DAYS[0]} --end {DAYS[1]}` (or clear the" in status["problems"][-1]
    run_night(SOURCE, "krone", DAYS[0], data_root=tmp_path, score=False, say=lambda _: None)  # that day only
    status = source_status(tmp_path, SOURCE)  # the next day was seeded and carried from what is gone now
    assert status["rerun_from"] == DAYS[1] and f"parsed/source={SOURCE}/dt={DAYS[1]} is stale: state/{SOURCE}/" \
        f"templates/dt={DAYS[0]}.json was written anew after it" in status["stale"]
    rerun = f"krone night --source {SOURCE} --format krone --date {DAYS[1]} --end {DAYS[1]}"
    assert rerun in status["problems"][-1]
    argv = [*rerun.split()[1:], "--no-score", "--data-root", str(tmp_path)]
    assert main(argv) == 0
    capsys.readouterr()
    assert source_status(tmp_path, SOURCE)["stale"] == []


def test_with_reparse_late_a_night_first_parses_again_the_stale_days_of_the_week_before(
        spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``KRONE_REPARSE_LATE``: a late log file is taken in by the next night, in Airflow (``late_days``, before
    the day's ``parse``) and under ``krone night`` (the range starts at the stale day), unless a day of that run
    has no logs any more; unset, the stale days are only named."""
    import shutil

    import pyarrow.parquet as pq

    from krone_jobs.partitions import partition_dir, raw_dir
    from krone_jobs.status import source_status

    monkeypatch.setenv("KRONE_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    monkeypatch.setenv("KRONE_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    days = ("2026-11-01", "2026-11-02", "2026-11-03")
    generate(tmp_path, days=3, sessions_per_day=40, seed=12, start_date=days[0], source=SOURCE)
    run_night(SOURCE, "krone", days[0], days[-1], data_root=tmp_path, score=False, say=lambda _: None)

    def deliver_late(dt: str, job: int) -> None:
        (raw_dir(tmp_path, SOURCE, dt) / f"late-{job}.log").write_text(
            f"{dt} 23:10:00.000 INFO [node-07] worker: job_{job} started on node-07\n", encoding="utf-8")

    def parsed_jobs(dt: str) -> set[str]:
        contents = pq.read_table(partition_dir(tmp_path, "parsed", SOURCE, dt), columns=["content"]).column(0)
        return {c.split("job_")[1].split()[0] for c in contents.to_pylist() if "job_99999" in c}

    deliver_late(days[0], 999991)
    assert pipeline.late_days(SOURCE, days[2], "krone", data_root=tmp_path)["metrics"] == {
        "enabled": False, "days_parsed_again": 0}  # off unless set: only named
    monkeypatch.setenv("KRONE_REPARSE_LATE", "true")
    late = pipeline.late_days(SOURCE, days[2], "krone", data_root=tmp_path)  # what the DAG runs before `parse`
    assert late["metrics"] == {"enabled": True, "days_parsed_again": 2, "first_day_parsed_again": days[0]}
    assert parsed_jobs(days[0]) == {"999991"}
    assert {s.split(" is stale")[0] for s in source_status(tmp_path, SOURCE)["stale"]} == {
        f"{stage}/source={SOURCE}/dt={days[2]}" for stage in ("parsed", "quarantine")}  # its `parse` comes next
    pipeline.parse_day(SOURCE, days[2], "krone", data_root=tmp_path)
    assert source_status(tmp_path, SOURCE)["stale"] == []

    deliver_late(days[1], 999992)
    said: list[str] = []
    results = run_night(SOURCE, "krone", days[2], data_root=tmp_path, score=False, say=said.append)
    assert said[0] == (f"{SOURCE}: days from {days[1]} are stale (a log file delivered after they were parsed?): "
                       "parsing them again first (KRONE_REPARSE_LATE)")
    assert [r["parse"]["dt"] for r in results] == list(days[1:]) and parsed_jobs(days[1]) == {"999992"}
    assert source_status(tmp_path, SOURCE)["stale"] == []

    deliver_late(days[0], 999993)
    shutil.rmtree(raw_dir(tmp_path, SOURCE, days[1]))  # raw retention: the day between cannot be parsed again
    assert pipeline.late_rerun_from(SOURCE, days[2], "krone", data_root=tmp_path) is None
    [only] = run_night(SOURCE, "krone", days[2], data_root=tmp_path, score=False, say=lambda _: None)
    assert only["parse"]["metrics"]["stale_earlier_days"] == 1 and parsed_jobs(days[0]) == {"999991"}
