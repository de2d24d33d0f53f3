"""The score stage on the shared two-day pipeline run: a champion trained on day 1 scores day 2 into a
throw-away DuckDB warehouse; reruns, the cache, feedback, a down warehouse and the LLM path."""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
import socket
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from krone_jobs import pipeline as pipeline_api
from krone_jobs.cli import main
from krone_jobs.feedback import record_feedback
from krone_jobs.jobs.hierarchy_job import load_hierarchy
from krone_jobs.jobs.score import ScoreMetrics, run_score
from krone_jobs.jobs.sessionize import run_sessionize
from krone_jobs.jobs.train import train
from krone_jobs.miner_state import latest_templates
from krone_jobs.model_registry import ModelUnloadable
from krone_jobs.partitions import PartitionUnreadable, partition_dir
from krone_jobs.status import source_status
from krone_jobs.warehouse import Warehouse, WarehouseUnavailable
from tests.jobs.conftest import Pipeline
from tests.llm.fake_server import FakeLLM

SOURCE = "syn"
DAYS = ("2026-11-01", "2026-11-02")
STABLE = ("session_id, level, chunk_index, kseq_key, cache_key, segment_template_ids, line_refs, detector, score, "
          "reason, model_version")


@pytest.fixture(scope="module")
def champion(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Train ``krone-syn`` on day 1's normal sessions (labels from the generator) in a private MLflow store."""
    home = tmp_path_factory.mktemp("score")
    root = pipeline.root
    labels = {r["session_id"]: r["label"] for r in csv.DictReader(open(root / "labels" / SOURCE / "labels.csv"))}
    store = latest_templates(root, SOURCE, DAYS[0])
    assert store is not None
    table = pq.read_table(partition_dir(root, "sessions", SOURCE, DAYS[0])).to_pydict()
    sessions = [[store.resolve(t) for t in tids] for sid, tids in zip(table["session_id"], table["template_ids"])
                if labels.get(sid) == "0"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KRONE_MLFLOW_URI", f"sqlite:///{home / 'mlflow.db'}")
        mp.setenv("KRONE_MLFLOW_ARTIFACTS", (home / "artifacts").as_uri())
        train(SOURCE, sessions, {t.template_id: t.template for t in store.templates()},
              hierarchy=load_hierarchy(root, SOURCE), miner_state=store.to_json(), fp_bound=1.0, min_heldout=0)
        yield home


@pytest.fixture()
def warehouse(champion: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    monkeypatch.setenv("KRONE_WAREHOUSE_URL", url)
    monkeypatch.setenv("KRONE_MLFLOW_URI", f"sqlite:///{champion / 'mlflow.db'}")
    for var in ("KRONE_LLM_BASE_URL", "KRONE_LLM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    return url


def score(pipeline: Pipeline, spark: Any, **kwargs: Any) -> ScoreMetrics:
    return run_score(SOURCE, DAYS[1], data_root=pipeline.root, spark=spark, **kwargs)


def rows(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    wh = Warehouse(url)
    try:
        with wh.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        wh.close()


def raw_line(root: Path, ref: str) -> str:
    file, _, line_no = ref.rpartition(":")
    path = root / file
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:  # type: ignore[operator]
        for i, line in enumerate(fh, 1):
            if i == int(line_no):
                return line
    raise AssertionError(f"{ref}: no such line")


def test_score_writes_reports_and_a_rerun_leaves_the_same_rows(pipeline: Pipeline, spark: Any, warehouse: str) -> None:
    first = score(pipeline, spark, engine="spark")
    reports = rows(warehouse, f"SELECT {STABLE} FROM anomaly_reports ORDER BY session_id")
    assert first.sessions == pipeline.sessionize[DAYS[1]].sessions and first.anomalies == len(reports) > 0
    assert first.routed_sessions > 0 and first.new_cache_entries > 0 and first.llm_calls == 0
    for r in reports:
        level, kseq_key, line_refs = r[1], r[3], json.loads(r[6])
        assert kseq_key.startswith(f"{level}|") and r[10] == first.model_version
        assert len(line_refs) == len(json.loads(r[5])) > 0
        assert "job_" in raw_line(pipeline.root, line_refs[0])  # points back at the raw line of the session
    labels = {r["session_id"]: r["label"] for r in csv.DictReader(open(pipeline.root / "labels" / SOURCE / "labels.csv"))}
    assert any(labels.get(r[0]) == "1" for r in reports)  # injected anomalies are found (one small day of training)

    second = score(pipeline, spark, engine="local")  # the same walk in this process: the same rows
    assert rows(warehouse, f"SELECT {STABLE} FROM anomaly_reports ORDER BY session_id") == reports
    assert second.routed_sessions == second.unknown_template_sessions  # warm: only new templates go to the model
    assert second.cache_hits >= first.new_cache_entries and second.new_cache_entries == 0
    metrics = dict(rows(warehouse, "SELECT metric, value FROM run_metrics WHERE stage = 'score'"))
    assert metrics["sessions"] == second.sessions and metrics["cache_hits"] == second.cache_hits
    assert rows(warehouse, "SELECT COUNT(DISTINCT run_id) FROM anomaly_reports") == [(1,)]


def test_a_chunk_marked_normal_is_never_reported_again(pipeline: Pipeline, spark: Any, warehouse: str) -> None:
    score(pipeline, spark)
    flagged = rows(warehouse, "SELECT kseq_key, COUNT(*) FROM anomaly_reports WHERE cache_key IS NOT NULL "
                              "GROUP BY kseq_key ORDER BY 2 DESC, 1")
    assert flagged, "nothing to give feedback on"
    key = flagged[0][0]
    recorded = record_feedback(SOURCE, key, "normal", note="known maintenance job", author="ops")
    assert recorded and all(k == key for _, k in recorded)
    after = score(pipeline, spark)
    assert rows(warehouse, "SELECT COUNT(*) FROM anomaly_reports WHERE kseq_key = :k", k=key) == [(0,)]
    assert after.feedback_normal_keys == 1
    assert rows(warehouse, "SELECT author, note FROM feedback") == [("ops", "known maintenance job")] * len(recorded)
    with pytest.raises(LookupError):
        record_feedback(SOURCE, "status|no|such", "normal")


def test_warehouse_down_fails_clearly_and_writes_nothing(pipeline: Pipeline, spark: Any, warehouse: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = f"postgresql+psycopg://krone:secret@127.0.0.1:{port}/krone"
    with pytest.raises(WarehouseUnavailable, match="unavailable") as err:
        score(pipeline, spark, warehouse_url=down)
    assert "secret" not in str(err.value)
    assert score(pipeline, spark).anomalies > 0  # the next run (warehouse back) succeeds


def test_a_damaged_sessions_file_is_named_and_writing_it_again_as_told_restores_the_day(
        pipeline: Pipeline, spark: Any, warehouse: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(pipeline.root, root)
    part = sorted(partition_dir(root, "sessions", SOURCE, DAYS[1]).glob("*.parquet"))[0]
    written = part.stat().st_size
    part.write_bytes(part.read_bytes()[: written // 2])  # a restore that stopped half-way
    cut_short = (f"{part.parent} is not the partition that was written: {part.name} is {written // 2:,} bytes where "
                 f"{written:,} were written")
    with pytest.raises(PartitionUnreadable, match=re.escape(cut_short)) as err:
        run_score(SOURCE, DAYS[1], data_root=root, spark=spark)
    assert f"krone sessionize --source {SOURCE} --date {DAYS[1]}" in str(err.value)
    assert rows(warehouse, "SELECT COUNT(*) FROM run_metrics WHERE stage = 'score'") == [(0,)]
    assert rows(warehouse, "SELECT dt, error, attempts FROM score_failures") == [
        (date.fromisoformat(DAYS[1]), "PartitionMismatch", 1)]

    # the catch-up sets the day aside instead of failing on it every night; `krone status` says why and what to do
    assert pipeline_api.backlog(SOURCE, data_root=root) == [DAYS[0]]
    assert pipeline_api.backlog(SOURCE, data_root=root, retry_failed=True) == list(DAYS)
    damaged, problem = source_status(root, SOURCE)["problems"]
    assert damaged.startswith(cut_short)
    assert problem.startswith(f"the score of {DAYS[1]} failed for good (1 time(s), last ")
    assert ": PartitionMismatch: as above. " in problem  # not the long message twice
    assert problem.endswith(f"after mending it: `krone score --source {SOURCE} --date {DAYS[1]}`")

    run_sessionize(SOURCE, DAYS[1], data_root=root, spark=spark)  # what the message says to do
    assert pipeline_api.backlog(SOURCE, data_root=root) == list(DAYS)  # its sessions changed: taken up again
    assert run_score(SOURCE, DAYS[1], data_root=root, spark=spark).anomalies == score(pipeline, spark).anomalies
    assert rows(warehouse, "SELECT COUNT(*) FROM score_failures") == [(0,)]


def test_unscored_days_go_on_past_a_day_that_fails_for_good_which_is_then_set_aside(
        pipeline: Pipeline, warehouse: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    shutil.copytree(pipeline.root, root)
    first = sorted(partition_dir(root, "sessions", SOURCE, DAYS[0]).glob("*.parquet"))[0]
    first.write_bytes(first.read_bytes()[:100])
    unscored = ["score", "--source", SOURCE, "--unscored", "--engine", "local", "--data-root", str(root)]
    assert main(unscored) == 1
    out, err = capsys.readouterr()
    assert f"krone score: {SOURCE} {DAYS[0]}: {first.parent} is not the partition that was written" in err
    assert out.startswith(f"{SOURCE} {DAYS[1]}: ")  # the day after it is scored all the same

    assert main(unscored) == 0  # the next night: set aside, said, not failed on again
    out, err = capsys.readouterr()
    assert err.startswith(f"krone score: {SOURCE} {DAYS[0]} set aside: its score failed for good "
                          "(PartitionMismatch, 1 time(s), last ") and not out
    assert main([*unscored, "--retry-failed"]) == 1  # asked for: tried again (still damaged)
    assert rows(warehouse, "SELECT attempts FROM score_failures") == [(2,)]


def test_a_champion_that_cannot_be_loaded_fails_the_day_with_what_to_do(
        pipeline: Pipeline, spark: Any, warehouse: str, champion: Path) -> None:
    [weights] = (champion / "artifacts").rglob("detector.pt")
    intact = weights.read_bytes()
    try:
        weights.write_bytes(intact[:100])
        with pytest.raises(ModelUnloadable) as err:
            score(pipeline, spark)
    finally:
        weights.write_bytes(intact)
    assert str(err.value).startswith("the champion krone-syn v1: its artifacts (")
    assert f"`krone promote --source {SOURCE} --version N`" in str(err.value)
    assert rows(warehouse, "SELECT COUNT(*) FROM run_metrics WHERE stage = 'score'") == [(0,)]
    assert DAYS[1] in pipeline_api.set_aside(SOURCE, DAYS, data_root=pipeline.root)  # until another champion
    assert score(pipeline, spark).anomalies > 0  # the file back: the day scores (named, not caught up on)
    assert pipeline_api.set_aside(SOURCE, DAYS, data_root=pipeline.root) == {}


def test_llm_decides_uncertain_chunks_within_its_budget(
    pipeline: Pipeline, spark: Any, warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeLLM().start()
    try:
        fake.respond('{"prediction": "Abnormal", "reason": "step order differs from every normal example"}')
        monkeypatch.setenv("KRONE_LLM_BASE_URL", fake.base_url)
        monkeypatch.setenv("KRONE_LLM_MODEL", "fake-model")
        monkeypatch.setenv("KRONE_LLM_API_KEY", "test-key")
        monkeypatch.setenv("KRONE_LLM_BAND", "1e9")  # every finite Nested-Aware score is "uncertain"
        monkeypatch.setenv("KRONE_LLM_MAX_CALLS", "3")
        monkeypatch.setenv("KRONE_LLM_MAX_FRACTION", "1.0")
        m = score(pipeline, spark)
    finally:
        fake.stop()
    assert 0 < m.llm_calls == len(fake.requests) <= 3 and m.llm_tokens > 0  # the spend, within the budget
    assert m.llm_budget_refusals > 0 and m.llm_requests >= m.llm_calls + m.llm_budget_refusals  # asked > spent
    assert m.llm_fraction == round(m.llm_calls / m.sessions, 6)
    by_llm = rows(warehouse, "SELECT reason FROM anomaly_reports WHERE detector = 'llm'")
    assert by_llm and all(r[0].startswith("LLM: step order") for r in by_llm)  # one answer may settle several
    prompt = json.dumps(fake.requests[0]["messages"])
    assert "job_" not in prompt  # session ids and raw lines never leave; node ids and templates do


def test_templates_placed_after_training_are_judged_in_context(
    pipeline: Pipeline, spark: Any, warehouse: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A champion trained on day 1's hierarchy only: day 2's new template, placed by the hierarchy stage, is
    judged by the Nested-Aware rules in its session's context (and cached like any chunk) instead of every
    session that has it being reported, night after night, as a template the model lacks."""
    day1 = latest_templates(pipeline.root, SOURCE, DAYS[0])
    assert day1 is not None and pipeline.parse[DAYS[1]].new_templates > 0
    full = load_hierarchy(pipeline.root, SOURCE)
    known = {t.template_id for t in day1.templates()}
    table = pq.read_table(partition_dir(pipeline.root, "sessions", SOURCE, DAYS[0])).to_pydict()
    sessions = [[day1.resolve(t) for t in tids] for tids in table["template_ids"]]
    monkeypatch.setenv("KRONE_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("KRONE_MLFLOW_ARTIFACTS", (tmp_path / "artifacts").as_uri())
    train(SOURCE, sessions, {t.template_id: t.template for t in day1.templates()},
          hierarchy=type(full)(full[t] for t in full if t in known), miner_state=day1.to_json(), fp_bound=1.0,
          min_heldout=0)
    m = score(pipeline, spark)
    assert m.templates_placed == len(full) - len(known) > 0 and m.unknown_template_sessions == 0
    assert not rows(warehouse, "SELECT reason FROM anomaly_reports WHERE reason LIKE '%not in the hierarchy%'")
    assert score(pipeline, spark).routed_sessions == 0  # warm: the sessions with the new template are cached too
