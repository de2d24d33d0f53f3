"""``krone status`` reads each store where it lives and keeps going when one does not answer."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from krone_jobs.cli import main
from krone_jobs.partitions import partition_dir, record_source_format, swap_in, temp_dir_for
from krone_jobs.status import known_sources, render, source_status
from krone_jobs.warehouse import Warehouse

DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")


def _source(root: Path, source: str = "web") -> None:
    record_source_format(root, source, "krone", {"kind": "id_pattern"}, "Europe/Berlin")
    for dt in DAYS:
        (root / "kseqs" / f"source={source}" / f"dt={dt}").mkdir(parents=True)
    open_state = root / "state" / source / "open" / f"dt={DAYS[-1]}"
    open_state.mkdir(parents=True)
    pq.write_table(pa.table({"key": ["a", "a", "b"]}), open_state / "part-00000.parquet")


def test_a_source_with_one_day_scored_and_no_model(tmp_path: Path) -> None:
    _source(tmp_path)
    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    with Warehouse(url) as wh:
        wh.ensure_schema()
        wh.write_run_metrics("web", DAYS[1], "score", "run-1", {"sessions": 10.0})
    s = source_status(tmp_path, "web", warehouse_url=url, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert known_sources(tmp_path) == ["web"]
    assert (s["format"], s["timezone"], s["days_parsed"], s["first_day"], s["last_day"]) == ("krone", "Europe/Berlin",
                                                                                             3, DAYS[0], DAYS[2])
    assert (s["days_scored"], s["last_scored"], s["unscored"]) == (1, DAYS[1], [DAYS[0], DAYS[2]])
    assert s["open_sessions_after_last_day"] == 3 and s["champion"] is None and s["problems"] == []
    assert s["running"] is None and "in progress" not in render(s)
    assert "  in progress: night 2026-11-04 holds it" in render({**s, "running": "night 2026-11-04 holds it"})
    text = render(s)
    assert "1 day scored (last 2026-11-02); 2 days parsed but not scored: 2026-11-01, 2026-11-03" in text
    assert "champion: none yet (`krone train --source web --end <day>`)" in text


def test_raw_days_not_parsed_yet_are_listed_with_whether_their_logs_are_all_there(tmp_path: Path) -> None:
    _source(tmp_path)
    for dt, files in (("2026-10-31", ["a.log"]), (DAYS[1], ["a.log"]), ("2026-11-04", ["a.log", "_SUCCESS"]),
                      ("2026-11-05", [])):  # before the first parsed day (retention's); parsed; delivered; empty
        folder = tmp_path / "raw" / "web" / f"dt={dt}"
        folder.mkdir(parents=True)
        for name in files:
            (folder / name).write_text("x\n")
    s = source_status(tmp_path, "web", warehouse_url=f"duckdb:///{tmp_path / 'w.duckdb'}",
                      tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [(u["dt"], u["ready"], u["files"], u["marker"]) for u in s["unparsed"]] == [
        ("2026-11-04", True, 1, True), ("2026-11-05", False, 0, False)]
    text = render(s)
    assert "  2 days of raw logs not parsed yet:\n    2026-11-04: ready: raw/web/dt=2026-11-04: the marker _SUCCESS" in text
    assert "    2026-11-05: not ready: raw/web/dt=2026-11-05: no log file was delivered (its folder is empty)" in text
    assert s["problems"] == []
    (tmp_path / "raw" / "new" / "dt=2026-11-04").mkdir(parents=True)  # a source no run took up yet
    (tmp_path / "raw" / "new" / "dt=2026-11-04" / "a.log").write_text("x\n")
    assert known_sources(tmp_path) == ["new", "web"]
    new = source_status(tmp_path, "new", warehouse_url=f"duckdb:///{tmp_path / 'w.duckdb'}",
                        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert (new["days_parsed"], new["problems"], [u["dt"] for u in new["unparsed"]]) == (0, [], ["2026-11-04"])
    first, second, third, *rest = render(new).splitlines()
    assert (first, second) == ("new: format ?; 0 days parsed", "  1 day of raw logs not parsed yet:")
    assert third.startswith("    2026-11-04: ready: raw/new/dt=2026-11-04: 1 log file(s), ")
    assert third.endswith(" days after the day ended") and not any("scored" in line for line in rest)


def test_a_day_whose_score_failed_for_good_is_named_with_the_command_until_its_inputs_change(tmp_path: Path) -> None:
    from krone_jobs.score_failures import record

    _source(tmp_path)
    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    gate = "reports gate failed: 2 of 9 \x1b[2Jexpectations\nexpect_column_values_to_not_be_null(reason): 3 rows"
    with Warehouse(url) as wh:
        wh.ensure_schema()
        record(wh, tmp_path, "web", DAYS[0], "run-1", RuntimeError(gate), None)
        record(wh, tmp_path, "web", "2026-10-01", "run-0", RuntimeError(gate), None)  # a day retention removed
    mlflow = f"sqlite:///{tmp_path / 'mlflow.db'}"
    s = source_status(tmp_path, "web", warehouse_url=url, tracking_uri=mlflow)
    [problem] = s["problems"]
    assert problem.startswith(f"the score of {DAYS[0]} failed for good (1 time(s), last ")
    assert ": RuntimeError: reports gate failed: 2 of 9 \ufffd[2Jexpectations. The catch-up sets it aside until " in problem
    assert [(f["dt"], f["error"], f["set_aside"]) for f in s["score_failures"]] == [(DAYS[0], "RuntimeError", True)]

    sessions = partition_dir(tmp_path, "sessions", "web", DAYS[0])
    sessions.mkdir(parents=True)
    pq.write_table(pa.table({"session_id": ["s1"]}), sessions / "part-00000.parquet")  # its sessions written since
    s = source_status(tmp_path, "web", warehouse_url=url, tracking_uri=mlflow)
    assert s["problems"] == [] and s["score_failures"][0]["set_aside"] is False
    assert (f"score failed for good, but what it reads changed since (the next catch-up tries again): "
            f"{DAYS[0]}") in render(s)


def test_a_warehouse_that_does_not_answer_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    _source(tmp_path)
    broken = tmp_path / "w.duckdb"
    broken.write_bytes(b"not a database" * 1000)
    s = source_status(tmp_path, "web", warehouse_url=f"duckdb:///{broken}",
                      tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert s["unscored"] is None and s["days_parsed"] == 3
    assert len(s["problems"]) == 1 and s["problems"][0].startswith("warehouse:")
    assert "problem: warehouse:" in render(s)


def test_a_damaged_open_session_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    _source(tmp_path)
    damaged = tmp_path / "state" / "web" / "open" / f"dt={DAYS[-1]}" / "part-00000.parquet"
    damaged.write_bytes(b"PAR1 cut short")
    s = source_status(tmp_path, "web", warehouse_url=f"duckdb:///{tmp_path / 'w.duckdb'}",
                      tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert s["open_sessions_after_last_day"] is None and s["days_parsed"] == 3
    [problem] = s["problems"]
    assert problem.startswith(f"{damaged} is not a readable Parquet file (ArrowInvalid: ")
    assert problem.endswith(f"run `krone sessionize --source web --date {DAYS[-1]}` again to write it anew from its "
                            "input (then the stages after it), or restore it from a backup")
    checked = source_status(tmp_path, "web", warehouse_url=f"duckdb:///{tmp_path / 'w.duckdb'}",
                            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", check=True)
    assert checked["problems"] == [problem] and (checked["checked_files"], checked["damaged_files"]) == (1, 1)


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRONE_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'w.duckdb'}")
    monkeypatch.setenv("KRONE_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["status", "--data-root", str(tmp_path)]) == 1
    assert "no source has raw logs or state" in capsys.readouterr().err
    _source(tmp_path)
    assert main(["status", "--data-root", str(tmp_path), "--json"]) == 0
    (found,) = json.loads(capsys.readouterr().out)
    assert found["source"] == "web" and found["unscored"] == list(DAYS)


def test_check_reads_every_file_and_names_each_damaged_one(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from krone_jobs.hierarchy.model import Hierarchy, make_node
    from krone_jobs.miner_state import templates_path
    from krone_jobs.templates import TemplateStore

    monkeypatch.setenv("KRONE_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'w.duckdb'}")
    monkeypatch.setenv("KRONE_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    _source(tmp_path)
    for dt in DAYS[:2]:  # as the sessionize job leaves them: staged, then swapped in with a manifest
        target = partition_dir(tmp_path, "sessions", "web", dt)
        staged = temp_dir_for(target)
        staged.mkdir(parents=True)
        pq.write_table(pa.table({"session_id": [f"s{i}" for i in range(50_000)]}), staged / "part-00000.parquet")
        pq.write_table(pa.table({"session_id": ["t"]}), staged / "part-00001.parquet")
        swap_in(staged, target)
    sessions = partition_dir(tmp_path, "sessions", "web", DAYS[0]) / "part-00000.parquet"
    store = TemplateStore()
    store.mine("job 1 started on node 3")
    for dt in DAYS[:2]:
        templates_path(tmp_path, "web", dt).parent.mkdir(parents=True, exist_ok=True)
        templates_path(tmp_path, "web", dt).write_text(store.to_json(), encoding="utf-8")
    Hierarchy([make_node("T1", "job <*> started", "job", "start", "none", "offline")]).save_csv(
        tmp_path / "state" / "web" / "hierarchy.csv")
    argv = ["status", "--data-root", str(tmp_path), "--check"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "checked 8 files: every one readable" in out  # 5 Parquet, 2 states, 1 hierarchy
    assert "  4 partitions without a manifest (written before manifests, by hand, or copied without it)" in out

    page = bytearray(sessions.read_bytes())  # a damaged page behind an intact footer
    page[len(page) // 3: len(page) // 3 + 64] = bytes(b ^ 0xFF for b in page[len(page) // 3: len(page) // 3 + 64])
    sessions.write_bytes(bytes(page))
    lost = partition_dir(tmp_path, "sessions", "web", DAYS[1]) / "part-00001.parquet"
    lost.unlink()  # a restore that missed a file: every file left reads
    templates_path(tmp_path, "web", DAYS[1]).write_text("", encoding="utf-8")
    hierarchy = tmp_path / "state" / "web" / "hierarchy.csv"
    hierarchy.write_text(hierarchy.read_text(encoding="utf-8").rsplit(",", 4)[0], encoding="utf-8")
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "checked 7 files: 4 damaged or not as written (below)\n" in out
    assert (f"problem: {lost.parent} is not the partition that was written: part-00001.parquet is missing (1 row): "
            f"run `krone sessionize --source web --date {DAYS[1]}` again") in out
    assert f"problem: {sessions} is not a readable Parquet file (OSError: Corrupt snappy compressed data" in out
    assert f"problem: {templates_path(tmp_path, 'web', DAYS[1])}: malformed template state" in out
    assert f"problem: {hierarchy}, line 2: no action_node, status_node: the file is damaged" in out
    assert main(["status", "--data-root", str(tmp_path)]) == 0  # without --check: the footer is intact ...
    out = capsys.readouterr().out
    assert "part-00001.parquet is missing (1 row)" in out  # ... but a file gone is a stat away
    assert "Corrupt snappy" not in out and "holds other bytes" not in out
