"""Warehouse behaviour, every test on DuckDB (a tmp file) and on the real PostgreSQL (a schema per test).

PostgreSQL comes from ``KRONE_TEST_PG_URL`` (default: the local test server). When it does not answer the
PostgreSQL cases skip, except under ``CI=true``, where a missing database must not pass silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, exc, make_url, text
from sqlalchemy.schema import CreateSchema, DropSchema

from krone_jobs.hierarchy.model import make_node
from krone_jobs.logformats import MAX_SESSION_KEY_CHARS, bounded_session_key
from krone_jobs.warehouse import CONNECT_TIMEOUT_S, Warehouse, WarehouseUnavailable

PG_URL = os.environ.get("KRONE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
HOSTILE = "x'); DROP TABLE anomaly_reports; --"
TABLES = ("templates", "hierarchy", "kseq_cache", "anomaly_reports", "run_metrics", "feedback", "score_failures")
VIEWS = (
    "v_anomalies_per_day", "v_top_anomalous_nodes", "v_new_templates_per_day", "v_repeat_offenders",
    "v_llm_spend_per_day", "v_daily_pipeline",
)
D1, D2 = date(2024, 5, 1), date(2024, 5, 2)
STATUS_KEY = "status|A:disk/write|S:disk/write/failed#T1"


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        engine.connect().close()
    except exc.DBAPIError as e:
        engine.dispose()
        reason = f"PostgreSQL not reachable at {make_url(PG_URL).render_as_string()}: {e.orig}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the warehouse tests on PostgreSQL. {reason}")
        pytest.skip(reason)
    yield engine
    engine.dispose()


@pytest.fixture(params=["duckdb", "postgresql"])
def wh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    if request.param == "duckdb":
        warehouse = Warehouse(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
        warehouse.ensure_schema()
        yield warehouse
        warehouse.close()
        return
    admin: Engine = request.getfixturevalue("pg_admin")
    schema = f"krone_test_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(CreateSchema(schema))
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    warehouse = Warehouse(url.render_as_string(hide_password=False))
    try:
        warehouse.ensure_schema()
        yield warehouse
    finally:
        warehouse.close()
        with admin.begin() as conn:
            conn.execute(DropSchema(schema, cascade=True))


def query(wh: Warehouse, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with wh.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def report(session_id: str, level: str = "status", kseq_key: str = STATUS_KEY, **extra: Any) -> dict[str, Any]:
    return {
        "session_id": session_id, "level": level, "chunk_index": 0, "kseq_key": kseq_key,
        "segment_template_ids": ["T1", "T2"], "line_refs": ["a.log:1", "a.log:2"], "detector": "local",
        "score": 0.9, "reason": "unseen status sequence", "model_version": "3", **extra,
    }


def verdict(cache_key: str, **extra: Any) -> dict[str, Any]:
    return {"cache_key": cache_key, "level": "status", "kseq_key": STATUS_KEY, "verdict": True, "score": 0.8,
            "detector": "nested", "reason": None, **extra}


def test_ensure_schema_twice_is_fine(wh: Warehouse) -> None:
    wh.ensure_schema()
    for name in TABLES + VIEWS:
        assert query(wh, f"SELECT COUNT(*) FROM {name}") == [(0,)]


def test_replace_partition_twice_leaves_the_same_rows(wh: Warehouse) -> None:
    batch = [report("s1"), report("s2"), report("s3")]
    wh.write_reports("hdfs", D2, "run-0", [report("other-day")])
    assert wh.write_reports("hdfs", "2024-05-01", "run-1", batch) == 3
    first = query(wh, "SELECT session_id, run_id, segment_template_ids, line_refs FROM anomaly_reports "
                      "WHERE dt = :dt ORDER BY session_id", dt=D1)
    wh.write_reports("hdfs", D1, "run-1", batch)
    assert query(wh, "SELECT session_id, run_id, segment_template_ids, line_refs FROM anomaly_reports "
                     "WHERE dt = :dt ORDER BY session_id", dt=D1) == first
    assert [r[0] for r in first] == ["s1", "s2", "s3"]
    assert json.loads(first[0][2]) == ["T1", "T2"] and json.loads(first[0][3]) == ["a.log:1", "a.log:2"]
    assert query(wh, "SELECT session_id FROM anomaly_reports WHERE dt = :dt", dt=D2) == [("other-day",)]
    (created,) = query(wh, "SELECT MIN(created_at) FROM anomaly_reports WHERE dt = :dt", dt=D1)[0]
    assert created.utcoffset() is not None
    assert abs(created - datetime.now(timezone.utc)) < timedelta(minutes=1)


def test_rerun_with_fewer_rows_replaces_and_empty_clears(wh: Warehouse) -> None:
    wh.write_reports("hdfs", D1, "run-1", [report("s1"), report("s2")])
    wh.write_reports("hdfs", D1, "run-2", [report("s9")])
    assert query(wh, "SELECT session_id, run_id FROM anomaly_reports") == [("s9", "run-2")]
    assert wh.write_reports("hdfs", D1, "run-3", []) == 0
    assert query(wh, "SELECT COUNT(*) FROM anomaly_reports") == [(0,)]


def test_failure_inside_the_transaction_keeps_the_previous_rows(wh: Warehouse) -> None:
    wh.write_reports("hdfs", D1, "run-1", [report("s1"), report("s2")])
    bad = [report("n1"), report("n2", reason=None), report("n3")]  # NOT NULL violated mid-batch
    with pytest.raises(exc.IntegrityError):
        wh.write_reports("hdfs", D1, "run-2", bad)
    assert query(wh, "SELECT session_id, run_id FROM anomaly_reports ORDER BY session_id") == [
        ("s1", "run-1"), ("s2", "run-1")]
    wh.write_reports("hdfs", D1, "run-3", [report("s3")])  # the connection is usable afterwards
    assert query(wh, "SELECT session_id FROM anomaly_reports") == [("s3",)]


def test_score_output_is_one_transaction(wh: Warehouse) -> None:
    """Reports, cache and metrics land together or not at all (the score job's write)."""
    wh.write_score("hdfs", D1, "run-1", model_version="1", reports=[report("s1")], cache=[verdict("k1")],
                   metrics={"sessions": 10})
    bad_cache = [verdict("k2"), verdict("k3", level="bogus")]  # CHECK violated after the reports went in
    with pytest.raises(exc.IntegrityError):
        wh.write_score("hdfs", D1, "run-2", model_version="1", reports=[report("s2")], cache=bad_cache,
                       metrics={"sessions": 20})
    assert query(wh, "SELECT session_id, run_id FROM anomaly_reports") == [("s1", "run-1")]
    assert query(wh, "SELECT cache_key FROM kseq_cache") == [("k1",)]
    assert query(wh, "SELECT value FROM run_metrics WHERE stage = 'score'") == [(10.0,)]


def test_a_score_failure_counts_attempts_and_a_successful_score_of_the_day_removes_it(wh: Warehouse) -> None:
    wh.record_score_failure("hdfs", D1, run_id="run-1", error="QualityGateError", message="first", inputs="a")
    wh.record_score_failure("hdfs", D2, run_id="run-2", error="PartitionUnreadable", message=HOSTILE, inputs="b")
    wh.record_score_failure("hdfs", D1, run_id="run-3", error="PartitionUnreadable", message="again", inputs="c")
    first, second = wh.score_failures("hdfs")
    assert (first["dt"], first["run_id"], first["error"], first["message"], first["inputs"], first["attempts"]) == (
        D1.isoformat(), "run-3", "PartitionUnreadable", "again", "c", 2)
    assert first["first_failed_at"] < first["failed_at"]  # the first failure's time stays
    assert (second["dt"], second["message"], second["attempts"]) == (D2.isoformat(), HOSTILE, 1)
    assert wh.score_failures("other") == []
    wh.write_score("hdfs", D1, "run-4", model_version="1", reports=[], cache=[], metrics={"sessions": 1})
    assert [f["dt"] for f in wh.score_failures("hdfs")] == [D2.isoformat()]


def test_run_metrics_replace_one_stage_only(wh: Warehouse) -> None:
    wh.write_run_metrics("hdfs", D1, "parse", "run-1", {"raw_lines": 100, "quarantined": 2})
    wh.write_run_metrics("hdfs", D1, "score", "run-1", {"llm_calls": 2, "llm_tokens": 300})
    wh.write_run_metrics("hdfs", D1, "score", "run-2", {"llm_calls": 3})
    assert query(wh, "SELECT stage, metric, value, run_id FROM run_metrics ORDER BY stage, metric") == [
        ("parse", "quarantined", 2.0, "run-1"), ("parse", "raw_lines", 100.0, "run-1"),
        ("score", "llm_calls", 3.0, "run-2")]
    assert wh.stage_days("hdfs", "score") == {D1.isoformat()} and wh.stage_days("hdfs", "train") == set()
    assert wh.stage_days("other", "parse") == set()
    wh.write_run_metrics("hdfs", D2, "score", "run-3", {"sessions_content": float(2**52 - 1)})  # exact in a double
    assert wh.stage_metric("hdfs", "score", "sessions_content") == {D2.isoformat(): float(2**52 - 1)}
    assert wh.stage_metric("hdfs", "score", "llm_calls") == {D1.isoformat(): 3.0}


def test_replace_partition_only_takes_partitioned_tables(wh: Warehouse) -> None:
    for name in ("templates", HOSTILE):
        with pytest.raises(ValueError, match="not a partitioned table"):
            wh.replace_partition(name, "hdfs", D1, [])


def test_cache_upsert_counts_hits_and_loads_in_one_query(wh: Warehouse) -> None:
    wh.update_cache("hdfs", "3", [verdict("a"), verdict("b", verdict=False)])
    before = wh.load_cache("hdfs", "3")["a"]
    wh.update_cache("hdfs", "3", [verdict("a"), verdict("a", hits=2, score=0.95)])
    statements: list[str] = []
    event.listen(wh.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    cache = wh.load_cache("hdfs", "3")
    assert len(statements) == 1
    assert cache["a"]["hits"] == 4 and cache["a"]["score"] == 0.95 and cache["a"]["verdict"] is True
    assert cache["a"]["first_seen"] == before["first_seen"] and cache["a"]["last_seen"] >= before["last_seen"]
    assert cache["b"]["hits"] == 1 and cache["b"]["verdict"] is False
    assert wh.load_cache("hdfs", "4") == {} and wh.load_cache("bgl", "3") == {}


def test_hostile_strings_are_stored_verbatim(wh: Warehouse) -> None:
    wh.write_reports(HOSTILE, D1, HOSTILE, [report(HOSTILE, kseq_key=HOSTILE, reason=HOSTILE)])
    wh.write_run_metrics(HOSTILE, D1, HOSTILE, HOSTILE, {HOSTILE: 1})
    wh.update_cache(HOSTILE, HOSTILE, [verdict(HOSTILE, reason=HOSTILE)])
    wh.upsert_templates(HOSTILE, [{"template_id": HOSTILE, "template": HOSTILE, "first_seen_dt": D1,
                                   "last_seen_dt": D1, "count": 1}])
    wh.record_feedback(HOSTILE, HOSTILE, "normal", author=HOSTILE, kseq_key=HOSTILE, note=HOSTILE)
    assert query(wh, "SELECT source, session_id, kseq_key, reason, run_id FROM anomaly_reports") == [(HOSTILE,) * 5]
    assert query(wh, "SELECT stage, metric FROM run_metrics") == [(HOSTILE, HOSTILE)]
    assert query(wh, "SELECT template_id, template FROM templates") == [(HOSTILE, HOSTILE)]
    assert list(wh.load_cache(HOSTILE, HOSTILE)) == [HOSTILE]
    assert wh.normal_feedback(HOSTILE) == {HOSTILE: HOSTILE}
    assert query(wh, "SELECT note, author FROM feedback") == [(HOSTILE, HOSTILE)]


def test_the_longest_session_id_the_parse_stage_makes_fits_the_report_key(wh: Warehouse) -> None:
    """A bounded session key of 4-byte characters, plus the ``@<epoch>`` of a cut session, is still a valid
    primary-key value (PostgreSQL's btree refuses entries over 2,704 bytes; an unbounded key did fail)."""
    longest = bounded_session_key("\U0001F600" * (MAX_SESSION_KEY_CHARS + 1)) + "@1731537600"
    wh.write_reports("hdfs", D1, "r1", [report(longest)])
    assert query(wh, "SELECT session_id FROM anomaly_reports") == [(longest,)]


def test_templates_upsert_widens_dates_and_takes_the_running_count(wh: Warehouse) -> None:
    def template(tid: str, first: date, last: date, count: int) -> dict[str, Any]:
        return {"template_id": tid, "template": f"block <*> {tid}", "first_seen_dt": first, "last_seen_dt": last,
                "count": count}

    wh.upsert_templates("hdfs", [template("T1", D2, D2, 5), template("T2", D2, D2, 1)])
    wh.upsert_templates("hdfs", [template("T1", D1, D1, 7)])  # a backfill of the day before
    assert query(wh, "SELECT template_id, first_seen_dt, last_seen_dt, count FROM templates ORDER BY 1") == [
        ("T1", D1, D2, 7), ("T2", D2, D2, 1)]
    assert query(wh, "SELECT source, dt, new_templates FROM v_new_templates_per_day ORDER BY dt") == [
        ("hdfs", D1, 1), ("hdfs", D2, 1)]


def test_hierarchy_upsert_latest_write_wins(wh: Warehouse) -> None:
    wh.upsert_hierarchy("hdfs", [make_node("T1", "disk write failed", "disk", "write", "failed", "offline").as_row()])
    wh.upsert_hierarchy("hdfs", [make_node("T1", "disk write failed", "disk", "flush", "failed", "override").as_row()])
    rows = query(wh, "SELECT template_id, action, action_node, origin, version, updated_at FROM hierarchy")
    assert [r[:5] for r in rows] == [("T1", "flush", "A:disk/flush", "override", 1)]
    assert rows[0][5].utcoffset() is not None


def test_feedback_newest_verdict_counts(wh: Warehouse) -> None:
    wh.record_feedback("hdfs", "k1", "normal", author="ops")
    wh.record_feedback("hdfs", "k2", "normal", author="ops", note="known maintenance")
    time.sleep(0.01)  # distinct created_at for "newest"
    wh.record_feedback("hdfs", "k2", "anomalous", author="lead", note="no, it was a real outage")
    wh.record_feedback("bgl", "k3", "normal", author="ops")
    assert set(wh.normal_feedback("hdfs")) == {"k1"}
    with pytest.raises(ValueError, match="verdict must be one of"):
        wh.record_feedback("hdfs", "k4", "fine", author="ops")


def test_views_answer_the_operators_questions(wh: Warehouse) -> None:
    wh.upsert_hierarchy("hdfs", [make_node("T1", "disk write failed", "disk", "write", "failed", "offline").as_row()])
    wh.write_reports("hdfs", D1, "run-1", [
        report("s1"),
        report("s2", level="action", kseq_key="action|E:disk|A:disk/write"),
        report("s3", level="entity", kseq_key="entity||E:disk,E:net", score=0.5),
    ])
    wh.write_reports("hdfs", D2, "run-2", [report("s1"), report("s4", kseq_key="status|A:net/send|S:net/send/ok#T9")])
    wh.write_run_metrics("hdfs", D1, "score", "run-1", {"llm_calls": 2, "llm_tokens": 300, "sessions": 50})
    wh.write_run_metrics("hdfs", D1, "hierarchy", "run-1", {"llm_calls": 1, "llm_tokens": 50})

    assert query(wh, "SELECT dt, level, anomalies, max_score FROM v_anomalies_per_day ORDER BY dt, level") == [
        (D1, "action", 1, 0.9), (D1, "entity", 1, 0.5), (D1, "status", 1, 0.9), (D2, "status", 2, 0.9)]
    assert query(wh, "SELECT node_kind, node, entity, action, anomalies, days, first_dt, last_dt, anomaly_rank "
                     "FROM v_top_anomalous_nodes ORDER BY node_kind, anomaly_rank") == [
        ("action", "A:disk/write", "disk", "write", 2, 2, D1, D2, 1),
        ("action", "A:net/send", None, None, 1, 1, D2, D2, 2),
        ("entity", "E:disk", "disk", None, 1, 1, D1, D1, 1)]
    assert query(wh, "SELECT kind, subject, days, reports, first_dt, last_dt FROM v_repeat_offenders "
                     "ORDER BY kind") == [("kseq", STATUS_KEY, 2, 2, D1, D2), ("session", "s1", 2, 2, D1, D2)]
    assert query(wh, "SELECT source, dt, llm_calls, llm_tokens FROM v_llm_spend_per_day") == [
        ("hdfs", D1, 3.0, 350.0)]


def test_the_daily_pipeline_view_shows_each_night_and_the_days_not_scored(wh: Warehouse) -> None:
    for dt in (D1, D2):
        wh.write_run_metrics("hdfs", dt, "parse", "p", {"raw_lines": 1000, "quarantined": 10, "new_templates": 2,
                                                       "seconds": 4.0, "stale_earlier_days": int(dt == D2)})
        wh.write_run_metrics("hdfs", dt, "sessionize", "p", {"sessions": 90, "open_sessions": 5, "seconds": 1.0})
        wh.write_run_metrics("hdfs", dt, "kseqs", "p", {"chunks": 700, "seconds": 0.5})
    wh.write_run_metrics("hdfs", D1, "score", "s", {"sessions": 90, "anomalies": 9, "routed_sessions": 12,
                                                     "llm_calls": 1, "model_version": 3, "seconds": 2.0})
    wh.write_run_metrics("hdfs", D2, "train", "t", {"n_train_sessions": 180})  # not a night's stage
    wh.record_score_failure("hdfs", D2, run_id="s2", error="QualityGateError", message="reports gate", inputs="i")
    wh.record_score_failure("other", D1, run_id="s3", error="PartitionMismatch", message="a file", inputs="i")
    rows = query(wh, "SELECT dt, raw_lines, quarantine_ratio, sessions_closed, kseqs, kseqs_written, scored, "
                     "anomalies, anomaly_rate, model_version, parse_seconds, score_seconds, earlier_days_stale, "
                     "score_failure FROM v_daily_pipeline WHERE source = 'hdfs' ORDER BY dt")
    assert rows == [(D1, 1000.0, 0.01, 90.0, 700.0, True, True, 9.0, 0.1, 3.0, 5.5, 2.0, 0.0, None),
                    (D2, 1000.0, 0.01, 90.0, 700.0, True, False, None, None, None, 5.5, None, 1.0, "QualityGateError")]


def test_unreachable_postgres_raises_quickly_without_the_password() -> None:
    wh = Warehouse("postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test")
    start = time.monotonic()
    with pytest.raises(WarehouseUnavailable) as err:
        wh.ensure_schema()
    assert time.monotonic() - start < CONNECT_TIMEOUT_S + 2
    assert "127.0.0.1:1/test" in str(err.value) and "s3cret" not in str(err.value)


def test_unreadable_duckdb_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    path.write_bytes(b"not a database" * 1000)
    with pytest.raises(WarehouseUnavailable, match="warehouse.duckdb"):
        Warehouse(f"duckdb:///{path}").ensure_schema()


def _hold_duckdb(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process that opens the DuckDB file (taking its lock) and keeps it ``seconds``; returns once held."""
    code = ("import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
            "time.sleep(float(sys.argv[2])); c.close()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_duckdb_file_another_process_holds_is_waited_for_then_written(tmp_path: Path) -> None:
    """DAG tasks of different runs are different processes: a write that finds the file held waits, and the
    file is free again as soon as a transaction ends (no pooled connection keeps it)."""
    path = tmp_path / "warehouse.duckdb"
    with Warehouse(f"duckdb:///{path}") as wh:
        wh.ensure_schema()
        holder = _hold_duckdb(path, 2.0)
        start = time.monotonic()
        wh.write_run_metrics("hdfs", D1, "parse", "r", {"raw_lines": 5})  # waits for the holder to let go
        assert time.monotonic() - start > 1.0
        assert holder.wait(timeout=10) == 0
        other = _hold_duckdb(path, 0.0)  # this process holds nothing between transactions
        assert other.wait(timeout=10) == 0
    with pytest.raises(WarehouseUnavailable, match="lock"):
        holder = _hold_duckdb(path, 5.0)
        try:
            Warehouse(f"duckdb:///{path}", lock_wait_s=0.5).ensure_schema()
        finally:
            holder.kill()
            holder.wait()


def test_default_url_is_a_duckdb_file_under_the_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KRONE_WAREHOUSE_URL", raising=False)
    monkeypatch.setenv("KRONE_DATA_ROOT", str(tmp_path / "data"))
    with Warehouse() as wh:
        assert wh.url == f"duckdb:///{tmp_path / 'data' / 'warehouse.duckdb'}"
        wh.ensure_schema()
    assert (tmp_path / "data" / "warehouse.duckdb").is_file()


def test_failed_upsert_keeps_the_cache_and_leaves_no_stage_behind(wh: Warehouse) -> None:
    wh.update_cache("hdfs", "3", [verdict("a")])
    with pytest.raises(exc.IntegrityError):
        wh.update_cache("hdfs", "3", [verdict("a"), verdict("b", verdict=None)])
    assert {k: v["hits"] for k, v in wh.load_cache("hdfs", "3").items()} == {"a": 1}
    wh.update_cache("hdfs", "3", [verdict("b")])
    assert {k: v["hits"] for k, v in wh.load_cache("hdfs", "3").items()} == {"a": 1, "b": 1}
