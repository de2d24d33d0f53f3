"""The KRONE pyfunc, registration and the validation gate (pure checks first, then on a SQLite store)."""

from __future__ import annotations

import argparse
import copy
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from krone_jobs import serving
from krone_jobs.detectors.router import RoutedDetector
from krone_jobs.hierarchy.extractor import build_hierarchy
from krone_jobs.hierarchy.model import Hierarchy, make_node
from krone_jobs.hierarchy.offline import OfflineExtractor
from krone_jobs.logformats import KRONE
from krone_jobs.model_registry import (
    CHAMPION,
    ModelUnloadable,
    Predictor,
    PromotionRefused,
    Validation,
    add_promote_arguments,
    champion_hierarchy,
    connect,
    ensure_experiment,
    fp_upper_bound,
    gate,
    load_champion,
    load_version,
    log_gate_sessions,
    log_krone_model,
    main_promote,
    promote,
    promote_if_better,
    register,
    sessions_frame,
    template_ids,
    verdict_frame,
)
from krone_jobs.synthetic import TEMPLATES, generate_sessions
from krone_jobs.templates import TemplateStore


def flags(bad: set[str]) -> Predictor:
    """A stand-in model: flags every session whose first template is in ``bad``."""
    return lambda sessions: np.asarray([int(bool(s) and s[0] in bad) for s in sessions], dtype=np.int8)


HELDOUT = [("ok",)] * 96 + [("rare",)] * 3 + [("odd",)]  # 100 normal sessions


def test_template_ids_accepts_lists_strings_and_missing_values() -> None:
    assert template_ids(["a", "b"]) == ("a", "b")
    assert template_ids(np.asarray([1, 2])) == ("1", "2")
    assert template_ids("a  b\tc") == ("a", "b", "c")
    assert template_ids('["a", "b"]') == template_ids("['a', 'b']") == ("a", "b")
    assert template_ids(None) == template_ids(float("nan")) == template_ids("") == ()


def test_gate_bound_without_champion() -> None:
    ok = gate(flags({"odd"}), HELDOUT)
    assert ok.passed and ok.candidate_fp_rate == 0.01 and ok.champion_fp_rate is None
    assert any("no champion" in r for r in ok.reasons)
    too_many = gate(flags({"rare"}), HELDOUT)
    assert not too_many.passed and too_many.reasons[0].startswith("FAIL: held-out false-positive rate 0.0300")
    assert "(3 of 100 sessions; 95 % upper bound 0.07" in too_many.reasons[0]
    assert gate(flags({"rare"}), HELDOUT, fp_bound=0.05).passed  # the bound is configurable
    empty = gate(flags(set()), [])
    assert not empty.passed and math.isnan(empty.candidate_fp_rate) and empty.to_dict()["candidate_fp_rate"] is None


def test_gate_refuses_too_few_held_out_sessions_and_says_how_sure_it_is() -> None:
    few = gate(flags(set()), HELDOUT[:5])
    assert not few.passed and few.candidate_fp_rate == 0.0 and few.n_heldout == 5
    assert few.reasons[0].startswith("FAIL: 5 held-out normal sessions, fewer than 20")
    assert "0 of 5 sessions; 95 % upper bound 0.4507" in few.reasons[1]  # 1 - 0.05 ** (1 / 5)
    assert gate(flags(set()), HELDOUT[:5], min_heldout=5).passed
    assert fp_upper_bound(0.0, 100) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert fp_upper_bound(0.01, 100) > 0.01 and fp_upper_bound(1.0, 10) == 1.0


def test_gate_compares_with_the_champion_on_the_same_sessions() -> None:
    worse = gate(flags({"odd"}), HELDOUT, champion=flags(set()), champion_version="3")
    assert not worse.passed and worse.champion_fp_rate == 0.0
    assert worse.reasons[-1].startswith("FAIL: false-positive rate 0.0100 vs champion v3 0.0000")
    within = gate(flags({"odd"}), HELDOUT, champion=flags(set()), champion_version="3", tolerance=0.01)
    assert within.passed


def test_gate_requires_recall_at_least_the_champions() -> None:
    validation = Validation([("ok",), ("boom",), ("bang",)], [0, 1, 1])
    champion = flags({"boom", "bang"})
    lower = gate(flags({"boom"}), HELDOUT, champion=champion, champion_version="1", validation=validation)
    assert not lower.passed and (lower.candidate_recall, lower.champion_recall) == (0.5, 1.0)
    assert lower.reasons[-1].startswith("FAIL: recall 0.5000")
    same = gate(flags({"boom", "bang"}), HELDOUT, champion=champion, champion_version="1", validation=validation)
    assert same.passed and same.n_validation == 3


# ------------------------------------------------------------------------------------ with MLflow
@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowClient]:
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KRONE_MLFLOW_URI", f"sqlite:///{root / 'store' / 'mlflow.db'}")  # folder made by connect()
        mp.setenv("KRONE_MLFLOW_ARTIFACTS", (root / "artifacts").as_uri())
        yield connect()


@pytest.fixture(scope="module")
def detector() -> RoutedDetector:
    hierarchy = Hierarchy(make_node(t.key, t.text, t.entity, t.action, t.status, "offline") for t in TEMPLATES.values())
    sessions = [s.template_keys for s in generate_sessions(200, seed=11, anomaly_rate=0.0)]
    return RoutedDetector(hierarchy, nested_params={"epochs": 2, "hidden": 8, "dim": 8}).fit(sessions)


def log_version(client: MlflowClient, detector: RoutedDetector, source: str,
                heldout: Sequence[Sequence[str]] | None = None) -> tuple[str, str]:
    """Log and register ``detector`` as train() does (with its held-out sessions if given), gate skipped."""
    with mlflow.start_run(experiment_id=ensure_experiment(client, source)) as run:
        log_krone_model(detector)
        if heldout is not None:
            log_gate_sessions(heldout)
        return run.info.run_id, register(run.info.run_id, source)


def test_promotion_moves_the_alias_only_through_the_gate(client: MlflowClient, detector: RoutedDetector,
                                                         tmp_path: Path) -> None:
    heldout: Sequence[Sequence[str]] = [s.template_keys for s in generate_sessions(60, seed=12, anomaly_rate=0.0)]
    run1, v1 = log_version(client, detector, "reg")
    first = promote_if_better(client, "reg", v1, detector.predict, heldout, run_id=run1)
    assert first.passed and client.get_model_version_by_alias("krone-reg", CHAMPION).version == int(v1)

    run2, v2 = log_version(client, detector, "reg")
    flag_all: Predictor = lambda s: np.ones(len(s), dtype=np.int8)  # noqa: E731  (a deliberately broken candidate)
    second = promote_if_better(client, "reg", v2, flag_all, heldout, run_id=run2)
    assert not second.passed and second.champion_version == v1 and second.champion_fp_rate == first.candidate_fp_rate
    assert client.get_model_version_by_alias("krone-reg", CHAMPION).version == int(v1)
    assert client.get_model_version("krone-reg", v2).tags["gate.passed"] == "false"
    logged = json.loads(Path(client.download_artifacts(run2, "gate.json", str(tmp_path))).read_text())
    assert logged["passed"] is False and logged["candidate_fp_rate"] == 1.0
    params = client.get_run(run2).data.params
    assert params["gate_champion_version"] == v1 and params["gate_fp_bound"] == "0.02"

    hierarchy, version = champion_hierarchy(client, "reg")
    assert version == v1 and hierarchy == detector.hierarchy


def test_loaded_model_predicts_like_the_detector(client: MlflowClient, detector: RoutedDetector) -> None:
    run_id, version = log_version(client, detector, "pyfunc")
    heldout = [s.template_keys for s in generate_sessions(20, seed=13, anomaly_rate=0.0)]
    assert promote_if_better(client, "pyfunc", version, detector.predict, heldout, run_id=run_id).passed
    sessions = [s.template_keys for s in generate_sessions(80, seed=14, anomaly_rate=0.4)] + [["nope"], []]
    loaded = load_champion("pyfunc")
    out = loaded.predict(sessions_frame(sessions))
    pd.testing.assert_frame_equal(out, verdict_frame(detector.detect(sessions)))
    assert out["anomalous"].iloc[-2] and out["level"].iloc[-2] == "status" and not out["anomalous"].iloc[-1]
    assert loaded.unwrap_python_model().templates is None  # no miner state was logged
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"hierarchy.csv", "knowledge_base.json", "thresholds.json"} <= names


@pytest.fixture(scope="module")
def served(client: MlflowClient) -> tuple[mlflow.pyfunc.PyFuncModel, TemplateStore, RoutedDetector]:
    """A champion trained as ``krone train`` does: Drain ids, offline hierarchy, miner state logged."""
    store = TemplateStore(KRONE.miner)
    train = [s.contents for s in generate_sessions(300, seed=21, anomaly_rate=0.0)]
    for messages in train:
        for message in messages:
            store.mine(message)
    hierarchy = build_hierarchy({t.template_id: t.template for t in store.templates()}, OfflineExtractor())
    ids = [[store.match(m).template_id for m in messages] for messages in train]  # type: ignore[union-attr]
    detector = RoutedDetector(hierarchy, nested_params={"epochs": 2, "hidden": 8, "dim": 8}).fit(ids)
    with mlflow.start_run(experiment_id=ensure_experiment(client, "msgs")) as run:
        log_krone_model(detector, miner_state=store.to_json())
        version = register(run.info.run_id, "msgs")
    client.set_registered_model_alias("krone-msgs", CHAMPION, version)
    return load_champion("msgs"), store, detector


def test_served_model_takes_messages_and_judges_new_ones_in_context(
    served: tuple[mlflow.pyfunc.PyFuncModel, TemplateStore, RoutedDetector],
) -> None:
    model, store, detector = served
    test = generate_sessions(120, seed=22, anomaly_rate=0.3)
    texts = [s.contents for s in test]
    by_messages = model.predict(pd.DataFrame({"messages": texts}))
    matched = [[store.match(m) for m in t] for t in texts]
    known = [i for i, m in enumerate(matched) if None not in m]
    ids = [[m.template_id for m in matched[i]] for i in known]  # type: ignore[union-attr]
    pd.testing.assert_frame_equal(by_messages.iloc[known].reset_index(drop=True), verdict_frame(detector.detect(ids)))
    # a message no template fits (a new or a failure template) is placed by the offline rules and judged in
    # context, as `krone score` judges a template placed after training, never flagged for being unknown
    novel = sorted(set(range(len(test))) - set(known))
    assert {test[i].anomaly_kind for i in novel} == {"new_template", "unexpected_status"}
    assert not by_messages["reason"].iloc[novel].str.contains("not in the hierarchy").any()
    errors = [i for i in novel
              if test[i].anomaly_kind == "unexpected_status" or "worker.oom.killed" in test[i].template_keys]
    assert len(errors) > 5 and by_messages["anomalous"].iloc[errors].all()
    assert np.isfinite(by_messages["score"]).all()  # an error step's infinite score would not be JSON
    all_ids, templates = serving.template_sessions(texts, store)
    extended = copy.deepcopy(detector)
    new = {t for s in all_ids for t in s} - set(detector.hierarchy)
    assert extended.extend_hierarchy(serving.placed(templates, detector.hierarchy)) == len(new) > 0
    pd.testing.assert_frame_equal(by_messages, verdict_frame(extended.detect(all_ids)))
    # one text per session, a message per line, gives the same verdicts
    one_text = model.predict(pd.DataFrame({"messages": ["\n".join(t) for t in texts]}))
    pd.testing.assert_frame_equal(one_text, by_messages)


def test_served_model_refuses_bad_requests_and_bounds_what_it_places(
    served: tuple[mlflow.pyfunc.PyFuncModel, TemplateStore, RoutedDetector], detector: RoutedDetector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, _, _ = served
    for frame, says in [
        (pd.DataFrame({"messages": [["ok", 3]]}), "row 0, message 1: not a string"),
        (pd.DataFrame({"messages": [["x" * 70_000]]}), "over 65,536"),
        (pd.DataFrame({"messages": [["a"]], "template_ids": [["b"]]}), "exactly one of the columns"),
    ]:
        with pytest.raises(MlflowException, match=says):
            model.predict(frame)
    python_model = model.unwrap_python_model()
    monkeypatch.setattr(python_model, "MAX_PLACED", 5)
    trained = len(python_model.detector.hierarchy)
    for batch in range(4):  # hostile input: every message a template of its own
        model.predict(pd.DataFrame({"messages": [[f"weird{batch}{i} frobnicated the {batch}x{i} flux"]
                                                  for i in range(3)]}))
        assert len(python_model.detector.hierarchy_) - trained <= 5
    no_miner = log_version(connect(), detector, "nominer")[1]
    connect().set_registered_model_alias("krone-nominer", CHAMPION, no_miner)
    with pytest.raises(MlflowException, match="without a miner state: send template_ids"):
        load_champion("nominer").predict(pd.DataFrame({"messages": [["a"]]}))


def test_scoring_server_answers_valid_json_and_400_on_bad_input(
    served: tuple[mlflow.pyfunc.PyFuncModel, TemplateStore, RoutedDetector],
) -> None:
    """Through MLflow's own scoring app (what `mlflow models serve` runs), in process."""
    from mlflow.pyfunc.scoring_server import init
    from starlette.testclient import TestClient

    http = TestClient(init(served[0]))
    job = generate_sessions(40, seed=23, anomaly_rate=0.0)[0].contents
    oom = "worker: job_1 task t-1 killed by kernel oom-killer (rss 9000 MB)"
    answer = http.post("/invocations", json={"dataframe_records": [{"messages": job}, {"messages": [*job, oom]}]})
    assert answer.status_code == 200
    rows = json.loads(answer.text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))["predictions"]
    assert [r["anomalous"] for r in rows] == [False, True] and "names an error" in rows[1]["reason"]
    bad = http.post("/invocations", json={"dataframe_records": [{"messages": ["ok", 3]}]})
    assert bad.status_code == 400 and "row 0, message 1: not a string" in bad.json()["message"]


# ------------------------------------------------------------------------------------------ promote
def promote_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_promote_arguments(parser)
    return main_promote(parser.parse_args(list(argv)))


def champion(client: MlflowClient, source: str) -> str:
    return str(client.get_model_version_by_alias(f"krone-{source}", CHAMPION).version)


def test_promote_with_force_rolls_back_and_records_who_and_why(client: MlflowClient, detector: RoutedDetector,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    _, v1 = log_version(client, detector, "promo")
    _, v2 = log_version(client, detector, "promo")
    client.set_registered_model_alias("krone-promo", CHAMPION, v2)

    with pytest.raises(PromotionRefused, match="no held-out sessions logged.*pass --force"):
        promote("promo", v1)  # logged without held-out sessions: the gate cannot be re-run
    assert champion(client, "promo") == v2
    monkeypatch.setenv("USER", "alice")
    assert promote("promo", v1, force=True, reason="v2 floods the night report") is None
    assert champion(client, "promo") == v1
    tags = client.get_model_version("krone-promo", v1).tags
    assert tags["krone.promoted_by"] == "alice" and tags["krone.promote_reason"] == "v2 floods the night report"
    assert tags["krone.promoted_from"] == v2 and tags["krone.promote_mode"] == "forced"
    with pytest.raises(LookupError, match=r"krone-promo has no version '9' \(registered versions: 1, 2\)"):
        promote("promo", "9", force=True)

    assert promote_cli("--source", "promo", "--version", v2, "--force", "--reason", "fixed upstream") == 0
    assert champion(client, "promo") == v2 and "champion v1 -> v2 (forced)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="krone promote: krone-promo has no version 'x'"):
        promote_cli("--source", "promo", "--version", "x", "--force")


def test_promote_reruns_the_gate_on_the_versions_held_out_sessions(client: MlflowClient, detector: RoutedDetector,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    heldout = [s.template_keys for s in generate_sessions(60, seed=12, anomaly_rate=0.0)]
    waiting = "scheduler.schedule.waiting"  # about 30 % of normal jobs log it
    lossy = RoutedDetector(Hierarchy(n for n in detector.hierarchy.nodes() if n.template_id != waiting), nested=False)
    lossy.fit([s.template_keys for s in generate_sessions(100, seed=11, anomaly_rate=0.0)])
    _, bad = log_version(client, lossy, "regate", heldout)  # flags every session that logs `waiting`
    _, good = log_version(client, detector, "regate", heldout)
    client.set_registered_model_alias("krone-regate", CHAMPION, good)

    assert promote_cli("--source", "regate", "--version", bad) == 1
    assert champion(client, "regate") == good
    out = capsys.readouterr().out
    assert "gate refused" in out and "FAIL: held-out false-positive rate" in out
    assert "FAIL" in client.get_model_version("krone-regate", bad).tags["krone.promote_refused"]

    _, newer = log_version(client, detector, "regate", heldout)
    strict = promote("regate", newer, min_heldout=61)  # the flag overrides the (default) trained value
    assert strict is not None and not strict.passed and strict.reasons[0].startswith("FAIL: 60 held-out")
    verdict = promote("regate", newer, reason="same model, new build")
    assert verdict is not None and verdict.passed and verdict.champion_version == good and verdict.n_heldout == 60
    assert champion(client, "regate") == newer
    assert client.get_model_version("krone-regate", newer).tags["krone.promote_mode"] == "gate"
    assert promote("regate", newer) is None  # already the champion: nothing to do


def test_a_champion_whose_artifacts_are_damaged_is_named_and_replaced_by_the_next_version_that_passes(
        client: MlflowClient, detector: RoutedDetector) -> None:
    heldout = [s.template_keys for s in generate_sessions(60, seed=12, anomaly_rate=0.0)]
    run1, v1 = log_version(client, detector, "damaged", heldout)
    assert promote_if_better(client, "damaged", v1, detector.predict, heldout, run_id=run1).passed
    stored = client.get_model_version_download_uri("krone-damaged", v1).removeprefix("file://")
    [weights] = Path(stored).rglob("detector.pt")
    weights.write_bytes(weights.read_bytes()[:100])  # a copy cut short
    for load in (lambda: load_version("damaged", v1), lambda: load_champion("damaged")):
        with pytest.raises(ModelUnloadable, match=r"krone-damaged (v1|@champion): its artifacts \(.*\) cannot be "
                                                  r"read back: RuntimeError: PytorchStreamReader"):
            load()

    run2, v2 = log_version(client, detector, "damaged", heldout)
    verdict = promote_if_better(client, "damaged", v2, detector.predict, heldout, run_id=run2)
    assert verdict.passed and verdict.champion_version is None and champion(client, "damaged") == v2
    assert verdict.reasons[1].startswith("ok: nothing to regress against: champion krone-damaged v1: its artifacts")

    _, v3 = log_version(client, detector, "damaged", heldout)
    client.set_registered_model_alias("krone-damaged", CHAMPION, v1)  # a rollback to the damaged one, by hand
    rerun = promote("damaged", v3)  # the gate re-runs without --force: nothing to compare with
    assert rerun is not None and rerun.passed and champion(client, "damaged") == v3
