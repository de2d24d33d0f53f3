"""The train stage end to end on a throw-away SQLite MLflow store: registry round trip, the gate, determinism,
hierarchy growth, the CLI entry, and training from the pipeline's partitions (the shared two-day run of
``conftest.py``, read-only here). Nested-Aware training is kept tiny so the file stays fast."""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from krone_jobs.hierarchy.kseqs import decompose
from krone_jobs.hierarchy.model import Hierarchy, TemplateNode, make_node
from krone_jobs.jobs.hierarchy_job import load_hierarchy
from krone_jobs.jobs.train import (
    NoTrainingData,
    TrainResult,
    add_train_arguments,
    anomalous_labels,
    label_flags,
    main_train,
    read_sessions,
    resolve_ids,
    split_heldout,
    train,
    train_partitions,
)
from krone_jobs.miner_state import latest_templates, templates_path
from krone_jobs.model_registry import CHAMPION, knowledge_base, load_champion, sessions_frame, verdict_frame
from krone_jobs.partitions import partition_dir
from krone_jobs.synthetic import TEMPLATES, generate_sessions
from krone_jobs.templates import TemplateStore
from krone_jobs.warehouse import Warehouse

TINY = {"epochs": 2, "hidden": 8, "dim": 8}
TEXTS = {t.key: t.text for t in TEMPLATES.values()}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowClient]:
    """A private tracking store and artifact root, through the same settings the jobs read. One per file
    (creating the SQLite schema costs seconds); each test trains its own source, so models never mix."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KRONE_MLFLOW_URI", uri)
        mp.setenv("KRONE_MLFLOW_ARTIFACTS", (root / "artifacts").as_uri())
        yield MlflowClient(tracking_uri=uri, registry_uri=uri)


def truth() -> Hierarchy:
    """The synthetic system's ground-truth hierarchy (hand-made, no extractor involved)."""
    return Hierarchy(make_node(t.key, t.text, t.entity, t.action, t.status, "offline") for t in TEMPLATES.values())


class TruthExtractor:
    """Places templates as the generator defines them: a stand-in for the offline extractor."""

    origin = "offline"

    def extract(self, templates: Mapping[str, str]) -> list[TemplateNode]:
        return [make_node(k, text, *k.split("."), self.origin) for k, text in templates.items()]


def normal(n: int, seed: int) -> list[list[str]]:
    return [s.template_keys for s in generate_sessions(n, seed=seed, anomaly_rate=0.0)]


def probe() -> list[list[str]]:
    """Sessions to compare verdicts on: normal, injected anomalies, an unknown template, an empty one."""
    sessions = [s.template_keys for s in generate_sessions(150, seed=9, anomaly_rate=0.3)]
    return [*sessions, ["scheduler.submit.accepted", "no.such.template"], []]


def miner_state() -> str:
    store = TemplateStore()
    for line in ("job_1 submitted by user alice", "job_2 submitted by user bob", "worker w1 started task 7"):
        store.mine(line)
    return store.to_json()


def test_train_registers_promotes_and_loads_back_identically(store: MlflowClient) -> None:
    result = train("roundtrip", normal(200, 1), TEXTS, hierarchy=truth(), nested_params=TINY, miner_state=miner_state())

    assert result.gate.passed, result.gate.reasons
    assert result.model_version == "1"
    assert store.get_model_version_by_alias("krone-roundtrip", CHAMPION).version == 1
    loaded = load_champion("roundtrip")
    sessions = probe()
    expected = verdict_frame(result.detector.detect(sessions))
    assert expected["anomalous"].any() and (~expected["anomalous"]).any()
    pd.testing.assert_frame_equal(loaded.predict(sessions_frame(sessions)), expected)
    as_text = pd.DataFrame({"template_ids": [" ".join(s) for s in sessions]})
    pd.testing.assert_frame_equal(loaded.predict(as_text), expected)
    model = loaded.unwrap_python_model()
    assert model.templates is not None and model.templates.to_json() == miner_state()

    run = store.get_run(result.run_id)
    assert run.data.params["seed"] == "0" and run.data.params["hierarchy_origin_offline"] == str(len(TEMPLATES))
    assert run.data.metrics["n_train_sessions"] == 180 and run.data.metrics["n_templates"] == len(TEMPLATES)
    assert {"heldout_fp_rate", "train_seconds"} <= set(run.data.metrics)
    finite = {k: v for k, v in result.detector.nested_.thresholds_.items() if np.isfinite(v)}
    assert finite and all(run.data.metrics[f"threshold_{k}"] == pytest.approx(v) for k, v in finite.items())
    names = {a.path for a in store.list_artifacts(result.run_id)}
    assert {"hierarchy.csv", "knowledge_base.json", "thresholds.json", "gate.json"} <= names


def test_gate_refuses_a_worse_model_and_keeps_the_champion(store: MlflowClient, tmp_path: Path) -> None:
    first = train("gate", normal(200, 1), TEXTS, hierarchy=truth(), nested_params=TINY, fp_bound=1.0)
    # A broken template update: the candidate's hierarchy lost a template that about 30 % of normal jobs
    # log, so it flags those held-out sessions, which the champion (judged on the very same ones) passes.
    lossy = Hierarchy(n for n in truth().nodes() if n.template_id != "scheduler.schedule.waiting")
    worse = train("gate", normal(200, 2), TEXTS, hierarchy=lossy, nested_params=TINY, fp_bound=1.0)

    verdict = worse.gate
    assert first.gate.passed and not verdict.passed
    assert verdict.champion_version == "1" and verdict.n_heldout == 20
    assert verdict.candidate_fp_rate > verdict.champion_fp_rate + verdict.tolerance  # type: ignore[operator]
    assert any(r.startswith("FAIL: false-positive rate") for r in verdict.reasons)
    assert store.get_model_version_by_alias("krone-gate", CHAMPION).version == 1
    run = store.get_run(worse.run_id)
    assert run.data.metrics["gate_passed"] == 0.0 and run.data.tags["krone.gate"] == "refused"
    assert run.data.metrics["gate_champion_fp_rate"] == pytest.approx(verdict.champion_fp_rate)
    logged = json.loads(Path(store.download_artifacts(worse.run_id, "gate.json", str(tmp_path))).read_text())
    assert logged["passed"] is False and logged["champion_version"] == "1"
    tags = store.get_model_version("krone-gate", worse.model_version).tags
    assert tags["gate.passed"] == "false" and "FAIL" in tags["gate.reasons"]


def test_same_seed_same_model(store: MlflowClient) -> None:
    sessions = normal(150, 3)
    a = train("seeded", sessions, TEXTS, hierarchy=truth(), nested_params=TINY, seed=5, fp_bound=1.0, min_heldout=0)
    b = train("seeded", sessions, TEXTS, hierarchy=truth(), nested_params=TINY, seed=5, fp_bound=1.0, min_heldout=0)

    assert a.detector.nested_.thresholds_ == b.detector.nested_.thresholds_
    assert {k: v for k, v in a.metrics.items() if k != "train_seconds"} == \
        {k: v for k, v in b.metrics.items() if k != "train_seconds"}
    probe_sessions = probe()
    assert a.detector.detect(probe_sessions) == b.detector.detect(probe_sessions)
    assert b.gate.passed and b.gate.champion_fp_rate == a.gate.candidate_fp_rate  # an equal model may take over
    assert split_heldout([tuple(s) for s in sessions], 0.1, 5) != split_heldout([tuple(s) for s in sessions], 0.1, 6)


def test_the_rules_budget_comes_from_the_environment_and_is_logged(store: MlflowClient,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``KRONE_FP_BUDGET`` reaches training as the Airflow task runs it; ``--nested-params`` still wins."""
    monkeypatch.setenv("KRONE_FP_BUDGET", "0.01")
    result = train("budget", normal(150, 4), TEXTS, hierarchy=truth(), nested_params=TINY, fp_bound=1.0, min_heldout=0)
    assert result.detector.nested_.fp_budget == 0.01
    assert store.get_run(result.run_id).data.params["nested_fp_budget"] == "0.01"
    given = train("budget", normal(150, 4), TEXTS, hierarchy=truth(), nested_params={**TINY, "fp_budget": 0.003},
                  fp_bound=1.0, min_heldout=0)
    assert given.detector.nested_.fp_budget == 0.003
    monkeypatch.setenv("KRONE_FP_BUDGET", "2")
    with pytest.raises(ValueError, match="KRONE_FP_BUDGET"):
        train("budget", normal(150, 4), TEXTS, hierarchy=truth(), nested_params=TINY)


def test_hierarchy_grows_from_the_champion_and_overrides_win(store: MlflowClient, tmp_path: Path) -> None:
    sessions = normal(120, 4)
    used = {t for s in sessions for t in s}
    first = train("grow", sessions, {k: v for k, v in TEXTS.items() if k in used}, extractor=TruthExtractor(),
                  nested_params=TINY, fp_bound=1.0, min_heldout=0)
    overrides = tmp_path / "overrides.csv"
    overrides.write_text("template_id,entity,action,status\nworker.task.gc_paused,worker,housekeeping,none\n")
    second = train("grow", sessions, TEXTS, extractor=TruthExtractor(), overrides_path=overrides,
                   nested_params=TINY, fp_bound=1.0, min_heldout=0)

    old, new = first.detector.hierarchy, second.detector.hierarchy
    assert first.gate.passed and len(new) == len(TEXTS) > len(old)
    assert all(new[t] == old[t] for t in old if t != "worker.task.gc_paused")  # node ids never move
    assert new["worker.task.gc_paused"].origin == "override" and new["worker.task.gc_paused"].action == "housekeeping"
    params = store.get_run(second.run_id).data.params
    assert params["hierarchy_base_version"] == "1" and params["hierarchy_origin_override"] == "1"
    assert second.metrics["n_new_templates"] == len(TEXTS) - len(old)


def test_cli_trains_from_session_and_template_files(store: MlflowClient, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    sessions = tmp_path / "sessions.csv"
    with open(sessions, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(("session_id", "template_ids", "label"))
        for i, s in enumerate(generate_sessions(200, seed=5, anomaly_rate=0.1)):
            out.writerow((s.session_id, " ".join(s.template_keys), "" if i % 2 and not s.label else s.label))
    templates = tmp_path / "templates.csv"
    pd.DataFrame({"template_id": list(TEXTS), "template": list(TEXTS.values())}).to_csv(templates, index=False)
    hierarchy = tmp_path / "hierarchy.csv"
    truth().save_csv(hierarchy)
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--sessions", str(sessions), "--templates", str(templates), "--source", "files",
                              "--hierarchy", str(hierarchy), "--nested-params", json.dumps(TINY),
                              "--fp-bound", "1", "--min-heldout", "0", "--json"])

    assert main_train(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["promoted"] and summary["model_version"] == "1"
    assert summary["metrics"]["n_train_sessions"] == 162  # 180 normal sessions (label 0 or none), 18 held out
    location = mlflow.get_experiment_by_name("krone-files").artifact_location
    assert location == os.environ["KRONE_MLFLOW_ARTIFACTS"] + "/krone-files"


def test_read_sessions_accepts_parquet_lists_and_missing_labels(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    pd.DataFrame({"session_id": ["a", "b"], "template_ids": [["t1", "t2"], ["t3"]], "label": [None, 1]}).to_parquet(path)
    sessions, labels = read_sessions(path)
    assert sessions == [("t1", "t2"), ("t3",)] and labels.tolist() == [0, 1]
    pd.DataFrame({"session_id": ["a"], "template_ids": ["t1 t2"]}).to_csv(tmp_path / "s.csv", index=False)
    assert read_sessions(tmp_path / "s.csv")[0] == [("t1", "t2")]
    with pytest.raises(ValueError, match="label"):
        read_sessions(tmp_path / "s.csv", require_label=True)
    assert np.array_equal(read_sessions(tmp_path / "s.csv")[1], [0])



def test_labels_are_read_in_the_usual_spellings_and_an_unknown_one_is_refused(tmp_path: Path) -> None:
    values = [1, 0, "Anomaly", "normal", " ABNORMAL ", "true", "", None, "2", "0.0"]
    assert label_flags(values, tmp_path).tolist() == [1, 0, 1, 0, 1, 1, 0, 0, 1, 0]
    with pytest.raises(ValueError, match=r"label value\(s\) \['suspicious'\]"):
        label_flags(["Normal", "suspicious"], tmp_path)  # never read as normal: that would train on anomalies
    loghub = tmp_path / "anomaly_label.csv"  # Loghub's HDFS file as it comes
    loghub.write_text("BlockId,Label\nblk_1,Normal\nblk_-2,Anomaly\n")
    assert anomalous_labels(loghub) == {"blk_-2"}
    (tmp_path / "bad.csv").write_text("id,label\na,1\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['session_id'\]"):
        anomalous_labels(tmp_path / "bad.csv")


# ------------------------------------------------------------------------------ pipeline partitions
SOURCE = "syn"  # as in conftest.py (not importable)
DAYS = ("2026-11-01", "2026-11-02")


@dataclass(frozen=True)
class Window:
    """The first model trained on the shared pipeline's two days, and how to train the next one alike."""

    kwargs: dict[str, Any]
    first: TrainResult
    sessions: pd.DataFrame  # session_id, template_ids (resolved), label of every session in the window

    @property
    def tracking_uri(self) -> str:
        return str(self.kwargs["tracking_uri"])


def window_sessions(root: Path) -> pd.DataFrame:
    """What the test expects train_partitions to read: both days' sessions with their generator labels."""
    frame = pd.concat([pd.read_parquet(partition_dir(root, "sessions", SOURCE, d)) for d in DAYS], ignore_index=True)
    labels = pd.read_csv(root / "labels" / SOURCE / "labels.csv", dtype={"session_id": str})
    miner = latest_templates(root, SOURCE, DAYS[1])
    assert miner is not None
    frame["template_ids"] = [resolve_ids(list(t), miner) for t in frame["template_ids"]]
    return frame.merge(labels[["session_id", "label"]], on="session_id", how="left")


@pytest.fixture(scope="module")
def window(pipeline: Any, tmp_path_factory: pytest.TempPathFactory) -> Window:
    tmp = tmp_path_factory.mktemp("window")
    kwargs = {"days": 2, "data_root": pipeline.root, "tracking_uri": f"sqlite:///{tmp}/mlflow.db",
              "artifact_root": (tmp / "art").as_uri(), "warehouse_url": f"duckdb:///{tmp}/w.duckdb",
              "labels": pipeline.root / "labels" / SOURCE / "labels.csv", "nested_params": TINY, "fp_bound": 1.0}
    return Window(kwargs, train_partitions(SOURCE, DAYS[1], **kwargs), window_sessions(pipeline.root))


def in_kb(detector: Any, key: str) -> bool:
    """Whether the level key ``<level>|<parent>|<nodes>`` is in the detector's knowledge base."""
    level, parent, nodes = key.split("|")
    return {"parent": parent, "nodes": nodes.split(",")} in knowledge_base(detector)[level]


def test_train_partitions_registers_a_champion_without_the_labelled_anomalies(window: Window, pipeline: Any) -> None:
    result, frame = window.first, window.sessions
    client = MlflowClient(tracking_uri=window.tracking_uri, registry_uri=window.tracking_uri)

    assert result.model_version == "1" and result.gate.passed
    assert client.get_model_version_by_alias(f"krone-{SOURCE}", CHAMPION).version == 1
    n_anomalous = int((frame["label"] == 1).sum())
    assert 0 < n_anomalous < len(frame)
    metrics, params = result.metrics, client.get_run(result.run_id).data.params
    assert metrics["n_window_sessions"] == len(frame) and metrics["n_excluded_labelled"] == n_anomalous
    assert metrics["n_excluded_reported"] == 0 and params["reports_checked"] == "False"  # no warehouse yet
    assert metrics["n_train_sessions"] + int(params["n_heldout_sessions"]) == len(frame) - n_anomalous
    assert (params["window_start"], params["window_end"], params["window_days"]) == (*DAYS, "2")
    assert params["window_partitions"] == ",".join(DAYS) and params["miner_state_dt"] == DAYS[1]
    assert params["nested_fold_kind"] == "groups"  # the two days are the cross-fitting folds
    assert result.detector.hierarchy == load_hierarchy(pipeline.root, SOURCE)  # the pipeline's node ids

    model = load_champion(SOURCE, window.tracking_uri).unwrap_python_model()
    assert model.templates is not None
    shipped = TemplateStore.from_json(templates_path(pipeline.root, SOURCE, DAYS[1]).read_text())
    assert model.templates.to_json() == shipped.to_json()
    assert "gate/heldout.parquet" in {a.path for a in client.list_artifacts(result.run_id, "gate")}

    # the partitions it read, as the run's training dataset: their content ids make the digest
    from krone_jobs.lineage import content_id

    [used] = client.get_run(result.run_id).inputs.dataset_inputs
    assert (used.dataset.name, used.dataset.source_type) == (f"krone-{SOURCE}-sessions", "local")
    assert [t.value for t in used.tags if t.key == "mlflow.data.context"] == ["training"]
    read = json.loads(Path(client.download_artifacts(result.run_id, "training_partitions.json")).read_text())
    assert read["digest"] == used.dataset.digest
    folders = {d: partition_dir(pipeline.root, "sessions", SOURCE, d) for d in DAYS}
    assert read["partitions"] == {d: {"content_id": content_id(f), "rows": len(pd.read_parquet(f))}
                                  for d, f in folders.items()}


def test_feedback_joins_the_knowledge_base_and_reported_sessions_are_left_out(window: Window) -> None:
    first, frame = window.first, window.sessions
    anomalous = frame.loc[frame["label"] == 1, "template_ids"]
    session, verdict = next((s, v) for s, v in zip(anomalous, first.detector.detect(list(anomalous)))
                            if v.anomalous and "|?|" not in v.key)  # flagged on a chunk, not a new template
    chunk = next(c for d in [decompose(session, first.detector.hierarchy)] for c in (*d.status, *d.action, d.entity)
                 if c.key == verdict.key)
    assert not in_kb(first.detector, chunk.key)
    normal_id = frame.loc[frame["label"] == 0, "session_id"].iloc[0]
    with Warehouse(window.kwargs["warehouse_url"]) as wh:
        wh.ensure_schema()
        wh.record_feedback(SOURCE, chunk.cache_key, "normal", author="t", kseq_key=chunk.key)
        wh.write_reports(SOURCE, DAYS[1], "run-0", [{
            "session_id": normal_id, "level": "status", "chunk_index": 0, "kseq_key": "status|x|y", "cache_key": "c",
            "segment_template_ids": ["t"], "line_refs": ["f:1"], "detector": "local", "score": 1.0, "reason": "r",
            "model_version": "1"}])

    second = train_partitions(SOURCE, DAYS[1], **window.kwargs)

    assert second.metrics["n_feedback_normal_keys"] == 1 and second.metrics["n_excluded_reported"] == 1
    assert second.metrics["n_train_sessions"] + second.gate.n_heldout == first.metrics["n_train_sessions"] + \
        first.gate.n_heldout - 1
    assert in_kb(second.detector, chunk.key)
    logged = mlflow.pyfunc.load_model(second.paths["model_uri"]).unwrap_python_model().detector  # what scoring gets
    assert in_kb(logged, chunk.key)
    assert logged.detect([session])[0].key != verdict.key  # no longer flagged on the approved chunk


def test_train_partitions_says_when_there_is_nothing_to_train_on(pipeline: Any, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    kwargs: dict[str, Any] = {"data_root": pipeline.root, "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                              "warehouse_url": f"duckdb:///{tmp_path}/w.duckdb"}
    with pytest.raises(NoTrainingData, match=r"no sessions partition for source=syn in 2026-10-01\.\.2026-10-07"):
        train_partitions(SOURCE, "2026-10-07", **kwargs)
    all_bad = tmp_path / "labels.csv"
    ids = pd.read_parquet(partition_dir(pipeline.root, "sessions", SOURCE, DAYS[0]), columns=["session_id"])
    ids.assign(label=1).to_csv(all_bad, index=False)
    with pytest.raises(NoTrainingData, match="no normal session left"):
        train_partitions(SOURCE, DAYS[0], days=1, labels=all_bad, **kwargs)
    monkeypatch.setenv("KRONE_RETAIN_DAYS", "2")  # a window longer than retention keeps says so
    with pytest.raises(NoTrainingData), caplog.at_level("WARNING", logger="krone_jobs.jobs.train"):
        train_partitions(SOURCE, DAYS[0], days=3, labels=all_bad, **kwargs)
    assert "longer than KRONE_RETAIN_DAYS=2: training on the 1 of its days that are left" in caplog.text
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "w.duckdb").exists()  # nothing touched


def test_cli_end_mode_needs_a_source_and_refuses_file_options(pipeline: Any) -> None:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    root = ["--data-root", str(pipeline.root)]
    with pytest.raises(SystemExit, match="--end needs --source"):
        main_train(parser.parse_args(["--end", DAYS[1], *root]))
    with pytest.raises(SystemExit, match="drop --templates, --hierarchy"):
        main_train(parser.parse_args(["--end", DAYS[1], "--source", SOURCE, "--templates", "t.csv",
                                      "--hierarchy", "h.csv", *root]))
    with pytest.raises(SystemExit, match="krone train: no sessions partition"):
        main_train(parser.parse_args(["--end", "2026-10-07", "--source", SOURCE, *root]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--end", DAYS[1], "--dataset", "hdfs-demo"])  # one data option at a time


def test_cli_end_mode_records_the_run_like_the_dag_task(pipeline: Any, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    url = f"duckdb:///{tmp_path}/w.duckdb"
    argv = ["--end", DAYS[1], "--days", "2", "--source", SOURCE, "--data-root", str(pipeline.root),
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--warehouse-url", url, "--fp-bound", "1",
            "--nested-params", json.dumps(TINY), "--labels", str(pipeline.root / "labels" / SOURCE / "labels.csv")]
    assert main_train(parser.parse_args(argv)) == 0
    assert "promoted to champion" in capsys.readouterr().out
    with Warehouse(url) as wh, wh.engine.connect() as conn:
        metrics = dict(conn.exec_driver_sql(
            "SELECT metric, value FROM run_metrics WHERE stage = 'train' AND dt = ?", (DAYS[1],)).all())
    assert metrics["model_version"] == 1.0 and metrics["promoted"] == 1.0 and metrics["n_train_sessions"] > 0
