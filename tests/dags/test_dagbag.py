"""The DAGs (one parse and one train DAG per configured source, one score DAG) load cleanly, follow the operational rules (owners, tags, retries with backoff, pools,
catchup, assets), stay cheap to parse, and work out the partition of a run the way the docs say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.alert_inbox import AlertInbox

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
DAG_FILES = ("krone_parse", "krone_train", "krone_score")
SOURCES = {"syn": "krone", "hdfs": "hdfs"}
PARSE_IDS = tuple(f"krone_parse_{s}" for s in SOURCES)
TRAIN_IDS = tuple(f"krone_train_{s}" for s in SOURCES)
DAG_IDS = (*PARSE_IDS, *TRAIN_IDS, "krone_score")
POOLS = {"default_pool", "krone_spark", "krone_llm"}
HEAVY = ("pyspark", "torch", "mlflow", "great_expectations", "duckdb", "pandas", "pyarrow", "krone_jobs")
SPARK_TASKS = {(d, t) for d in PARSE_IDS for t in ("late_days", "parse", "sessionize", "kseqs")}
LLM_TASKS = {("krone_score", "partition.score")}
MAX_PARSE_SECONDS = 5.0
"""Per file, once airflow is imported (the dag-processor's import timeout is 30 s)."""

if str(DAGS) not in sys.path:
    sys.path.append(str(DAGS))


def load_dags(sources: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KRONE_SOURCES", sources)
        return DagBag(dag_folder=str(DAGS), known_pools=POOLS)


@pytest.fixture(scope="module")
def bag() -> Any:
    return load_dags(", ".join(f"{s}:{f}" for s, f in SOURCES.items()))


def tasks(bag: Any) -> list[tuple[str, Any]]:
    return [(dag_id, t) for dag_id in DAG_IDS for t in bag.dags[dag_id].tasks]


def test_dags_load_without_errors_or_warnings(bag: Any) -> None:
    assert bag.import_errors == {}
    assert set(bag.dags) == set(DAG_IDS)
    assert bag.dag_warnings == set()  # e.g. a pool the DAGs use that is not one of POOLS


def test_each_source_has_its_own_parse_and_train_dag_bound_to_it(bag: Any) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    for source, fmt in SOURCES.items():
        parse, train = bag.dags[f"krone_parse_{source}"], bag.dags[f"krone_train_{source}"]
        for dag in (parse, train):
            assert dag.params["source"] == source
            other = next(s for s in SOURCES if s != source)
            with pytest.raises(ParamValidationError):  # a run of this DAG cannot work on another source's days
                dag.params.get_param("source").resolve(other)
        assert parse.params["format"] == fmt
    assert bag.dags["krone_score"].params["source"] == next(iter(SOURCES))  # manual runs: any source


def test_sources_setting() -> None:
    from krone_common import configured_sources

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("KRONE_SOURCES", raising=False)
        assert configured_sources() == {"synthetic": "krone"}
        mp.setenv("KRONE_SOURCES", " web , tbird:thunderbird,")
        assert configured_sources() == {"web": "krone", "tbird": "thunderbird"}
        for bad, why in (("../x", "not source"), ("a:../f", "not source"), ("a,a:hdfs", "twice"), (" , ", "no source")):
            mp.setenv("KRONE_SOURCES", bad)
            with pytest.raises(ValueError, match=why):
                configured_sources()


def test_a_malformed_sources_setting_is_an_import_error_that_names_it() -> None:
    broken = load_dags("web, ../etc")
    assert {Path(f).name for f in broken.import_errors} == {f"{d}.py" for d in DAG_FILES}
    assert all("KRONE_SOURCES entry '../etc'" in e for e in broken.import_errors.values())


def test_dags_have_owner_tags_docs_and_one_active_run(bag: Any) -> None:
    for dag_id in DAG_IDS:
        dag = bag.dags[dag_id]
        assert dag.owner == "krone"
        assert "krone" in dag.tags and len(dag.tags) >= 2
        assert dag.doc_md and dag_id in dag.doc_md
        assert dag.max_active_runs == 1
        assert {"source", "data_root"} <= set(dag.params)


def test_every_task_retries_with_exponential_backoff(bag: Any) -> None:
    for dag_id, task in tasks(bag):
        assert task.owner == "krone", (dag_id, task.task_id)
        assert task.retries >= 1, (dag_id, task.task_id)
        assert task.retry_exponential_backoff, (dag_id, task.task_id)
        assert task.max_retry_delay is not None, (dag_id, task.task_id)


def test_stage_tasks_fail_at_once_on_what_no_retry_mends(bag: Any) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from krone_common import fail_fast
    from krone_jobs.partitions import PartitionUnreadable
    from krone_jobs.warehouse import WarehouseUnavailable

    stages = {(d, t) for d in PARSE_IDS
              for t in ("late_days", "parse", "sessionize", "hierarchy", "kseqs", "retention")}
    stages |= {(d, "train") for d in TRAIN_IDS} | {("krone_score", "partition.score"),
                                                  ("krone_score", "partition.night_report")}
    wrapped = {(dag_id, t.task_id) for dag_id, t in tasks(bag) if hasattr(t.python_callable, "__wrapped__")}
    assert wrapped == stages

    def failing(error: Exception) -> None:
        raise error

    with pytest.raises(AirflowFailException, match=r"PartitionUnreadable \(not retried\): part-00000.parquet"):
        fail_fast(failing)(PartitionUnreadable("part-00000.parquet is not a readable Parquet file"))
    with pytest.raises(WarehouseUnavailable):  # may pass on a retry: keeps its retries
        fail_fast(failing)(WarehouseUnavailable("warehouse down"))


def test_spark_and_llm_tasks_are_capped_by_their_pools(bag: Any) -> None:
    pools = {(dag_id, t.task_id): t.pool for dag_id, t in tasks(bag)}
    assert {k: pools[k] for k in SPARK_TASKS} == dict.fromkeys(SPARK_TASKS, "krone_spark")
    assert {k: pools[k] for k in LLM_TASKS} == dict.fromkeys(LLM_TASKS, "krone_llm")
    assert all(pool == "default_pool" for k, pool in pools.items() if k not in SPARK_TASKS | LLM_TASKS)


def test_parse_runs_days_in_order_and_catches_up(bag: Any) -> None:
    dag = bag.dags["krone_parse_syn"]
    assert dag.catchup and dag.max_active_runs == 1
    past = {t.task_id: t.depends_on_past for t in dag.tasks}
    assert past.pop("retention") is False  # housekeeping: a failed one never holds up the next day
    assert all(past.values())  # sessionize carries open sessions day to day
    assert [t.task_id for t in dag.topological_sort()] == [
        "raw_ready", "late_days", "parse", "parsed_gate", "sessionize", "sessions_gate", "hierarchy", "kseqs",
        "retention"]
    assert dag.params["format"] == "krone"
    fmt = dag.params.get_param("format")
    assert set(fmt.schema["examples"]) == {"krone", "hdfs", "bgl", "thunderbird"}  # proposals; file formats too
    from airflow.sdk.exceptions import ParamValidationError

    fmt.resolve("myapp")
    with pytest.raises(ParamValidationError):
        fmt.resolve("../etc")
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"  # a run covers [D, D+1), dt = D
    assert dag.timetable.expression == "0 0 * * *" and str(dag.timetable.timezone) == "UTC"


def test_assets_chain_parse_to_score(bag: Any) -> None:
    from krone_common import KSEQS_ASSET, MODEL_ASSET, REPORTS_ASSET

    parse, score, train = (bag.dags[d] for d in ("krone_parse_hdfs", "krone_score", "krone_train_hdfs"))
    assert parse.get_task("kseqs").outlets == [KSEQS_ASSET]
    assert score.timetable.asset_condition == KSEQS_ASSET | MODEL_ASSET  # a first champion scores the days before it
    assert score.get_task("partition.night_report").outlets == [REPORTS_ASSET]
    assert score.get_task("partition.score").max_active_tis_per_dagrun == 1  # one day at a time, oldest first
    assert train.get_task("promote").outlets == [MODEL_ASSET]
    assert not train.catchup and train.timetable.expression == "0 6 * * 1"
    assert [t.task_id for t in train.topological_sort()] == ["window_ready", "train", "promote"]
    assert (train.get_task("window_ready").mode, train.get_task("window_ready").timeout) == ("reschedule", 24 * 3600)


@pytest.mark.parametrize("target", [*(f"dags/{d}.py" for d in DAG_FILES), "krone_jobs.pipeline"])
def test_parsing_imports_nothing_heavy(target: str) -> None:
    """What the dag-processor pays per file: no Spark, torch, MLflow, GX, DuckDB or pandas, and no krone_jobs
    beyond the thin pipeline module (checked in a fresh interpreter, timed there too)."""
    load = f"runpy.run_path({target!r})" if target.endswith(".py") else f"importlib.import_module({target!r})"
    code = (
        "import importlib, json, runpy, sys, time\n"
        "import airflow.sdk\n"
        "t = time.perf_counter()\n"
        f"{load}\n"
        "seconds = time.perf_counter() - t\n"
        f"heavy = sorted({{m for m in sys.modules if m.split('.')[0] in {HEAVY!r}}})\n"
        "print(json.dumps({'seconds': seconds, 'heavy': heavy}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    allowed = {"krone_jobs", "krone_jobs.config", "krone_jobs.pipeline"} if not target.endswith(".py") else set()
    assert set(result["heavy"]) <= allowed, result["heavy"]
    assert result["seconds"] < MAX_PARSE_SECONDS


def test_dagbag_parse_time_per_file_is_small(bag: Any) -> None:
    stats = {Path(s.file).name: s.duration.total_seconds() for s in bag.dagbag_stats}
    assert {f"{d}.py" for d in DAG_FILES} <= set(stats)
    assert max(stats.values()) < MAX_PARSE_SECONDS, stats


# ------------------------------------------------------------------------------------------ partitions
def context(params: dict[str, Any], *, start: datetime | None = None, events: Any = None) -> dict[str, Any]:
    """The context keys the helpers read, as Airflow fills them for one run."""
    run = SimpleNamespace(run_id="scheduled__x", run_after=datetime(2026, 11, 5, 1, tzinfo=timezone.utc))
    base = {"source": "syn", "data_root": None, "dt": None}
    return {"params": {**base, **params}, "data_interval_start": start, "dag_run": run,
            "triggering_asset_events": events}


def test_a_daily_run_covers_its_data_interval_unless_dt_is_given() -> None:
    from krone_common import day_partition

    start = datetime(2026, 11, 2, tzinfo=timezone.utc)
    assert day_partition(context({}, start=start)).dt == "2026-11-02"
    assert day_partition(context({"dt": "2026-10-30"}, start=start)).dt == "2026-10-30"
    assert day_partition(context({})).dt == "2026-11-04"  # manual run without a logical date: yesterday


def test_score_partitions_come_from_asset_events_oldest_first() -> None:
    from krone_common import KSEQS_ASSET, MODEL_ASSET, asset_partitions

    events = {KSEQS_ASSET: [SimpleNamespace(extra={"source": "syn", "dt": d, "data_root": None})
                            for d in ("2026-11-03", "2026-11-02", "2026-11-03")]}
    found = asset_partitions(context({}, events=_Accessor(events)), KSEQS_ASSET)
    assert [(p.source, p.dt) for p in found] == [("syn", "2026-11-02"), ("syn", "2026-11-03")]
    manual = asset_partitions(context({"dt": "2026-11-01"}), KSEQS_ASSET)
    assert [(p.source, p.dt) for p in manual] == [("syn", "2026-11-01")]
    model_only = _Accessor({MODEL_ASSET: [SimpleNamespace(extra={"source": "syn", "end": "2026-11-03"})]})
    assert asset_partitions(context({}, events=model_only), KSEQS_ASSET) == []  # not the run's own day


def test_catching_up_keeps_the_named_days_and_the_oldest_others_within_the_bound() -> None:
    from krone_common import Partition, with_catch_up

    named = [Partition("syn", "2026-11-09")]
    backlog = [Partition("syn", f"2026-11-0{d}") for d in (5, 1, 3, 2, 4)]
    assert [p.dt for p in with_catch_up(named, backlog, 4)] == ["2026-11-09", "2026-11-01", "2026-11-02", "2026-11-03"]
    assert with_catch_up(named * 3, backlog, 2) == named * 3  # the named days always go
    assert len(with_catch_up([], backlog, 10)) == 5


def test_a_promoted_model_names_its_source_for_the_days_to_catch_up() -> None:
    from krone_common import MODEL_ASSET, promoted_sources

    events = _Accessor({MODEL_ASSET: [SimpleNamespace(extra={"source": s, "data_root": r}) for s, r in
                                      (("web", None), ("syn", "/data"), ("web", None))]})
    assert promoted_sources(context({}, events=events)) == [("syn", "/data"), ("web", None)]
    assert promoted_sources(context({})) == []


def test_a_night_catches_up_on_earlier_days_of_its_sources_and_a_promotion_on_all_of_them() -> None:
    from krone_common import KSEQS_ASSET, MODEL_ASSET, catch_up_requests

    def kseqs(source: str, dt: str, root: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(extra={"source": source, "dt": dt, "data_root": root})

    events = _Accessor({KSEQS_ASSET: [kseqs("syn", "2026-11-05"), kseqs("syn", "2026-11-04"),
                                      kseqs("web", "2026-11-05", "/data"), kseqs("db", "2026-11-05")],
                        MODEL_ASSET: [SimpleNamespace(extra={"source": "db", "data_root": None})]})
    assert catch_up_requests(context({}, events=events)) == [
        ("db", None, None),  # just promoted: every day it has not scored
        ("syn", None, "2026-11-04"), ("web", "/data", "2026-11-05"),  # only days before the named ones
    ]
    assert catch_up_requests(context({"dt": "2026-11-05"}, events=events)) == [("db", None, None)]
    assert catch_up_requests(context({})) == []  # a manual run scores its day only


class _Accessor(dict):
    """Indexable by asset, as ``triggering_asset_events`` is."""


def test_connections_become_krone_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from krone_common import export_connections

    for name in ("KRONE_WAREHOUSE_URL", "KRONE_LLM_BASE_URL", "KRONE_LLM_API_KEY", "KRONE_LLM_MODEL"):
        monkeypatch.setenv(name, "")  # recorded first, so what the export sets is undone afterwards
        monkeypatch.delenv(name)
    assert export_connections() == []
    monkeypatch.setenv("AIRFLOW_CONN_KRONE_WAREHOUSE", json.dumps(
        {"conn_type": "postgres", "host": "db", "login": "krone", "password": "s3cret", "port": 5432,
         "schema": "warehouse"}))
    monkeypatch.setenv("AIRFLOW_CONN_KRONE_LLM", json.dumps(
        {"conn_type": "http", "password": "sk-test", "extra": {"base_url": "http://llm:8000/v1", "model": "m"}}))
    assert export_connections() == ["KRONE_WAREHOUSE_URL", "KRONE_LLM_BASE_URL", "KRONE_LLM_API_KEY",
                                    "KRONE_LLM_MODEL"]
    assert os.environ["KRONE_WAREHOUSE_URL"] == "postgresql+psycopg://krone:s3cret@db:5432/warehouse"
    assert (os.environ["KRONE_LLM_BASE_URL"], os.environ["KRONE_LLM_MODEL"]) == ("http://llm:8000/v1", "m")


def test_every_task_alerts_when_it_fails_and_the_score_dag_ends_with_a_digest(bag: Any) -> None:
    from krone_common import alert_failure

    assert all(task.on_failure_callback == [alert_failure] for _, task in tasks(bag))
    score = bag.dags["krone_score"]
    notify = score.get_task("notify")
    assert notify.is_teardown and not notify.on_failure_fail_dagrun  # days that failed or were skipped still
    assert notify.trigger_rule == "all_done_setup_success"  # leave a digest, and the run's state stays theirs
    assert notify.upstream_task_ids == {"partitions", "partition.night_report"}
    labels = {t.task_id: t.map_index_template for t in score.tasks if t.task_id.startswith("partition.")}
    assert labels == dict.fromkeys(("partition.score", "partition.reports_gate", "partition.night_report"),
                                   "{{ krone_partition }}")


def test_every_run_has_a_deadline_whose_miss_is_an_alert(bag: Any, monkeypatch: pytest.MonkeyPatch,
                                                       alert_inbox: AlertInbox, tmp_path: Path) -> None:
    from airflow.sdk import DeadlineReference

    from krone_common import run_deadline, run_overdue

    assert all(dag.deadline is None for dag in bag.dags.values())  # off unless set: dag.test() fails with one
    monkeypatch.setenv("KRONE_RUN_DEADLINE_HOURS", "8")
    deadline = run_deadline()
    assert deadline is not None and deadline.callback.path == "krone_common.run_overdue"
    assert (deadline.reference, deadline.interval) == (DeadlineReference.DAGRUN_QUEUED_AT, timedelta(hours=8))
    monkeypatch.setenv("KRONE_RUN_DEADLINE_HOURS", "0")
    assert run_deadline() is None
    monkeypatch.setenv("KRONE_RUN_DEADLINE_HOURS", "-1")
    with pytest.raises(ValueError, match="KRONE_RUN_DEADLINE_HOURS must lie between 0 and 336"):
        run_deadline()
    monkeypatch.delenv("AIRFLOW_CONN_KRONE_ALERTS", raising=False)
    monkeypatch.setenv("KRONE_ALERT_URLS", alert_inbox.url)
    run = {"dag_id": "krone_parse_web", "dag_run_id": "scheduled__2026-12-06T00:00:00+00:00", "state": "running",
           "queued_at": "2026-12-07T00:00:04Z"}  # what the scheduler hands the callback (DAGRunResponse)
    run_overdue({"dag_run": run, "deadline": {"id": "d1", "deadline_time": "2026-12-07T08:00:04Z"}})
    [alert] = alert_inbox.received
    assert (alert["title"], alert["type"]) == ("krone: krone_parse_web not done by its deadline", "warning")
    assert alert["message"].splitlines()[0] == (
        "krone_parse_web run scheduled__2026-12-06T00:00:00+00:00 is running, queued at 2026-12-07T00:00:04Z, "
        "due by 2026-12-07T08:00:04Z (KRONE_RUN_DEADLINE_HOURS)")
    assert alert["message"].endswith("/dags/krone_parse_web/runs/scheduled__2026-12-06T00%3A00%3A00%2B00%3A00")
    config = tmp_path / "alerts.txt"  # routed by the tags of an Apprise configuration file: not to the pager
    pager = AlertInbox().start()
    try:
        config.write_text(f"failure={pager.url}\ndeadline={alert_inbox.url}\n")
        monkeypatch.delenv("KRONE_ALERT_URLS")
        monkeypatch.setenv("KRONE_ALERT_CONFIG", str(config))
        run_overdue({"dag_run": run, "deadline": {"id": "d1", "deadline_time": "2026-12-07T08:00:04Z"}})
        assert (len(alert_inbox.received), pager.received) == (2, [])
    finally:
        pager.stop()


def test_alert_targets_come_from_the_krone_alerts_connection_before_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from krone_common import alert_targets

    monkeypatch.delenv("AIRFLOW_CONN_KRONE_ALERTS", raising=False)
    monkeypatch.delenv("KRONE_ALERT_URLS", raising=False)
    assert alert_targets() is None
    monkeypatch.setenv("KRONE_ALERT_URLS", "json://127.0.0.1:9/env")
    assert [t.url(privacy=True).split("?")[0] for t in alert_targets()] == ["json://127.0.0.1:9/env"]
    monkeypatch.setenv("AIRFLOW_CONN_KRONE_ALERTS", json.dumps({"conn_type": "apprise", "extra": {"config": [
        {"path": "json://127.0.0.1:9/ops", "tag": "ops"}, {"path": "json://127.0.0.1:9/pager"}]}}))
    assert [t.url(privacy=True).split("?")[0] for t in alert_targets()] == [
        "json://127.0.0.1:9/ops", "json://127.0.0.1:9/pager"]


def test_numeric_metrics_flatten_and_drop_non_numbers() -> None:
    from krone_jobs.pipeline import numeric_metrics

    got = numeric_metrics({"parsed": 3, "ok": True, "path": "/x", "steps": {"pass1": 0.5}, "nan": float("nan"),
                           "ids": [1, 2]})
    assert got == {"parsed": 3.0, "ok": 1.0, "steps.pass1": 0.5}
