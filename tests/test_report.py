"""The night report on a real DuckDB warehouse and real raw files in a temporary data root."""

from __future__ import annotations

import argparse
import gzip
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from krone_jobs.report import (
    EXCERPT_CHARS, NO_FILE, OUTSIDE, NightReport, add_report_arguments, main_report, report_path, write_night_report,
)
from krone_jobs.warehouse import Warehouse, WarehouseUnavailable

SRC, DT, DT_EMPTY = "syn", "2026-11-03", "2026-11-04"
HOSTILE = "<script>alert(1)</script>"
RAW = "raw/syn/dt=2026-11-03"


def report(session_id: str, level: str, score: float, refs: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "session_id": session_id, "level": level, "chunk_index": 1, "kseq_key": f"{level}|A:disk/write|S:failed#T1",
        "segment_template_ids": ["T1", "T2"], "line_refs": refs, "detector": "local", "score": score,
        "reason": "unseen status sequence", "model_version": "7", **extra,
    }


@pytest.fixture()
def root(tmp_path: Path) -> Iterator[Path]:
    """A data root with a plain and a gzip raw file and a warehouse holding two days of reports."""
    raw = tmp_path / RAW
    raw.mkdir(parents=True)
    (raw / "app-1.log").write_text("first plain line\nsecond <b>plain</b> line\n" + "x" * 1000 + "\n")
    with gzip.open(raw / "app-2.log.gz", "wb") as f:
        f.write(b"gz line one\ngz line two \xff\xfe bytes\n")
    wh = Warehouse(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    wh.ensure_schema()
    wh.write_reports(SRC, "2026-11-02", "run-0", [report("s1", "status", 0.7, [f"{RAW}/app-1.log:1"])])
    wh.write_reports(SRC, DT, "run-1", [
        report("s1", "status", 0.95, [f"{RAW}/app-1.log:2", f"{RAW}/app-2.log.gz:2", f"{RAW}/app-1.log:3"],
               reason=HOSTILE),
        report("s2", "action", 0.8, [f"{RAW}/app-2.log.gz:1", f"{RAW}/gone.log:4", "../../etc/passwd:1"],
               kseq_key="action|E:disk|A:disk/write", detector="nested"),
        report("s3", "entity", 0.5, [], kseq_key="entity||E:disk,E:net"),
    ])
    wh.write_run_metrics(SRC, DT, "score", "run-1", {"sessions": 1482, "cache_hits": 5120, "llm_calls": 0,
                                                     "sessions_content": float(0x0123456789abc)})
    wh.write_run_metrics(SRC, DT, "parse", "run-p", {"raw_lines": 9000, "quarantined": 12,
                                                     "quarantine_reasons.continuation": 10, "raw_bytes": 10**6,
                                                     "quarantined_bytes": 3 * 10**5, "duplicate_files": 2,
                                                     "duplicate_lines": 4000, "continued_files": 1,
                                                     "continued_lines": 77668, "repeated_hour_lines": 360,
                                                     "stale_earlier_days": 1})
    wh.record_score_failure(SRC, "2026-11-01", run_id="run-f", error="QualityGateError", message="gate", inputs="i")
    wh.record_score_failure(SRC, "2026-11-05", run_id="run-g", error="PartitionMismatch", message="later", inputs="i")
    wh.record_score_failure(SRC, "2026-10-01", run_id="run-h", error="PartitionMismatch", message="old", inputs="i")
    wh.upsert_templates(SRC, [
        {"template_id": "T9", "template": "disk <*> on fire <img src=x>", "first_seen_dt": date(2026, 11, 3),
         "last_seen_dt": date(2026, 11, 3), "count": 4},
        {"template_id": "T1", "template": "disk write failed", "first_seen_dt": date(2026, 11, 1),
         "last_seen_dt": date(2026, 11, 3), "count": 99},
    ])
    wh.close()
    yield tmp_path


def test_page_has_figures_plots_chunks_and_excerpts(root: Path) -> None:
    rep = write_night_report(SRC, DT, data_root=root, days=7)
    page = rep.path.read_text(encoding="utf-8")
    assert rep.path == root / "reports" / SRC / f"dt={DT}" / "night_report.html" == report_path(root, SRC, DT)
    f = rep.figures
    assert (f["sessions"], f["anomalies"], f["per_level"]) == (1482, 3, {"status": 1, "action": 1, "entity": 1})
    assert (f["cache_hits"], f["llm_calls"], f["quarantined"], f["new_templates"]) == (5120, 0, 12, 1)
    assert f["continuation_lines"] == 10 and "of them continuation lines" in page
    assert ("quarantined lines 12 (10 of them continuation lines; 30% of the day's bytes), duplicate files skipped 2 "
            "(4,000 lines), files continued from the day before 1 (77,668 lines read then), lines in the second run of "
            "a repeated hour 360, earlier days stale 1 (a log file delivered late? `krone status` says what to run),"
            ) in rep.summary.splitlines()[1]
    assert "duplicate files skipped" in page and "of the day&#x27;s bytes quarantined" in page
    assert "earlier days stale (krone status)" in page
    assert f["earlier_days_failed"] == [{"dt": "2026-11-01", "error": "QualityGateError"}]  # in the report's week
    assert rep.summary.splitlines()[2] == ("  earlier days whose score failed for good and that have not scored since: "
                                           "2026-11-01 (QualityGateError) (`krone status` says what to do)")
    assert "earlier days failed for good (krone status)" in page
    assert "<td>sessions_content</td><td class=\"num\">0123456789abc</td>" in page  # a content id, not a count
    assert "files continued from the day before" in page
    assert f["model_versions"] == ["7"] and f["run_ids"] == ["run-1"]
    assert f["anomalies_per_day"]["2026-11-02"]["status"] == 1 and len(f["anomalies_per_day"]) == 7
    assert f["repeat_offenders"] == 2  # session s1 and its status key, flagged on 11-02 and 11-03
    assert page.count("<svg") == 2 and "<script" not in page and "http://" not in page.replace(
        "http://www.w3.org", "")
    for text in ("1,482", "5,120", "run-1", "action|E:disk|A:disk/write", "nested", "s2", "T9"):
        assert text in page
    assert "second &lt;b&gt;plain&lt;/b&gt; line" in page and "gz line one" in page
    assert "gz line two \ufffd\ufffd bytes" in page
    assert "x" * EXCERPT_CHARS + " …" in page and "x" * (EXCERPT_CHARS + 1) not in page
    assert "disk &lt;*&gt; on fire &lt;img src=x&gt;" in page and "disk write failed" not in page
    assert rep.summary.splitlines()[0] == (
        f"syn 2026-11-03: 1,482 sessions, 3 anomalous (status 1, action 1, entity 1); cache hits 5,120, "
        f"LLM calls 0; report: {rep.path}")


def test_log_text_is_escaped(root: Path) -> None:
    page = write_night_report(SRC, DT, data_root=root).path.read_text(encoding="utf-8")
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_missing_raw_file_and_escaping_refs_do_not_crash(root: Path) -> None:
    (root / RAW / "app-1.log").unlink()
    page = write_night_report(SRC, DT, data_root=root).path.read_text(encoding="utf-8")
    assert page.count(NO_FILE) == 3  # two app-1 lines of s1, gone.log of s2
    assert page.count(OUTSIDE) == 1 and "gz line one" in page


def test_empty_day_is_a_valid_page(root: Path) -> None:
    rep = write_night_report(SRC, DT_EMPTY, data_root=root, days=3)
    page = rep.path.read_text(encoding="utf-8")
    assert rep.figures["anomalies"] == 0 and rep.figures["sessions"] is None
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "No anomalies for this day." in page and page.count("<svg") == 1  # the 3-day trend still shows 11-03
    assert "0 anomalous" in rep.summary and "n/a sessions" in rep.summary


def test_a_day_without_anomalies_still_names_the_model_that_scored_it(root: Path) -> None:
    with Warehouse(f"duckdb:///{root / 'warehouse.duckdb'}") as wh:
        wh.write_run_metrics(SRC, DT_EMPTY, "score", "run-2", {"sessions": 10, "anomalies": 0, "model_version": 7.0})
    rep = write_night_report(SRC, DT_EMPTY, data_root=root)
    assert rep.figures["model_versions"] == ["7"] and rep.figures["run_ids"] == ["run-2"]
    assert "model 7" in rep.summary


def test_rerun_overwrites_and_out_is_honoured(root: Path) -> None:
    first = write_night_report(SRC, DT, data_root=root)
    first.path.write_text("an older page", encoding="utf-8")
    again = write_night_report(SRC, DT, data_root=root)
    assert again.path == first.path and "an older page" not in again.path.read_text(encoding="utf-8")
    assert [p.name for p in again.path.parent.iterdir()] == ["night_report.html"]
    out = write_night_report(SRC, DT, data_root=root, out=root / "elsewhere" / "r.html")
    assert out.path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_missing_warehouse_is_unavailable_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(WarehouseUnavailable, match="no such DuckDB file"):
        write_night_report(SRC, DT, data_root=tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        write_night_report("../etc", DT, data_root=tmp_path)


def test_cli_prints_the_summary(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    args = parser.parse_args(["--source", SRC, "--date", DT, "--data-root", str(root), "--days", "5"])
    assert args.func is main_report and main_report(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("syn 2026-11-03: 1,482 sessions, 3 anomalous") and "night_report.html" in out
    assert isinstance(write_night_report(SRC, DT, data_root=root), NightReport)
