"""The three DAGs end to end with ``dag.test()`` on two generated days: parse each day, train on both, score
both, then check the warehouse, the MLflow registry and the night report, and that rescoring a day changes
nothing. Everything (data, warehouse, MLflow store) lives in a temporary folder; Airflow's metadata DB is
the test one under ``AIRFLOW_HOME`` (``tests/conftest.py``), migrated once here.

The train/score part skips, with the reason, while the stages it drives have not landed.
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.alert_inbox import AlertInbox

REPO = Path(__file__).resolve().parents[2]
SOURCE = "syn"
DAYS = ("2026-11-01", "2026-11-02")
PARSE_STAGES = ("parse", "sessionize", "hierarchy", "kseqs")
POOLS = {"krone_spark": 2, "krone_llm": 1}
COMING = (("krone_jobs.jobs.train", "train_partitions"), ("krone_jobs.jobs.score", "run_score"),
          ("krone_jobs.report", "write_night_report"))
REPORT_VOLATILE = ("run_id", "created_at")


def missing_stage() -> str | None:
    """Why the train/score DAGs cannot run yet (a stage function they call has not landed), or None."""
    for module, name in COMING:
        try:
            found = hasattr(importlib.import_module(module), name)
        except ImportError as exc:
            return f"{module} does not import yet: {exc}"
        if not found:
            return f"{module}.{name} has not landed yet"
    return None


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Migrate the test metadata DB (idempotent, seconds) and create the pools the DAGs use."""
    out = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    from airflow.models.pool import Pool

    for name, slots in POOLS.items():
        Pool.create_or_update_pool(name, slots, f"krone test pool {name}", include_deferred=False)


@dataclass(frozen=True)
class World:
    root: Path
    mlflow_uri: str
    warehouse_url: str
    dags: dict[str, Any]


@pytest.fixture(scope="module")
def world(airflow_db: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Two generated days and private stores, reached through the ``KRONE_*`` settings the tasks read."""
    from airflow.dag_processing.dagbag import DagBag

    from krone_jobs.synthetic import generate

    logging.getLogger("py4j").setLevel(logging.WARNING)  # it logs at exit, into streams pytest has closed
    tmp = tmp_path_factory.mktemp("dags-e2e")
    root = tmp / "data"
    generate(root, days=2, sessions_per_day=150, seed=7, start_date=DAYS[0], source=SOURCE)
    spark_before = spark_running()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KRONE_SOURCES", f"{SOURCE}:krone")  # dag.test() parses the DAG files again: set throughout
        bag = DagBag(dag_folder=str(REPO / "dags"))
        assert bag.import_errors == {}
        for dag in bag.dags.values():
            for task in dag.tasks:
                task.retries = 0  # a failing task fails the run now instead of waiting out its backoff
        world = World(root, f"sqlite:///{tmp / 'mlflow.db'}", f"duckdb:///{tmp / 'warehouse.duckdb'}", dict(bag.dags))
        mp.setenv("KRONE_DATA_ROOT", str(root))
        mp.setenv("KRONE_MLFLOW_URI", world.mlflow_uri)
        mp.setenv("KRONE_MLFLOW_ARTIFACTS", (tmp / "artifacts").as_uri())
        mp.setenv("KRONE_WAREHOUSE_URL", world.warehouse_url)
        for name in ("KRONE_LLM_BASE_URL", "KRONE_LLM_MODEL", "KRONE_LLM_API_KEY", "OPENAI_API_KEY"):
            mp.delenv(name, raising=False)  # no network: the LLM stays off
        yield world
    if spark_running() and not spark_before:  # the tasks started it; one started by other tests stays theirs
        from pyspark.sql import SparkSession

        SparkSession.builder.getOrCreate().stop()


def spark_running() -> bool:
    from pyspark import SparkContext

    return SparkContext._active_spark_context is not None


def run_dag(world: World, dag_id: str, logical_date: str, conf: dict[str, Any]) -> Any:
    """One ``dag.test()`` run; fails with the failed task ids if the run did not succeed."""
    when = datetime.fromisoformat(logical_date).replace(tzinfo=timezone.utc)
    dr = world.dags[dag_id].test(logical_date=when, run_conf=conf)
    states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
    assert str(dr.state) == "success", f"{dag_id} {logical_date}: {states}"
    return dr


def xcom(dr: Any, task_id: str) -> Any:
    """The return value a task of a finished run pushed."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id,
                                                 key="return_value")).first()
        assert row is not None, f"no XCom from {dr.dag_id}.{task_id}"
        return XComModel.deserialize_value(row)


def asset_extras(dr: Any, asset_name: str) -> list[dict[str, Any]]:
    """Extras of the asset events a run emitted."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    query = (select(AssetEvent.extra).join(AssetModel, AssetModel.id == AssetEvent.asset_id)
             .where(AssetModel.name == asset_name, AssetEvent.source_run_id == dr.run_id))
    with create_session() as session:
        return [dict(e) for e in session.scalars(query)]


def query(world: World, sql: str, **params: Any) -> list[dict[str, Any]]:
    from sqlalchemy import text

    from krone_jobs.warehouse import Warehouse

    with Warehouse(world.warehouse_url) as wh, wh.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql), params)]


def stage_counts(world: World, day: str) -> dict[str, int]:
    rows = query(world, "SELECT stage, COUNT(*) AS n FROM run_metrics WHERE source = :s AND dt = :d GROUP BY stage",
                 s=SOURCE, d=datetime.fromisoformat(day).date())
    return {r["stage"]: int(r["n"]) for r in rows}


def reports(world: World, day: str) -> list[dict[str, Any]]:
    rows = query(world, "SELECT * FROM anomaly_reports WHERE source = :s AND dt = :d ORDER BY session_id",
                 s=SOURCE, d=datetime.fromisoformat(day).date())
    return [{k: v for k, v in r.items() if k not in REPORT_VOLATILE} for r in rows]


@pytest.fixture(scope="module")
def parsed(world: World) -> dict[str, Any]:
    """``krone_parse_syn`` for both days, in date order. Each run's logical date is the midnight after its day:
    a manual run covers the last complete data interval before it, so ``dt`` comes from the interval."""
    return {day: run_dag(world, f"krone_parse_{SOURCE}", next_day(day), {"data_root": str(world.root)})
            for day in DAYS}


def next_day(day: str) -> str:
    from datetime import date, timedelta

    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


def test_parse_dag_writes_each_day_records_metrics_and_announces_it(world: World, parsed: dict[str, Any]) -> None:
    for day, dr in parsed.items():
        for stage in ("parsed", "sessions", "kseqs"):
            assert any((world.root / stage / f"source={SOURCE}" / f"dt={day}").glob("*.parquet")), (stage, day)
        counts = stage_counts(world, day)
        assert all(counts.get(stage, 0) > 0 for stage in PARSE_STAGES), counts
        assert xcom(dr, "parse")["metrics"]["parsed"] > 0
        assert xcom(dr, "parsed_gate")["success"] and xcom(dr, "sessions_gate")["success"]
        assert xcom(dr, "kseqs")["dt"] == day
        assert asset_extras(dr, "krone_kseqs") == [{"source": SOURCE, "dt": day, "data_root": str(world.root)}]
    run_ids = query(world, "SELECT DISTINCT run_id FROM run_metrics WHERE stage = 'parse' ORDER BY run_id")
    assert {r["run_id"] for r in run_ids} == {dr.run_id for dr in parsed.values()}


@pytest.mark.skipif(missing_stage() is not None, reason=str(missing_stage()))
def test_train_then_score_then_rescore_changes_nothing(world: World, parsed: dict[str, Any], alert_inbox: AlertInbox,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from krone_jobs.pipeline import unscored_days

    monkeypatch.setenv("AIRFLOW_CONN_KRONE_ALERTS", alert_inbox.connection())
    early = run_dag(world, "krone_score", DAYS[0], {"source": SOURCE, "dt": DAYS[0]})  # no model yet
    states = {ti.task_id: str(ti.state) for ti in early.get_task_instances()}
    assert states["partition.score"] == "skipped" and states["partition.night_report"] == "skipped", states
    assert xcom(early, "notify") == {"sent": False, "reason": "nothing to send (KRONE_ALERT_DIGEST)", "reports": 0}
    assert unscored_days(SOURCE, data_root=world.root) == list(DAYS)  # what the first champion's run scores

    train = run_dag(world, f"krone_train_{SOURCE}", next_day(DAYS[1]), {
        "end": DAYS[1], "days": 2, "labels": f"labels/{SOURCE}/labels.csv", "min_heldout": 25})
    verdict = xcom(train, "promote")
    assert verdict["promoted"] is True and verdict["gate"]["min_heldout"] == 25  # the gate params reach the gate
    client = MlflowClient(tracking_uri=world.mlflow_uri, registry_uri=world.mlflow_uri)
    champion = client.get_model_version_by_alias(f"krone-{SOURCE}", "champion")
    assert str(champion.version) == str(verdict["model_version"])
    assert stage_counts(world, DAYS[1]).get("train", 0) > 0
    assert_catch_up_reads_the_backlog(world)

    scored = {day: run_dag(world, "krone_score", day, {"source": SOURCE, "dt": day}) for day in (DAYS[1], DAYS[0])}
    for day, dr in scored.items():
        assert xcom(dr, "partitions") == [{"source": SOURCE, "dt": day, "data_root": None, "run_id": dr.run_id}]
        night = xcom(dr, "partition.night_report")
        assert Path(night["path"]).is_file() and night["dt"] == day
        assert stage_counts(world, day).get("score", 0) > 0
        assert asset_extras(dr, "krone_reports") == [{"partitions": [{"source": SOURCE, "dt": day}]}]
    first = reports(world, DAYS[1])
    assert first, "day 2 holds injected anomalies: expected reports"
    digest = next(m for m in alert_inbox.received if m["title"].endswith(f", {SOURCE} {DAYS[1]}"))
    sessions = f"{len(first)} anomalous session{'s' if len(first) > 1 else ''}"
    assert (digest["title"], digest["type"]) == (f"krone: {sessions}, {SOURCE} {DAYS[1]}", "warning")
    assert digest["message"].startswith(f"{SOURCE} {DAYS[1]}: ") and "\n  top: " in digest["message"]
    assert xcom(scored[DAYS[1]], "notify") == {"sent": True, "title": digest["title"], "targets": 1, "reports": 1}
    assert {r["model_version"] for r in first} == {str(champion.version)}
    metrics_before = stage_counts(world, DAYS[1])

    again = run_dag(world, "krone_score", DAYS[1], {"source": SOURCE, "dt": DAYS[1]})
    assert reports(world, DAYS[1]) == first
    assert stage_counts(world, DAYS[1]) == metrics_before
    assert xcom(again, "partition.score")["metrics"]["anomalies"] == len(first)
    assert json.dumps(xcom(again, "partition.reports_gate"))  # the gate's verdict reached XCom
    assert unscored_days(SOURCE, data_root=world.root) == []


def assert_catch_up_reads_the_backlog(world: World) -> None:
    """``krone_score``'s catch-up on real stores, once the source has a champion: a promotion asks for every
    unscored day, a night for those before its own; a warehouse that does not answer costs only the catch-up."""
    from krone_common import Partition, backlog_partitions

    assert backlog_partitions([(SOURCE, None, None)], [], "r") == [Partition(SOURCE, d, None, "r") for d in DAYS]
    named = [Partition(SOURCE, DAYS[1], None, "r")]
    assert backlog_partitions([(SOURCE, None, DAYS[1])], named, "r") == [Partition(SOURCE, DAYS[0], None, "r")]
    assert backlog_partitions([(SOURCE, None, None)], named, "r") == [Partition(SOURCE, DAYS[0], None, "r")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KRONE_WAREHOUSE_URL", "postgresql+psycopg://krone@127.0.0.1:9/nowhere")  # nothing listens
        assert backlog_partitions([(SOURCE, None, None)], [], "r") == []


@pytest.mark.skipif(missing_stage() is not None, reason=str(missing_stage()))
def test_a_damaged_partition_fails_its_score_task_at_once_not_after_retries(
        world: World, parsed: dict[str, Any], alert_inbox: AlertInbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries (2 here, with a 1 s delay) are spent on failures that may pass; a damaged sessions file fails
    the first try, its message in the task's failure and in the alert it sends, which names the day."""
    from datetime import timedelta

    from krone_jobs.partitions import partition_dir
    from krone_jobs.pipeline import has_champion

    if not has_champion(SOURCE):
        pytest.skip("needs the champion test_train_then_score_then_rescore_changes_nothing promotes (run the module)")
    task = world.dags["krone_score"].get_task("partition.score")
    part = sorted(partition_dir(world.root, "sessions", SOURCE, DAYS[0]).glob("*.parquet"))[0]
    intact = part.read_bytes()
    saved = (task.retries, task.retry_delay, task.retry_exponential_backoff)
    monkeypatch.setenv("AIRFLOW_CONN_KRONE_ALERTS", alert_inbox.connection())
    try:
        part.write_bytes(intact[: len(intact) // 2])
        task.retries, task.retry_delay, task.retry_exponential_backoff = 2, timedelta(seconds=1), 0
        dr = world.dags["krone_score"].test(logical_date=datetime(2026, 11, 3, tzinfo=timezone.utc),
                                            run_conf={"source": SOURCE, "dt": DAYS[0]})
    finally:
        part.write_bytes(intact)
        task.retries, task.retry_delay, task.retry_exponential_backoff = saved
    [ti] = [ti for ti in dr.get_task_instances() if ti.task_id == "partition.score"]
    assert (str(dr.state), str(ti.state), ti.try_number) == ("failed", "failed", 1)
    [alert] = alert_inbox.received  # the failure's; the digest has no report and no anomaly to tell
    assert alert["type"] == "failure"
    assert alert["title"] == f"krone: krone_score.partition.score failed, {SOURCE} {DAYS[0]}"
    said, error = alert["message"].splitlines()[:2]
    assert said == f"krone_score.partition.score failed for {SOURCE} {DAYS[0]} (try 1)"
    assert error.startswith("error: AirflowFailException: PartitionMismatch (not retried): "), error
    assert f"run 'krone sessionize --source {SOURCE} --date {DAYS[0]}' again" in error
    assert f"/dags/krone_score/runs/{quote(dr.run_id, safe='')}/tasks/partition.score/mapped/0" in alert["message"]


def test_a_day_whose_logs_do_not_come_fails_at_its_sensor_and_is_never_parsed(
        world: World, parsed: dict[str, Any], alert_inbox: AlertInbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """``raw_ready`` looks again and again (rescheduled, holding no worker slot) and fails the day when its wait
    is over; ``parse`` never runs, where it used to read an empty day and close every session still running. Here
    it looks every second for 3 seconds instead of every 5 minutes for 24 hours. A day due longer ago than that
    (a catch-up over days nobody delivered) fails at its first look, saying why."""
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    task = world.dags[f"krone_parse_{SOURCE}"].get_task("raw_ready")
    assert (task.mode, task.poke_interval, task.timeout) == ("reschedule", 300, 24 * 3600)
    saved = (task.poke_interval, task.timeout, task.depends_on_past)
    runs = {}
    monkeypatch.setenv("KRONE_ALERT_URLS", alert_inbox.url)  # no connection: the environment's targets
    try:  # two runs of their own (logical dates no other test uses); the second does not wait for the first
        task.poke_interval, task.timeout, task.depends_on_past = 1, 3, False
        for n, day in enumerate((datetime.now(timezone.utc).date().isoformat(), "2026-11-04")):  # today; never made
            runs[day] = world.dags[f"krone_parse_{SOURCE}"].test(
                logical_date=datetime(2026, 11, 20 + n, tzinfo=timezone.utc),
                run_conf={"data_root": str(world.root), "dt": day})
    finally:
        task.poke_interval, task.timeout, task.depends_on_past = saved
    looks = []
    for day, dr in runs.items():
        states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
        assert (str(dr.state), states["raw_ready"], states["parse"]) == ("failed", "failed", "upstream_failed"), states
        assert not (world.root / "parsed" / f"source={SOURCE}" / f"dt={day}").exists()
        [sensor] = [ti for ti in dr.get_task_instances() if ti.task_id == "raw_ready"]
        assert sensor.try_number == 1
        with create_session() as session:
            looks.append(session.scalar(select(func.count()).select_from(TaskReschedule)
                                        .where(TaskReschedule.ti_id == sensor.id)))
    assert looks[0] >= 1 and looks[1] == 0  # today's looked again without spending a try; the old day did not
    assert [m["title"] for m in alert_inbox.received] == [f"krone: krone_parse_{SOURCE}.raw_ready failed, {day}"
                                                          for day in runs]
    assert "Not waited for: it was due at" in alert_inbox.received[1]["message"]


def test_a_training_window_whose_last_day_never_came_fails_at_its_sensor(world: World, parsed: dict[str, Any]) -> None:
    """``window_ready`` waits for the window's last day to be sessionized; a day whose logs were due longer ago
    than it waits, and are not there, fails the run at the first look, and nothing is trained."""
    dr = world.dags[f"krone_train_{SOURCE}"].test(logical_date=datetime(2026, 11, 22, tzinfo=timezone.utc),
                                                  run_conf={"end": "2026-11-04", "days": 2})
    states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
    assert (str(dr.state), states["window_ready"], states["train"]) == ("failed", "failed", "upstream_failed"), states
