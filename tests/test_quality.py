"""Quality gates: good frames pass, each rule catches its own bad frame, counts reconcile, results land on disk."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from krone_jobs.quality import (
    PARSED_COLUMNS,
    REPORT_COLUMNS,
    SESSION_COLUMNS,
    TEMPLATE_ID_PATTERN,
    QualityGateError,
    QualityResult,
    gate,
    validate,
)
from krone_jobs.templates import template_id

T1, T2 = template_id("PacketResponder <*> terminating"), template_id("Receiving block <BLK>")
GOOD_COUNTS = {"raw": 100, "parsed": 97, "quarantined": 3}
TS = pd.Timestamp("2026-11-23 10:00:00")


def parsed_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source": ["hdfs"] * 3,
            "dt": ["2026-11-23"] * 3,
            "file": ["a.log"] * 3,
            "line_no": [1, 2, 3],
            "timestamp": [TS] * 3,
            "level": ["INFO", "INFO", "WARN"],
            "component": ["dfs.DataNode"] * 3,
            "node": [None, "n1", "n2"],  # optional fields may be null
            "content": ["PacketResponder 1 terminating", "Receiving block blk_1", "x"],
            "session_keys": [["blk_1"], ["blk_1"], []],
            "template_id": [T1, T2, T1],
        }
    )


def sessions_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source": ["hdfs"] * 2,
            "dt": ["2026-11-23"] * 2,
            "session_id": ["blk_1", "blk_2"],
            "template_ids": [[T1, T2], [T1]],
            "n_events": [2, 1],
            "first_ts": [TS, TS],
            "last_ts": [TS + pd.Timedelta(minutes=5), TS],  # one-event session: first == last
        }
    )


def reports_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source": ["hdfs"] * 3,
            "dt": ["2026-11-23"] * 3,
            "session_id": ["blk_1", "blk_2", "blk_3"],
            "level": ["status", "action", "entity"],
            "detector": ["local", "nested", "llm"],
            "reason": ["new template", "unseen action sequence", "judged anomalous"],
            "score": [1.0, 0.7, 0.9],
            "model_version": ["3"] * 3,  # the warehouse table carries more columns than the contract
        }
    )


FRAMES: dict[str, Callable[[], pd.DataFrame]] = {
    "parsed": parsed_frame,
    "sessions": sessions_frame,
    "reports": reports_frame,
}


def run(suite: str, frame: Any, **kwargs: Any) -> QualityResult:
    if suite == "parsed":
        kwargs.setdefault("counts", GOOD_COUNTS)
    return validate(frame, suite, run_name="test", **kwargs)


def with_value(column: str, row: int, value: Any) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        df[column] = df[column].astype(object)
        df.at[row, column] = value
        return df

    return mutate


def test_template_id_pattern_matches_real_ids() -> None:
    assert re.fullmatch(TEMPLATE_ID_PATTERN, T1) and not re.fullmatch(TEMPLATE_ID_PATTERN, T1.upper())


@pytest.mark.parametrize("suite", sorted(FRAMES))
def test_good_frame_passes(suite: str) -> None:
    result = run(suite, FRAMES[suite]())
    assert result.success, result.summary
    assert not result.failed and result.evaluated >= 5
    assert "passed all" in result.summary


BAD_CASES = [
    ("parsed", lambda df: df.drop(columns="node"), "expect_table_columns_to_match_set", None, "missing"),
    ("parsed", lambda df: df.assign(extra=1), "expect_table_columns_to_match_set", None, "extra"),
    ("parsed", with_value("source", 0, None), "expect_column_values_to_not_be_null", "source", "1 of 3"),
    ("parsed", with_value("dt", 1, None), "expect_column_values_to_not_be_null", "dt", "1 of 3"),
    ("parsed", with_value("file", 2, None), "expect_column_values_to_not_be_null", "file", "1 of 3"),
    ("parsed", with_value("line_no", 0, None), "expect_column_values_to_not_be_null", "line_no", "1 of 3"),
    ("parsed", with_value("template_id", 0, None), "expect_column_values_to_not_be_null", "template_id", "1 of 3"),
    ("parsed", with_value("template_id", 1, "T12345"), "expect_column_values_to_match_regex", "template_id", "T12345"),
    ("parsed", with_value("line_no", 2, 0), "expect_column_values_to_be_between", "line_no", "[0]"),
    ("sessions", lambda df: df.drop(columns="n_events"), "expect_table_columns_to_match_set", None, "n_events"),
    ("sessions", with_value("session_id", 0, None), "expect_column_values_to_not_be_null", "session_id", "1 of 2"),
    ("sessions", with_value("n_events", 1, 0), "expect_column_values_to_be_between", "n_events", "[0]"),
    (
        "sessions",
        with_value("first_ts", 0, TS + pd.Timedelta(hours=1)),
        "expect_column_pair_values_a_to_be_greater_than_b",
        "last_ts,first_ts",
        "1 of 2",
    ),
    (
        "sessions",
        with_value("session_id", 1, "blk_1"),
        "expect_compound_columns_to_be_unique",
        "source,dt,session_id",
        "blk_1",
    ),
    ("reports", lambda df: df.drop(columns="reason"), "expect_table_columns_to_match_set", None, "reason"),
    ("reports", with_value("level", 0, "kernel"), "expect_column_values_to_be_in_set", "level", "kernel"),
    ("reports", with_value("detector", 1, "cache"), "expect_column_values_to_be_in_set", "detector", "cache"),
    ("reports", with_value("reason", 2, None), "expect_column_values_to_not_be_null", "reason", "1 of 3"),
    ("reports", with_value("score", 0, None), "expect_column_values_to_not_be_null", "score", "1 of 3"),
]


@pytest.mark.parametrize(("suite", "mutate", "expectation", "column", "observed"), BAD_CASES)
def test_each_rule_fails_on_its_bad_frame(
    suite: str, mutate: Callable[[pd.DataFrame], pd.DataFrame], expectation: str, column: str | None, observed: str
) -> None:
    result = run(suite, mutate(FRAMES[suite]()))
    assert not result.success
    hits = [f for f in result.failed if f.expectation == expectation and f.column == column]
    assert hits, result.summary
    assert observed in hits[0].observed
    assert str(hits[0]) in result.summary and "failed" in result.summary


def test_missing_column_fails_its_column_checks_too() -> None:
    """A dropped column is reported by the schema check and, readably, by every rule that needs it."""
    result = run("reports", reports_frame().drop(columns="score"))
    failed = {(f.expectation, f.column): f.observed for f in result.failed}
    assert failed[("expect_column_values_to_not_be_null", "score")].startswith("error:")
    assert '"missing": ["score"]' in failed[("expect_table_columns_to_match_set", None)]


def test_reconciliation_failure_reports_the_counts() -> None:
    result = run("parsed", parsed_frame(), counts={"raw": 100, "parsed": 90, "quarantined": 3})
    assert not result.success
    (check,) = result.failed
    assert (check.expectation, check.column) == ("expect_column_pair_values_to_be_equal", "raw_lines,accounted_lines")
    assert "[[100, 93]]" in check.observed
    assert "raw=100, parsed=90, quarantined=3" in result.summary


def test_quarantine_ratio_above_bound_fails_and_bound_is_configurable() -> None:
    counts = {"raw": 100, "parsed": 90, "quarantined": 10}
    result = run("parsed", parsed_frame(), counts=counts)
    (check,) = result.failed
    assert (check.expectation, check.column) == ("expect_column_values_to_be_between", "quarantine_ratio")
    assert "[0.1]" in check.observed and "max_value=0.05" in check.expected
    assert "[0.1]" in result.summary and "max_value=0.05" in result.summary
    assert run("parsed", parsed_frame(), counts=counts, max_quarantine_ratio=0.2).success


def test_continuation_lines_are_accounted_for_but_not_held_against_the_ratio() -> None:
    counts = {"raw": 100, "parsed": 60, "quarantined": 40, "continuation": 38}  # stack traces under 60 events
    result = run("parsed", parsed_frame(), counts=counts)
    assert result.success, result.summary
    assert not run("parsed", parsed_frame(), counts={**counts, "continuation": 30}).success  # 10 % bad lines
    with pytest.raises(ValueError, match="optionally 'continuation'"):
        run("parsed", parsed_frame(), counts={**counts, "binary": 1})


def test_empty_run_reconciles() -> None:
    empty = parsed_frame().iloc[0:0]
    assert run("parsed", empty, counts={"raw": 0, "parsed": 0, "quarantined": 0}).success


@pytest.mark.parametrize(
    ("suite", "counts"),
    [("nope", None), ("parsed", None), ("sessions", GOOD_COUNTS), ("parsed", {"raw": 1, "parsed": 1})],
)
def test_bad_arguments_are_rejected(suite: str, counts: dict[str, int] | None) -> None:
    with pytest.raises(ValueError):
        validate(parsed_frame(), suite, counts=counts, run_name="test")


def test_gate_raises_with_the_summary_and_passes_good_frames() -> None:
    assert gate(sessions_frame(), "sessions", run_name="ok").success
    with pytest.raises(QualityGateError) as caught:
        gate(with_value("n_events", 0, 0)(sessions_frame()), "sessions", run_name="bad")
    assert str(caught.value) == caught.value.result.summary
    assert "expect_column_values_to_be_between on n_events" in str(caught.value)


def test_result_json_is_written(tmp_path: Path) -> None:
    run_name = "scheduled__2026-11-23T00:00:00+00:00"
    result = validate(
        parsed_frame(), "parsed", counts=GOOD_COUNTS, run_name=run_name, result_dir=tmp_path / "quality"
    )
    assert result.result_path == tmp_path / "quality" / "parsed-scheduled__2026-11-23T00_00_00_00_00.json"
    written = json.loads(result.result_path.read_text())
    assert written["success"] is True and written["counts"] == GOOD_COUNTS
    assert [v["suite_name"] for v in written["validations"]] == ["parsed.pandas", "parsed_counts.pandas"]
    assert all(v["meta"]["run_id"]["run_name"] == run_name for v in written["validations"])
    assert sum(len(v["results"]) for v in written["validations"]) == result.evaluated


def test_columns_contracts_are_what_the_jobs_write() -> None:
    assert list(parsed_frame().columns) == list(PARSED_COLUMNS)
    assert list(sessions_frame().columns) == list(SESSION_COLUMNS)
    assert set(REPORT_COLUMNS) <= set(reports_frame().columns)


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    logging.getLogger("py4j").setLevel(logging.WARNING)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("krone-test-quality")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .getOrCreate()
    )
    yield session
    session.stop()


PARSED_DDL = (
    "source string, dt string, file string, line_no long, timestamp timestamp, level string, component string, "
    "node string, content string, session_keys string, template_id string"
)
"""The parsed contract except ``session_keys``, which a buggy job wrote as a joined string."""


def test_spark_frame_is_checked_with_the_same_rules(spark: Any) -> None:
    """A Spark frame with a bad id, a zero line number and a string instead of array<string> fails exactly
    those three checks, and GX's cache of the frame is released afterwards."""
    ts = TS.to_pydatetime()
    bad = spark.createDataFrame(
        [
            ("hdfs", "2026-11-23", "a.log", 1, ts, "INFO", "dfs.DataNode", None, "PacketResponder 1", "blk_1", T1),
            ("hdfs", "2026-11-23", "a.log", 0, ts, "INFO", "dfs.DataNode", "n1", "Receiving blk_1", "blk_1", "T12345"),
        ],
        PARSED_DDL,
    )
    started = time.perf_counter()
    result = validate(bad, "parsed", counts=GOOD_COUNTS, run_name="spark")
    print(f"spark validation: {time.perf_counter() - started:.1f}s")
    failed = {(f.expectation, f.column) for f in result.failed}
    assert failed == {
        ("expect_column_values_to_match_regex", "template_id"),
        ("expect_column_values_to_be_between", "line_no"),
        ("expect_column_values_to_be_of_type", "session_keys"),
    }, result.summary
    assert '"StringType"' in result.summary and "T12345" in result.summary
    assert not bad.is_cached


def test_spark_validation_does_not_cache_the_frame(spark: Any) -> None:
    """GX's default persist would materialise every column (``content`` included) of a parsed partition
    before checking a few of them; validation caches nothing, and a frame the caller cached stays cached."""
    from krone_jobs import quality

    assert quality._datasource("spark").persist is False
    ts = TS.to_pydatetime()
    rows = [("hdfs", "2026-11-23", "a.log", 1, ts, "INFO", "dfs.DataNode", None, "PacketResponder 1", "blk_1", T1)]
    frame = spark.createDataFrame(rows, PARSED_DDL)
    assert validate(frame, "parsed", counts=GOOD_COUNTS, run_name="nocache").failed  # session_keys is a string
    assert not frame.is_cached
    frame.cache()
    try:
        validate(frame, "parsed", counts=GOOD_COUNTS, run_name="cached")
        assert frame.is_cached
    finally:
        frame.unpersist()
