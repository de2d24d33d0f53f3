"""The KRONE model in MLflow: one pyfunc per source, registered as ``krone-<source>``, served by alias.

The model is one unit (design contract): hierarchy + knowledge base + Nested-Aware weights + thresholds
(the :class:`RoutedDetector` directory, a safe tensors-and-lists format) + the template miner state. It is
logged *from code* (a three-line entry file that imports :class:`KroneModel`), so no pickled Python object
is stored and loading never unpickles; ``krone_jobs`` must therefore be importable where it is loaded.

The ``champion`` alias is what scoring loads (``models:/krone-<source>@champion``). It moves only through
:func:`promote_if_better`, whose validation gate compares candidate and champion on the *same* held-out
normal sessions, so a nightly retrain on a bad window can never silently replace a good model, and through
:func:`promote` (``krone promote``), where an operator picks a version (a rollback): the gate is re-run on
the held-out sessions kept with that version's run, or skipped with ``force``; who and why go into tags.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.entities.model_registry import ModelVersion
from mlflow.models.model import ModelInfo
from mlflow.types.schema import AnyType, ColSpec, Schema

from krone_jobs import serving
from krone_jobs.config import GATE_FP_BOUND, GATE_MIN_HELDOUT, GATE_TOLERANCE, settings
from krone_jobs.detectors.chunks import TABLES
from krone_jobs.detectors.router import RoutedDetector
from krone_jobs.detectors.verdict import SessionVerdict
from krone_jobs.evaluate import confusion
from krone_jobs.hierarchy.kseqs import LEVELS
from krone_jobs.hierarchy.model import Hierarchy
from krone_jobs.templates import TemplateStore

log = logging.getLogger(__name__)

CHAMPION = "champion"
MODEL_NAME = "model"  # the pyfunc's name inside its run
GATE_DIR = "gate"  # run artifacts the gate judged on, so it can be re-run by `krone promote`
HELDOUT_FILE = "heldout.parquet"
VALIDATION_FILE = "validation.parquet"
# Pinned, never inferred: inference starts a slow subprocess (stack.md). krone itself is not on an index:
# the loading side must have the package installed (it does: scoring runs in the same image).
PIP_REQUIREMENTS = [
    "mlflow==3.17.2",
    "torch==2.13.0",
    "numpy==2.4.6",
    "pandas==2.3.3",
    "scikit-learn==1.9.1",
    "drain3-improved==0.10.0",
]
OUTPUT_COLUMNS = ("anomalous", "level", "chunk_index", "span_start", "span_end", "detector", "score", "reason")
SIGNATURE = ModelSignature(
    inputs=Schema([
        ColSpec(AnyType(), "template_ids", required=False),  # a list of ids or one space-separated string
        ColSpec(AnyType(), "messages", required=False),  # or the lines' contents: a list, or one text
    ]),
    outputs=Schema([
        ColSpec("boolean", "anomalous"),
        ColSpec("string", "level", required=False),
        ColSpec("long", "chunk_index", required=False),
        ColSpec("long", "span_start", required=False),
        ColSpec("long", "span_end", required=False),
        ColSpec("string", "detector"),
        ColSpec("double", "score"),
        ColSpec("string", "reason"),
    ]),
)
_ENTRY = '''"""MLflow models-from-code entry for the KRONE pyfunc (nothing pickled)."""
import mlflow

from krone_jobs.model_registry import KroneModel

mlflow.models.set_model(KroneModel())
'''
_ID_TOKEN = re.compile(r"[^\s\[\]'\",]+")

Predictor = Callable[[Sequence[Sequence[str]]], np.ndarray]
"""Sessions -> 0/1 flags (1 = anomalous): what the gate needs from a candidate or a champion."""


class Validation(NamedTuple):
    """Labelled sessions (1 = anomalous) for the gate's recall check."""

    sessions: Sequence[Sequence[str]]
    labels: Sequence[int]


# ----------------------------------------------------------------------------------- input / output
def template_ids(value: object) -> tuple[str, ...]:
    """One session's template ids from a list/array, a space-separated string or a list written as text
    (``["a", "b"]``, as CSV writers render lists); missing values are an empty session."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ()
    if isinstance(value, str):
        return tuple(_ID_TOKEN.findall(value))
    if isinstance(value, Iterable):
        return tuple(str(x) for x in value)
    raise TypeError(f"template_ids must be a list or a string, not {type(value).__name__}")


def sessions_frame(sessions: Sequence[Sequence[str]]) -> pd.DataFrame:
    """The pyfunc's input for in-process callers."""
    return pd.DataFrame({"template_ids": [list(s) for s in sessions]})


def verdict_frame(verdicts: Sequence[SessionVerdict]) -> pd.DataFrame:
    """The pyfunc's output: one row per session, nullable where a normal session has no location.

    An infinite score (a never-seen error step) is given as the largest double: the scoring server writes
    floats as they are, and ``Infinity`` is not JSON, so strict clients (JavaScript, Go) would reject the
    very answers that matter most."""
    spans = [v.span or (None, None) for v in verdicts]
    return pd.DataFrame({
        "anomalous": pd.array([v.anomalous for v in verdicts], dtype="bool"),
        "level": pd.array([v.level for v in verdicts], dtype="string"),
        "chunk_index": pd.array([v.chunk_index for v in verdicts], dtype="Int64"),
        "span_start": pd.array([s[0] for s in spans], dtype="Int64"),
        "span_end": pd.array([s[1] for s in spans], dtype="Int64"),
        "detector": pd.array([v.detector for v in verdicts], dtype="string"),
        "score": np.minimum(np.asarray([v.score for v in verdicts], dtype=np.float64), np.finfo(np.float64).max),
        "reason": pd.array([v.reason for v in verdicts], dtype="string"),
    }, columns=list(OUTPUT_COLUMNS))


class KroneModel(mlflow.pyfunc.PythonModel):
    """The registered model: routed detection of sessions, given as template ids or as messages.

    ``template_ids``: what ``krone score`` sends; an id the model lacks flags its session ("not in the
    hierarchy"), since only the pipeline's hierarchy stage knows its text. ``messages`` (the content of
    each line, as the line format cuts it): matched with the miner state the model was trained with, and
    a message no template fits is placed by the offline rules and judged in context (``serving.py``).
    The templates placed so accumulate in the served model (their verdicts stay cached) up to
    ``MAX_PLACED``; past that it starts again from its trained state, so hostile input cannot grow it
    without bound. A lock keeps concurrent requests from interleaving with that.

    After loading, ``detector`` is the :class:`RoutedDetector` and ``templates`` the miner state it was
    trained with (``None`` if none was logged), for jobs that must match raw lines exactly as training did
    (``load_champion(source).unwrap_python_model().templates``).
    """

    MAX_PLACED = 10_000

    def load_context(self, context: Any) -> None:
        self._detector_path = context.artifacts["detector"]
        miner = context.artifacts.get("miner")
        try:
            self.detector = RoutedDetector.load(self._detector_path)
            self.templates = TemplateStore.from_json(Path(miner).read_text(encoding="utf-8")) if miner else None
        except MemoryError:
            raise  # the machine, not the model: may pass on a retry
        except Exception as exc:  # whatever a damaged file makes torch, JSON or the miner raise
            raise ModelUnloadable(f"its artifacts ({Path(self._detector_path).parent}) cannot be read back: "
                                  f"{type(exc).__name__}: {exc}") from exc
        self._lock = threading.Lock()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        columns = {"template_ids", "messages"} & set(model_input.columns)
        if len(columns) != 1:
            raise MlflowException.invalid_parameter_value(
                f"send exactly one of the columns template_ids and messages (got {sorted(model_input.columns)})")
        if "template_ids" in columns:
            with self._lock:
                return verdict_frame(self.detector.detect([template_ids(v) for v in model_input["template_ids"]]))
        if self.templates is None:
            raise MlflowException.invalid_parameter_value(
                "this model version was logged without a miner state: send template_ids")
        try:
            texts = [serving.messages(v, row) for row, v in enumerate(model_input["messages"])]
        except serving.BadMessages as err:
            raise MlflowException.invalid_parameter_value(str(err)) from None
        with self._lock:
            sessions, templates = serving.template_sessions(texts, self.templates)
            self._place(templates)
            return verdict_frame(self.detector.detect(sessions))

    def _place(self, templates: dict[str, str]) -> None:
        """Extend the served detector with the templates it lacks (see the class docstring for the cap)."""
        def lacking() -> dict[str, str]:
            return {tid: text for tid, text in templates.items() if tid not in self.detector.hierarchy_}

        new = lacking()
        if len(self.detector.hierarchy_) + len(new) - len(self.detector.hierarchy) > self.MAX_PLACED:
            self.detector = RoutedDetector.load(self._detector_path)
            new = lacking()
        if new:
            self.detector.extend_hierarchy(serving.placed(new, self.detector.hierarchy_))


# ---------------------------------------------------------------------------------------- tracking
def registered_name(source: str) -> str:
    return f"krone-{source}"


def connect(tracking_uri: str | None = None) -> MlflowClient:
    """Point MLflow (tracking and registry) at ``tracking_uri`` or krone's settings; a SQLite store's
    folder is created, because SQLite will not create it and the first run of a fresh checkout needs it."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri or settings().mlflow_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, source: str, artifact_root: str | None = None) -> str:
    """Experiment ``krone-<source>`` with an absolute artifact location (with a SQLite store MLflow would
    otherwise write to ``./mlruns`` of whatever the current directory is)."""
    name = registered_name(source)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    root = (artifact_root or settings().mlflow_artifacts).rstrip("/")
    return str(client.create_experiment(name, artifact_location=f"{root}/{name}"))


# ------------------------------------------------------------------------------------------ logging
def knowledge_base(detector: RoutedDetector) -> dict[str, list[dict[str, Any]]]:
    """The Local-Context knowledge base in node ids (what a person reads in the UI), sorted."""
    names = detector.local_.codebook_.names
    out: dict[str, list[dict[str, Any]]] = {}
    for li, level in enumerate(LEVELS):
        own_t, parent_t, _ = TABLES[level]
        rows = []
        for key in detector.local_.knowledge_[li]:
            parent = names[parent_t][key[0]] if parent_t is not None else ""
            nodes = key[1:] if parent_t is not None else key
            rows.append({"parent": parent, "nodes": [names[own_t][n] for n in nodes]})  # type: ignore[index]
        out[level] = sorted(rows, key=lambda r: (r["parent"], r["nodes"]))
    return out


def thresholds(detector: RoutedDetector) -> dict[str, Any]:
    """Per-level Nested-Aware thresholds (``null`` = never exceeded) and the routing settings."""
    nested = detector.nested_.thresholds_ if detector.nested_ is not None else {}
    return {
        "nested": {lvl: (t if math.isfinite(t) else None) for lvl, t in nested.items()},
        "llm_band": detector.llm_band,
        "automaton": bool(detector.local_.automaton_),
    }


def log_krone_model(detector: RoutedDetector, *, miner_state: str | None = None) -> ModelInfo:
    """Log the fitted detector (and miner state) as the pyfunc ``model`` of the active run, plus readable
    copies of its parts: ``hierarchy.csv``, ``knowledge_base.json``, ``thresholds.json``."""
    with tempfile.TemporaryDirectory(prefix="krone-model-") as tmp:
        work = Path(tmp)
        detector.save(work / "detector")
        artifacts = {"detector": str(work / "detector")}
        if miner_state is not None:
            (work / "miner.json").write_text(miner_state, encoding="utf-8")
            artifacts["miner"] = str(work / "miner.json")
        entry = work / "krone_model.py"
        entry.write_text(_ENTRY, encoding="utf-8")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*An input example was not provided")
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME, python_model=str(entry), artifacts=artifacts,
                pip_requirements=PIP_REQUIREMENTS, signature=SIGNATURE,
            )
        detector.hierarchy.save_csv(work / "hierarchy.csv")
        mlflow.log_artifact(str(work / "hierarchy.csv"))
    mlflow.log_dict(knowledge_base(detector), "knowledge_base.json")
    mlflow.log_dict(thresholds(detector), "thresholds.json")
    return info


# ----------------------------------------------------------------------------------------- registry
def register(run_id: str, source: str) -> str:
    """Register the run's logged ``model`` as a new version of ``krone-<source>``; returns the version."""
    run = mlflow.get_run(run_id)
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'",
        output_format="list",
    )
    if not models:
        raise LookupError(f"run {run_id} has no logged model named {MODEL_NAME!r}")
    version = mlflow.register_model(models[0].model_uri, registered_name(source), tags={"krone.source": source})
    return str(version.version)


def champion_version(client: MlflowClient, source: str) -> str | None:
    """The version the ``champion`` alias points at, ``None`` before the first promotion."""
    try:
        return str(client.get_model_version_by_alias(registered_name(source), CHAMPION).version)
    except MlflowException:
        return None


def champion_hierarchy(client: MlflowClient, source: str) -> tuple[Hierarchy | None, str | None]:
    """The champion's hierarchy (to extend with new templates only, keeping every node id) and its version."""
    version = champion_version(client, source)
    if version is None:
        return None, None
    run_id = client.get_model_version(registered_name(source), version).run_id
    with tempfile.TemporaryDirectory(prefix="krone-hierarchy-") as tmp:
        path = client.download_artifacts(run_id, "hierarchy.csv", tmp)
        return Hierarchy.load_csv(path), version


class ModelUnloadable(RuntimeError):
    """A registered version whose artifacts are there but cannot be read back (a damaged weights file, a
    miner state cut short): it can neither score nor be compared with, so a gate treats it as no champion
    and the next trained or promoted version that passes replaces it. ``version``: which one, where known."""

    def __init__(self, message: str, version: str | None = None) -> None:
        super().__init__(message)
        self.version = version


def load_version(source: str, version: str) -> mlflow.pyfunc.PyFuncModel:
    """``models:/krone-<source>/<version>`` (or ``@<alias>``); :class:`ModelUnloadable` names the version."""
    name = registered_name(source)
    alias = version.startswith("@")
    try:
        return mlflow.pyfunc.load_model(f"models:/{name}{version}" if alias else f"models:/{name}/{version}")
    except ModelUnloadable as exc:
        raise ModelUnloadable(f"{name} {version if alias else f'v{version}'}: {exc}") from exc


def load_champion(source: str, tracking_uri: str | None = None) -> mlflow.pyfunc.PyFuncModel:
    """What scoring uses: ``models:/krone-<source>@champion``."""
    connect(tracking_uri)
    return load_version(source, f"@{CHAMPION}")


def _comparable_champion(source: str, current: str) -> tuple[Predictor | None, str | None]:
    """The champion a gate compares with, or ``(None, why not)`` when its artifacts cannot be read back."""
    try:
        return pyfunc_predictor(load_version(source, current)), None
    except ModelUnloadable as exc:
        log.warning("gate: the champion cannot be loaded, so nothing is compared with it: %s", exc)
        return None, f"champion {exc}"


def log_gate_sessions(heldout: Sequence[Sequence[str]], validation: Validation | None = None) -> None:
    """Keep the run's held-out normal sessions (and labelled validation sessions) as artifacts of the active
    run, so that :func:`promote` can re-run the gate for this version later without its training data."""
    with tempfile.TemporaryDirectory(prefix="krone-gate-") as tmp:
        work = Path(tmp)
        pd.DataFrame({"template_ids": [list(s) for s in heldout]}).to_parquet(work / HELDOUT_FILE, index=False)
        mlflow.log_artifact(str(work / HELDOUT_FILE), GATE_DIR)
        if validation is not None:
            frame = pd.DataFrame({"template_ids": [list(s) for s in validation.sessions],
                                  "label": np.asarray(validation.labels, dtype=np.int8)})
            frame.to_parquet(work / VALIDATION_FILE, index=False)
            mlflow.log_artifact(str(work / VALIDATION_FILE), GATE_DIR)


def load_gate_sessions(
    client: MlflowClient, run_id: str
) -> tuple[list[tuple[str, ...]], Validation | None] | None:
    """The held-out sessions (and validation set, if any) that :func:`log_gate_sessions` kept with a run;
    ``None`` for runs logged before krone kept them."""
    names = {a.path for a in client.list_artifacts(run_id, GATE_DIR)}
    if f"{GATE_DIR}/{HELDOUT_FILE}" not in names:
        return None
    with tempfile.TemporaryDirectory(prefix="krone-gate-") as tmp:
        heldout = pd.read_parquet(client.download_artifacts(run_id, f"{GATE_DIR}/{HELDOUT_FILE}", tmp))
        sessions = [template_ids(v) for v in heldout["template_ids"]]
        if f"{GATE_DIR}/{VALIDATION_FILE}" not in names:
            return sessions, None
        frame = pd.read_parquet(client.download_artifacts(run_id, f"{GATE_DIR}/{VALIDATION_FILE}", tmp))
        return sessions, Validation([template_ids(v) for v in frame["template_ids"]], frame["label"].tolist())


def pyfunc_predictor(model: mlflow.pyfunc.PyFuncModel) -> Predictor:
    """A loaded model as the gate sees it (flags only)."""
    return lambda sessions: model.predict(sessions_frame(sessions))["anomalous"].to_numpy(dtype=np.int8)


# --------------------------------------------------------------------------------------------- gate
@dataclass(frozen=True)
class GateVerdict:
    """Why the champion alias moved or stayed: every check in words (``ok:``/``FAIL:``) and the figures."""

    passed: bool
    reasons: tuple[str, ...]
    candidate_fp_rate: float
    champion_fp_rate: float | None
    candidate_recall: float | None
    champion_recall: float | None
    champion_version: str | None
    n_heldout: int
    n_validation: int
    fp_bound: float
    tolerance: float
    min_heldout: int = GATE_MIN_HELDOUT

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (tuples as lists, an unmeasurable NaN as ``null``)."""
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}


def _fp_rate(predict: Predictor, sessions: Sequence[Sequence[str]]) -> float:
    return float(np.mean(predict(sessions))) if len(sessions) else math.nan


def fp_upper_bound(rate: float, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a false-positive rate observed on ``n`` sessions."""
    from scipy.stats import beta

    k = round(rate * n)
    return 1.0 if k >= n else float(beta.ppf(confidence, k + 1, n - k))


def _recall(predict: Predictor, validation: Validation) -> float:
    return float(confusion(np.asarray(validation.labels), predict(validation.sessions))["recall"])


def gate(
    candidate: Predictor,
    heldout: Sequence[Sequence[str]],
    *,
    champion: Predictor | None = None,
    champion_version: str | None = None,
    validation: Validation | None = None,
    fp_bound: float = GATE_FP_BOUND,
    tolerance: float = GATE_TOLERANCE,
    min_heldout: int = GATE_MIN_HELDOUT,
    champion_unloadable: str | None = None,
) -> GateVerdict:
    """Judge a candidate on held-out *normal* sessions (and optional labelled ones), against the champion
    evaluated on the very same sessions, so the comparison measures the models and not the data. Fewer
    than ``min_heldout`` held-out sessions fail the gate: a rate measured on them says nothing.
    ``champion_unloadable`` says why a champion there is cannot be compared with (its reason in the verdict)."""
    reasons: list[str] = []
    ok = True

    def check(passed: bool, text: str) -> None:
        nonlocal ok
        ok &= passed
        reasons.append(("ok: " if passed else "FAIL: ") + text)

    n = len(heldout)
    if n < min_heldout:
        check(False, f"{n} held-out normal sessions, fewer than {min_heldout}: too few to measure a false-positive "
              "rate (train on a longer window or with a larger --holdout, or promote with --force)")
    cand_fp = _fp_rate(candidate, heldout)
    if not math.isnan(cand_fp):
        check(cand_fp <= fp_bound, f"held-out false-positive rate {cand_fp:.4f} vs bound {fp_bound:.4f} "
              f"({round(cand_fp * n)} of {n} sessions; 95 % upper bound {fp_upper_bound(cand_fp, n):.4f})")
    champ_fp = _fp_rate(champion, heldout) if champion is not None else None
    if champ_fp is None:
        reasons.append(f"ok: nothing to regress against: {champion_unloadable}" if champion_unloadable else
                       "ok: no champion yet, nothing to regress against")
    elif not math.isnan(cand_fp):
        check(cand_fp <= champ_fp + tolerance, f"false-positive rate {cand_fp:.4f} vs champion v{champion_version} "
              f"{champ_fp:.4f} + tolerance {tolerance:.4f} on the same {len(heldout)} sessions")
    cand_recall = champ_recall = None
    n_validation = len(validation.sessions) if validation is not None else 0
    if validation is not None and n_validation:
        cand_recall = _recall(candidate, validation)
        if champion is not None:
            champ_recall = _recall(champion, validation)
            check(cand_recall >= champ_recall, f"recall {cand_recall:.4f} vs champion v{champion_version} "
                  f"{champ_recall:.4f} on {n_validation} labelled sessions")
    return GateVerdict(ok, tuple(reasons), cand_fp, champ_fp, cand_recall, champ_recall, champion_version,
                       n, n_validation, fp_bound, tolerance, min_heldout)


def promote_if_better(
    client: MlflowClient,
    source: str,
    version: str,
    candidate: Predictor,
    heldout: Sequence[Sequence[str]],
    *,
    run_id: str,
    validation: Validation | None = None,
    fp_bound: float = GATE_FP_BOUND,
    tolerance: float = GATE_TOLERANCE,
    min_heldout: int = GATE_MIN_HELDOUT,
) -> GateVerdict:
    """Run the gate against the current champion, record the verdict (run params/metrics, ``gate.json``,
    model-version tags) and move ``champion`` to ``version`` only if it passed."""
    name = registered_name(source)
    current = champion_version(client, source)
    champion, unloadable = None, None
    if current is not None and current != version:
        champion, unloadable = _comparable_champion(source, current)
    verdict = gate(candidate, heldout, champion=champion, champion_version=current if champion else None,
                   validation=validation, fp_bound=fp_bound, tolerance=tolerance, min_heldout=min_heldout,
                   champion_unloadable=unloadable)
    _record(client, run_id, name, version, verdict)
    if verdict.passed:
        client.set_registered_model_alias(name, CHAMPION, version)
    return verdict


def _record(client: MlflowClient, run_id: str, name: str, version: str, verdict: GateVerdict) -> None:
    for key, value in (("fp_bound", verdict.fp_bound), ("tolerance", verdict.tolerance),
                       ("min_heldout", verdict.min_heldout),
                       ("champion_version", verdict.champion_version or "none"),
                       ("n_heldout", verdict.n_heldout), ("n_validation", verdict.n_validation)):
        client.log_param(run_id, f"gate_{key}", value)
    client.log_metric(run_id, "gate_passed", float(verdict.passed))
    for key in ("candidate_fp_rate", "champion_fp_rate", "candidate_recall", "champion_recall"):
        value = getattr(verdict, key)
        if value is not None and not math.isnan(value):
            client.log_metric(run_id, f"gate_{key}", value)
    client.log_dict(run_id, verdict.to_dict(), "gate.json")
    client.set_tag(run_id, "krone.gate", "passed" if verdict.passed else "refused")
    tags = {"gate.passed": str(verdict.passed).lower(), "gate.reasons": "; ".join(verdict.reasons),
            "gate.candidate_fp_rate": f"{verdict.candidate_fp_rate:.6f}",
            "gate.champion_version": verdict.champion_version or "none"}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


# ------------------------------------------------------------------------------------------ promote
class NoChampion(LookupError):
    """``krone-<source>`` has no ``champion`` yet: nothing may score until a version passes the gate."""


class PromotionRefused(RuntimeError):
    """``krone promote`` may not move the alias: the gate refused the version or cannot be re-run."""


def model_version(client: MlflowClient, source: str, version: str) -> ModelVersion:
    """The registered version, or a LookupError that lists the versions there are (operators mistype)."""
    name = registered_name(source)
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        known = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        listing = ", ".join(map(str, known)) or "none"
        raise LookupError(f"{name} has no version {version!r} (registered versions: {listing})") from None


def regate(
    client: MlflowClient,
    source: str,
    target: ModelVersion,
    *,
    fp_bound: float | None = None,
    tolerance: float | None = None,
    min_heldout: int | None = None,
) -> GateVerdict:
    """Re-run the gate on ``target`` against the current champion, on the held-out sessions logged with
    ``target``'s training run (which ``target`` never saw; the champion may have, so the check leans
    towards keeping it). Bounds default to those ``target`` was gated with when it was trained."""
    name = registered_name(source)
    logged = load_gate_sessions(client, target.run_id)
    if logged is None:
        raise PromotionRefused(
            f"{name} v{target.version} (run {target.run_id}) has no held-out sessions logged with it, so the gate "
            f"cannot be re-run: pass --force (with --reason) to promote it anyway")
    heldout, validation = logged
    params = client.get_run(target.run_id).data.params
    bound = fp_bound if fp_bound is not None else float(params.get("gate_fp_bound", GATE_FP_BOUND))
    tol = tolerance if tolerance is not None else float(params.get("gate_tolerance", GATE_TOLERANCE))
    least = min_heldout if min_heldout is not None else int(params.get("gate_min_heldout", GATE_MIN_HELDOUT))
    current = champion_version(client, source)
    champion, unloadable = _comparable_champion(source, current) if current else (None, None)
    candidate = pyfunc_predictor(load_version(source, str(target.version)))
    return gate(candidate, heldout, champion=champion, champion_version=current if champion else None,
                validation=validation, fp_bound=bound, tolerance=tol, min_heldout=least,
                champion_unloadable=unloadable)


def promoted_by() -> str:
    """Who is promoting: the login name (``$USER``), as the audit tag records it."""
    return os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"


def _tag_promotion(
    client: MlflowClient, name: str, version: str, *, previous: str | None, forced: bool, reason: str,
    verdict: GateVerdict | None,
) -> None:
    """Audit tags on the version: who moved the alias, why, from which version, and whether the gate agreed."""
    from datetime import datetime, timezone

    tags = {"krone.promoted_by": promoted_by(), "krone.promote_reason": reason,
            "krone.promoted_from": previous or "none", "krone.promoted_at": datetime.now(timezone.utc).isoformat(),
            "krone.promote_mode": "forced" if forced else "gate"}
    if verdict is not None:
        tags["krone.promote_gate_reasons"] = "; ".join(verdict.reasons)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def promote(
    source: str,
    version: str,
    *,
    tracking_uri: str | None = None,
    force: bool = False,
    reason: str = "",
    fp_bound: float | None = None,
    tolerance: float | None = None,
    min_heldout: int | None = None,
) -> GateVerdict | None:
    """An operator moves ``champion`` to a registered version (a rollback, or a refused candidate they trust).

    Without ``force`` the gate is re-run (:func:`regate`) and the alias moves only if it passes (a version
    without logged held-out sessions raises :class:`PromotionRefused`: it needs ``force``). With ``force``
    the alias moves as asked. A promoted version is tagged with who, why and from which version. Returns
    the gate's verdict (``passed`` says whether the alias moved), ``None`` when forced or when ``version``
    already is the champion (nothing changes then). An unknown version raises LookupError."""
    from krone_jobs.partitions import check_source

    client = connect(tracking_uri)
    name = registered_name(check_source(source))
    target = model_version(client, source, version)
    version = str(target.version)
    previous = champion_version(client, source)
    if previous == version:
        return None
    verdict = None if force else regate(client, source, target, fp_bound=fp_bound, tolerance=tolerance,
                                        min_heldout=min_heldout)
    if verdict is not None and not verdict.passed:
        client.set_model_version_tag(name, version, "krone.promote_refused", "; ".join(verdict.reasons))
        return verdict
    client.set_registered_model_alias(name, CHAMPION, version)
    _tag_promotion(client, name, version, previous=previous, forced=force, reason=reason, verdict=verdict)
    return verdict


def add_promote_arguments(p: argparse.ArgumentParser) -> None:
    """The ``krone promote`` options (the lead wires them into ``krone_jobs/cli.py``)."""
    p.add_argument("--source", required=True, help="registered model krone-<source>")
    p.add_argument("--version", required=True, help="the registered version to make champion")
    p.add_argument("--force", action="store_true", help="move the alias without re-running the gate")
    p.add_argument("--reason", default="", help="why (kept in the version's tags with $USER)")
    p.add_argument("--fp-bound", type=float, default=None,
                   help="gate bound (default: the one the version was trained with)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="allowed FP-rate excess over the champion (default: as trained)")
    p.add_argument("--min-heldout", type=int, default=None,
                   help="fewest held-out normal sessions the gate accepts (default: as trained)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: KRONE_MLFLOW_URI / settings)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def main_promote(args: argparse.Namespace) -> int:
    """``krone promote``: exit 0 when ``champion`` points at the version afterwards, 1 when the gate refused
    it (reasons printed); an unknown version or a gate that cannot be re-run exits with the reason."""
    client = connect(args.tracking_uri)
    before = champion_version(client, args.source)
    try:
        verdict = promote(args.source, args.version, tracking_uri=args.tracking_uri, force=args.force,
                          reason=args.reason, fp_bound=args.fp_bound, tolerance=args.tolerance,
                          min_heldout=args.min_heldout)
    except (LookupError, PromotionRefused) as e:
        raise SystemExit(f"krone promote: {e}") from None
    after = champion_version(client, args.source)
    refused = verdict is not None and not verdict.passed
    how = ("forced" if args.force else "already champion" if verdict is None
           else "gate refused: pass --force with --reason to promote anyway" if refused else "gate passed")
    if args.json:
        print(json.dumps({"source": args.source, "champion": after, "previous": before, "promoted": not refused,
                          "how": how, "gate": verdict.to_dict() if verdict is not None else None}))
    else:
        print(f"{registered_name(args.source)} v{args.version}: champion v{before or '-'} -> v{after or '-'} ({how})")
        for line in verdict.reasons if verdict is not None else ():
            print(f"  {line}")
    return 1 if refused else 0
