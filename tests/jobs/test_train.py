"""The train stage end to end on a throw-away SQLite MLflow store: registry round trip, the gate, determinism,
hierarchy growth and the CLI entry. Nested-Aware training is kept tiny so the file stays fast."""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from krone_jobs.hierarchy.model import Hierarchy, TemplateNode, make_node
from krone_jobs.jobs.train import add_train_arguments, main_train, read_sessions, split_heldout, train
from krone_jobs.model_registry import CHAMPION, load_champion, sessions_frame, verdict_frame
from krone_jobs.synthetic import TEMPLATES, generate_sessions
from krone_jobs.templates import TemplateStore

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
    a = train("seeded", sessions, TEXTS, hierarchy=truth(), nested_params=TINY, seed=5, fp_bound=1.0)
    b = train("seeded", sessions, TEXTS, hierarchy=truth(), nested_params=TINY, seed=5, fp_bound=1.0)

    assert a.detector.nested_.thresholds_ == b.detector.nested_.thresholds_
    assert {k: v for k, v in a.metrics.items() if k != "train_seconds"} == \
        {k: v for k, v in b.metrics.items() if k != "train_seconds"}
    probe_sessions = probe()
    assert a.detector.detect(probe_sessions) == b.detector.detect(probe_sessions)
    assert b.gate.passed and b.gate.champion_fp_rate == a.gate.candidate_fp_rate  # an equal model may take over
    assert split_heldout([tuple(s) for s in sessions], 0.1, 5) != split_heldout([tuple(s) for s in sessions], 0.1, 6)


def test_hierarchy_grows_from_the_champion_and_overrides_win(store: MlflowClient, tmp_path: Path) -> None:
    sessions = normal(120, 4)
    used = {t for s in sessions for t in s}
    first = train("grow", sessions, {k: v for k, v in TEXTS.items() if k in used}, extractor=TruthExtractor(),
                  nested_params=TINY, fp_bound=1.0)
    overrides = tmp_path / "overrides.csv"
    overrides.write_text("template_id,entity,action,status\nworker.task.gc_paused,worker,housekeeping,none\n")
    second = train("grow", sessions, TEXTS, extractor=TruthExtractor(), overrides_path=overrides,
                   nested_params=TINY, fp_bound=1.0)

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
                              "--fp-bound", "1", "--json"])

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
