"""The train stage: fit a KRONE model on normal sessions, track it in MLflow, register it, gate it.

One call of :func:`train` is one MLflow run in experiment ``krone-<source>``: the hierarchy is grown from
the champion's (new templates only, so node ids never move; human overrides win), a seeded share of the
normal sessions is held out, a :class:`RoutedDetector` is fitted on the rest, the model is logged and
registered as a new version of ``krone-<source>``, and the validation gate decides whether ``champion``
moves to it: the held-out false-positive rate must be within ``fp_bound`` (its 95 % upper bound is in the
reason), measured on at least ``min_heldout`` sessions, and no worse than the champion's on the same ones.
A refused candidate stays registered (with the gate's verdict in its tags) for inspection.

Determinism: for the same inputs, seed and torch thread count a run is reproducible (same split,
thresholds and verdicts). The held-out split uses ``RandomState(seed)``; the Nested-Aware detector gets
``seed`` (it calls ``torch.manual_seed`` and seeds its own generators); Python's, NumPy's and torch's
global generators are seeded as well for extractors that draw from them. CPU float reductions can differ
with the number of threads (``torch.get_num_threads()``), so compare runs on the same configuration.

Pipeline mode (:func:`train_partitions`, ``krone train --source S --end D --days 7``): the sessions come
from the ``sessions/`` partitions of the window, the hierarchy from the hierarchy job (node ids are the
pipeline's) and the miner state of the window's end (shipped in the model). Sessions labelled anomalous
and sessions a previous champion reported (warehouse ``anomaly_reports``) are not trained on; chunks that
operators marked normal join the knowledge base before the gate. The held-out sessions are logged with the
run (``gate/heldout.parquet``) so that ``krone promote`` can re-run the gate later.

Heavy modules (torch, mlflow, pandas) are imported inside functions: DAG files import this module when parsed.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from krone_jobs.config import GATE_FP_BOUND, GATE_MIN_HELDOUT, GATE_TOLERANCE, settings
from krone_jobs.hierarchy.extractor import HierarchyExtractor, build_hierarchy
from krone_jobs.hierarchy.model import Hierarchy, load_overrides
from krone_jobs.partitions import check_date, check_source, latest_before, partition_dir, read_table, stage_dir

if TYPE_CHECKING:
    import pandas as pd

    from krone_jobs.detectors.router import RoutedDetector
    from krone_jobs.model_registry import GateVerdict
    from krone_jobs.templates import TemplateStore
    from krone_jobs.warehouse import Warehouse

T = TypeVar("T")

HOLDOUT = 0.1
DATASETS = ("hdfs-demo", "thunderbird-demo")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """The run, the registered version, the gate's verdict, where things are, and the fitted detector
    (for in-process callers; everything else reaches the model through the registry)."""

    run_id: str
    model_version: str
    gate: GateVerdict
    paths: dict[str, str]
    metrics: dict[str, float]
    detector: RoutedDetector = field(repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "model_version": self.model_version, "promoted": self.gate.passed,
                "gate": self.gate.to_dict(), "paths": self.paths, "metrics": self.metrics}


def seed_everything(seed: int) -> None:
    """Seed the global generators (Python, NumPy, torch) that anything outside the detector might use."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_heldout(
    sessions: Sequence[tuple[str, ...]], share: float, seed: int
) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(fit, held-out) by a seeded permutation; both keep input order. At least one session is fitted."""
    held = heldout_mask(len(sessions), share, seed)
    return [s for s, h in zip(sessions, held) if not h], [s for s, h in zip(sessions, held) if h]


def heldout_mask(n: int, share: float, seed: int) -> list[bool]:
    """Which of ``n`` sessions :func:`split_heldout` holds out."""
    k = min(int(round(n * share)), max(n - 1, 0))
    held = set(np.random.RandomState(seed).permutation(n)[:k].tolist())
    return [i in held for i in range(n)]


def resolve_hierarchy(
    templates: Mapping[str, str],
    *,
    hierarchy: Hierarchy | None,
    base: Hierarchy | None,
    extractor: HierarchyExtractor | None,
    overrides_path: str | Path | None,
) -> Hierarchy:
    """A given hierarchy is used as is; otherwise ``base`` grows by the templates it lacks (offline
    extractor by default). Overrides win either way."""
    if hierarchy is not None:
        overrides = load_overrides(overrides_path, hierarchy) if overrides_path else []
        return hierarchy.with_overrides(overrides) if overrides else hierarchy
    if extractor is None:
        from krone_jobs.hierarchy.offline import OfflineExtractor

        extractor = OfflineExtractor()
    overrides = load_overrides(overrides_path, base) if overrides_path else []
    return build_hierarchy(templates, extractor, base, overrides)


def apply_normal_keys(detector: RoutedDetector, keys: Sequence[str]) -> int:
    """Add operator-approved level keys to the fitted detector's knowledge base; returns how many it took
    (a key naming a node this hierarchy lacks cannot occur with this model and is skipped)."""
    applied = 0
    for key in dict.fromkeys(keys):
        if detector.add_normal(key):
            applied += 1
        else:
            log.warning("feedback key %r names a level or node this model does not know: skipped", key)
    return applied


def _finite(values: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if np.isfinite(v)}


def _run_record(
    detector: RoutedDetector, *, n_sessions: int, n_fit: int, n_heldout: int, seconds: float, base: Hierarchy | None
) -> tuple[dict[str, Any], dict[str, float]]:
    """Params and metrics of one training run."""
    hierarchy = detector.hierarchy
    nested = detector.nested_
    params: dict[str, Any] = {"n_sessions": n_sessions, "n_heldout_sessions": n_heldout,
                              "llm_band": detector.llm_band, "automaton": detector.local_.automaton_}
    if nested is not None:
        params.update({f"nested_{k}": v for k, v in nested.get_params().items() if k != "hierarchy"})
        params["nested_fold_kind"] = nested.fold_kind_
    params.update({f"hierarchy_origin_{k}": v for k, v in sorted(Counter(n.origin for n in hierarchy.nodes()).items())})
    metrics: dict[str, float] = {
        "n_train_sessions": n_fit,
        "n_skipped_sessions": detector.local_.n_skipped_sessions_,
        "n_templates": len(hierarchy),
        "n_new_templates": len(hierarchy) - (len(base) if base is not None else 0),
        "train_seconds": round(seconds, 3),
        **{f"n_{lvl}_nodes": hierarchy.count(lvl) for lvl in ("entity", "action", "status")},
        **{f"kb_{lvl}_seqs": len(kb) for lvl, kb in zip(("status", "action", "entity"), detector.local_.knowledge_)},
    }
    if nested is not None:
        metrics.update({f"threshold_{k}": v for k, v in _finite(nested.thresholds_).items()})
        metrics.update({f"nested_loss_{k}": v for k, v in _finite(nested.losses_).items()})
    return params, metrics


def train(
    source: str,
    sessions: Sequence[Sequence[str]],
    templates: Mapping[str, str],
    *,
    hierarchy: Hierarchy | None = None,
    extractor: HierarchyExtractor | None = None,
    overrides_path: str | Path | None = None,
    validation: tuple[Sequence[Sequence[str]], Sequence[int]] | None = None,
    days: Sequence[str] | None = None,
    seed: int = 0,
    nested_params: Mapping[str, Any] | None = None,
    holdout: float = HOLDOUT,
    fp_bound: float = GATE_FP_BOUND,
    tolerance: float = GATE_TOLERANCE,
    min_heldout: int = GATE_MIN_HELDOUT,
    miner_state: str | None = None,
    tracking_uri: str | None = None,
    artifact_root: str | None = None,
    normal_keys: Sequence[str] = (),
    extra_params: Mapping[str, Any] | None = None,
    extra_metrics: Mapping[str, float] | None = None,
    data: TrainingData | None = None,
) -> TrainResult:
    """Train on ``sessions`` (normal ones: template-id sequences), log and register ``krone-<source>``,
    and promote it to ``champion`` if the gate passes (see the module docstring).

    ``normal_keys`` (level keys operators marked normal) join the knowledge base right after fitting, so
    the logged model and the gate already treat them as known; ``extra_params``/``extra_metrics`` are
    logged with the run (e.g. the training window). ``days`` (each session's day) makes the Nested-Aware
    model's cross-fitting folds days (:meth:`NestedAwareDetector.fit`)."""
    import mlflow

    from krone_jobs import model_registry as registry
    from krone_jobs.detectors.router import RoutedDetector
    from krone_jobs.templates import TemplateStore

    seed_everything(seed)
    if miner_state is not None:
        TemplateStore.from_json(miner_state)  # a broken state must fail here, not when scoring loads the model
    client = registry.connect(tracking_uri)
    experiment_id = registry.ensure_experiment(client, source, artifact_root)
    base, base_version = (None, None) if hierarchy is not None else registry.champion_hierarchy(client, source)
    hierarchy = resolve_hierarchy(templates, hierarchy=hierarchy, base=base, extractor=extractor,
                                  overrides_path=overrides_path)
    held = heldout_mask(len(sessions), holdout, seed)
    fit_set = [tuple(s) for s, h in zip(sessions, held) if not h]
    heldout = [tuple(s) for s, h in zip(sessions, held) if h]
    fit_days = [d for d, h in zip(days, held) if not h] if days is not None else None
    detector = RoutedDetector(hierarchy, nested_params={"seed": seed, "fp_budget": settings().fp_budget,
                                                        **(nested_params or {})})
    checked = registry.Validation(*validation) if validation is not None else None

    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{source}") as run:
        run_id = run.info.run_id
        t0 = time.perf_counter()
        detector.fit(fit_set, groups=fit_days)
        seconds = time.perf_counter() - t0
        applied = apply_normal_keys(detector, normal_keys)  # before anything is logged or gated
        params, metrics = _run_record(detector, n_sessions=len(sessions), n_fit=len(fit_set),
                                      n_heldout=len(heldout), seconds=seconds, base=base)
        metrics.update({"n_feedback_normal_keys": applied, **(extra_metrics or {})})
        mlflow.log_params({"source": source, "seed": seed, "holdout": holdout, "miner_state": miner_state is not None,
                           "hierarchy_base_version": base_version or "none", **params, **(extra_params or {})})
        mlflow.log_metrics(metrics)
        if data is not None:
            data.log()
        info = registry.log_krone_model(detector, miner_state=miner_state)
        registry.log_gate_sessions(heldout, checked)
        version = registry.register(run_id, source)
        verdict = registry.promote_if_better(client, source, version, detector.predict, heldout, run_id=run_id,
                                             validation=checked, fp_bound=fp_bound, tolerance=tolerance,
                                             min_heldout=min_heldout)
        heldout_fp = _finite({"heldout_fp_rate": verdict.candidate_fp_rate})  # NaN when nothing was held out
        mlflow.log_metrics(heldout_fp)
        metrics.update(heldout_fp)
        paths = {"tracking_uri": mlflow.get_tracking_uri(), "artifact_uri": run.info.artifact_uri,
                 "model_uri": f"models:/{registry.registered_name(source)}/{version}",
                 "logged_model_uri": info.model_uri}
    return TrainResult(run_id, version, verdict, paths, metrics, detector)


# ----------------------------------------------------------------------------------------- inputs
_ANOMALOUS = frozenset({"1", "anomaly", "anomalous", "abnormal", "true", "yes"})
_NORMAL = frozenset({"0", "normal", "false", "no", ""})


def label_flags(values: Any, path: Path) -> np.ndarray:
    """0/1 per label: a number > 0 or ``Anomaly``/``Anomalous``/``Abnormal``/``true``/``yes`` (any case) is
    anomalous; 0, ``Normal``, ``false``, ``no`` or a missing value is normal. Any other value is refused
    with the values named: read as normal, a spelling we do not know would put anomalies into training."""
    import pandas as pd

    series = pd.Series(values)
    numeric = pd.to_numeric(series, errors="coerce")
    text = series.astype("string").str.strip().str.lower().fillna("")
    known = numeric.notna() | text.isin(_ANOMALOUS | _NORMAL)
    if not known.all():
        odd = sorted(set(series[~known].astype(str)))
        raise ValueError(f"{path}: label value(s) {odd[:5]} are neither a number nor one of "
                         f"{sorted(_ANOMALOUS | _NORMAL - {''})}")
    return ((numeric > 0) | text.isin(_ANOMALOUS)).to_numpy(dtype=np.int8)


def read_sessions(path: Path, *, require_label: bool = False) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """Sessions and 0/1 labels (missing label = normal) from Parquet (file or folder) or CSV with columns
    ``session_id``, ``template_ids`` (list or space-separated) and ``label`` (optional unless required)."""
    import pandas as pd

    from krone_jobs.model_registry import template_ids

    parquet = path.is_dir() or path.suffix in (".parquet", ".pq")
    frame = pd.read_parquet(path) if parquet else pd.read_csv(path, dtype={"session_id": str, "template_ids": str})
    missing = {"session_id", "template_ids", *(("label",) if require_label else ())} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    labels = label_flags(frame["label"], path) if "label" in frame.columns else np.zeros(len(frame), dtype=np.int8)
    return [template_ids(v) for v in frame["template_ids"]], labels


def read_templates(path: Path) -> dict[str, str]:
    """``template_id,template`` CSV -> mapping."""
    with open(path, newline="", encoding="utf-8") as fh:
        return {str(row["template_id"]).strip(): row["template"] for row in csv.DictReader(fh)}


# ------------------------------------------------------------------------------ pipeline partitions
class NoTrainingData(ValueError):
    """The training window holds nothing to train on: no sessions partition, or no normal session left."""


@dataclass(frozen=True)
class WindowSessions:
    """The normal sessions of a training window, and what was left out and why (logged with the run)."""

    dates: tuple[str, ...]
    partitions: tuple[str, ...]
    sessions: list[tuple[str, ...]]
    days: list[str]
    """Each session's day (the ``sessions/`` partition it was read from)."""
    n_read: int
    n_excluded_labelled: int
    n_excluded_reported: int
    reports_checked: bool

    def params(self) -> dict[str, Any]:
        return {"window_start": self.dates[0], "window_end": self.dates[-1], "window_days": len(self.dates),
                "window_partitions": ",".join(self.partitions), "reports_checked": self.reports_checked}

    def metrics(self) -> dict[str, float]:
        return {"n_window_partitions": len(self.partitions), "n_window_sessions": self.n_read,
                "n_excluded_labelled": self.n_excluded_labelled, "n_excluded_reported": self.n_excluded_reported}


def window_dates(end: str, days: int) -> list[str]:
    """The ``days`` calendar days that end at ``end`` (inclusive), oldest first."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    last = date.fromisoformat(check_date(end))
    return [(last - timedelta(days=i)).isoformat() for i in range(days - 1, -1, -1)]


@dataclass(frozen=True)
class TrainingData:
    """Which partitions a pipeline training run read, for its MLflow run: one dataset input (context
    ``training``) named ``krone-<source>-sessions``, whose source is the sessions folder and whose digest is
    made of the partitions' content ids (:func:`krone_jobs.lineage.content_id`), so two runs on the same data
    show the same digest; and ``training_partitions.json``, each day's content id and rows."""

    source: str
    folder: Path
    partitions: Mapping[str, Mapping[str, Any]]

    @classmethod
    def of(cls, root: Path, source: str, days: Sequence[str], rows: Mapping[str, int]) -> TrainingData:
        from krone_jobs.lineage import content_id

        return cls(source, stage_dir(root, "sessions", source),
                   {dt: {"content_id": content_id(partition_dir(root, "sessions", source, dt)), "rows": rows[dt]}
                    for dt in days})

    @property
    def digest(self) -> str:
        from krone_jobs.lineage import json_digest

        return json_digest({dt: p["content_id"] for dt, p in self.partitions.items()})[:16]

    def log(self) -> None:
        """Log both to the active MLflow run."""
        import mlflow
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource

        dataset = MetaDataset(LocalArtifactDatasetSource(self.folder.resolve().as_uri()),
                              name=f"krone-{self.source}-sessions", digest=self.digest)
        mlflow.log_input(dataset, context="training")
        mlflow.log_dict({"folder": str(self.folder), "digest": self.digest, "partitions": dict(self.partitions)},
                        "training_partitions.json")


def read_window(root: Path, source: str, dates: Sequence[str]) -> tuple[tuple[str, ...], pd.DataFrame]:
    """(partitions found, their sessions: session_id, template_ids, dt), sorted by session id so the seeded
    held-out split does not depend on how the sessionize job laid out its files."""
    import pandas as pd

    found = tuple(dt for dt in dates if partition_dir(root, "sessions", source, dt).is_dir())
    if not found:
        where = partition_dir(root, "sessions", source, "*")
        raise NoTrainingData(f"no sessions partition for source={source} in {dates[0]}..{dates[-1]} ({where}): "
                             f"run `krone sessionize` for those days or pick another --end/--days")
    frames = [read_table(partition_dir(root, "sessions", source, dt), columns=["session_id", "template_ids"])
              .to_pandas().assign(dt=dt) for dt in found]
    frame = pd.concat(frames, ignore_index=True).sort_values("session_id", kind="stable", ignore_index=True)
    return found, frame


def anomalous_labels(path: Path) -> set[str]:
    """Session ids labelled anomalous in a ``session_id,label`` CSV (the generator writes one; column names
    in any case, and Loghub's HDFS ``BlockId,Label`` file as it comes; labels as :func:`label_flags` reads)."""
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = {c.strip().lower(): c for c in frame.columns}
    session = columns.get("session_id") or columns.get("blockid")
    if session is None or "label" not in columns:
        missing = [name for name, found in (("session_id", session), ("label", columns.get("label"))) if not found]
        raise ValueError(f"{path}: missing column(s) {missing}")
    flagged = label_flags(frame[columns["label"]], path).astype(bool)
    return set(frame.loc[flagged, session])


def _warehouse_absent(url: str) -> bool:
    """A DuckDB warehouse whose file does not exist yet: nothing to ask, and asking would create it."""
    from sqlalchemy import make_url

    parsed = make_url(url)
    database = parsed.database
    local_file = parsed.get_backend_name() == "duckdb" and database not in (None, "", ":memory:")
    return local_file and not Path(str(database)).exists()


def _ask_warehouse(url: str, what: str, query: Callable[[Warehouse], T]) -> T | None:
    """``query`` on the warehouse, or ``None`` (logged) when it cannot answer: training must not need it."""
    from sqlalchemy.exc import SQLAlchemyError

    from krone_jobs.warehouse import Warehouse, WarehouseUnavailable

    if _warehouse_absent(url):
        log.info("no warehouse at %s yet: no %s", url, what)
        return None
    try:
        with Warehouse(url) as wh:
            return query(wh)
    except (WarehouseUnavailable, SQLAlchemyError) as e:
        log.warning("warehouse cannot give the %s, continuing without: %s", what, _first_line(url, e))
        return None


def _first_line(url: str, error: Exception) -> str:
    """The error's first line (SQLAlchemy appends the statement) with the URL's password masked."""
    from sqlalchemy import make_url

    line = (str(error).splitlines() or [type(error).__name__])[0]
    password = make_url(url).password
    return line.replace(str(password), "***") if password else line


def reported_sessions(url: str, source: str, start: str, end: str) -> set[str] | None:
    """Session ids in ``anomaly_reports`` for (source, dt in [start, end]): a previous champion flagged them,
    so they are not trusted as normal. ``None`` when the warehouse cannot say."""
    return _ask_warehouse(url, "anomaly reports to exclude", lambda wh: wh.reported_sessions(source, start, end))


def feedback_normal_keys(url: str, source: str) -> list[str]:
    """Level keys of chunks whose newest operator feedback says normal, sorted (deterministic runs); none
    when the warehouse cannot say. Feedback without a level key cannot reach the knowledge base."""
    found = _ask_warehouse(url, "operator feedback", lambda wh: wh.normal_feedback(source)) or {}
    return sorted({k for k in found.values() if k})


def resolve_ids(ids: Sequence[str], store: TemplateStore) -> tuple[str, ...]:
    """Every id as the shipped miner state's live id: Drain may have generalised a template since the
    session was written, and the hierarchy keeps superseded ids too, so a session of the morning and one of
    the evening must not hold two ids for one event. Scoring maps its day's ids onto these
    (:func:`krone_jobs.jobs.score.model_ids`)."""
    return tuple(store.resolve(t) for t in ids)


def select_normal(
    frame: pd.DataFrame, dates: Sequence[str], found: tuple[str, ...], *, source: str, store: TemplateStore,
    labels: Path | None, reported: set[str] | None,
) -> WindowSessions:
    """The window's sessions (:func:`read_window`) minus labelled anomalies and reported sessions, ids
    resolved."""
    from krone_jobs.model_registry import template_ids

    ids = frame["session_id"].astype(str)
    bad = anomalous_labels(labels) if labels is not None else set()
    labelled = ids.isin(bad)
    flagged = ids.isin(reported or set()) & ~labelled
    keep = frame.loc[~(labelled | flagged)]
    if keep.empty:
        raise NoTrainingData(f"no normal session left in {dates[0]}..{dates[-1]} for source={source}: "
                             f"{len(frame)} read, {int(labelled.sum())} labelled anomalous, "
                             f"{int(flagged.sum())} reported by the champion")
    sessions = [resolve_ids(template_ids(v), store) for v in keep["template_ids"]]
    return WindowSessions(tuple(dates), found, sessions, keep["dt"].tolist(), len(frame), int(labelled.sum()),
                          int(flagged.sum()), reported is not None)


def _miner_state(root: Path, source: str, end: str) -> tuple[str, TemplateStore, str]:
    """(miner state JSON as the parse job wrote it, its store, its day): the newest at or before ``end``."""
    from krone_jobs.miner_state import parse_state, templates_dir

    path = latest_before(templates_dir(root, source), end, inclusive=True)
    if path is None:
        raise FileNotFoundError(f"no miner state for source={source} at or before {end} under "
                                f"{templates_dir(root, source)}: run `krone parse` first")
    text = path.read_text(encoding="utf-8")
    return text, parse_state(text, path), path.stem.removeprefix("dt=")


def train_partitions(
    source: str,
    end: str,
    *,
    days: int = 7,
    data_root: Path | None = None,
    tracking_uri: str | None = None,
    artifact_root: str | None = None,
    warehouse_url: str | None = None,
    seed: int = 0,
    labels: Path | None = None,
    exclude_reported: bool = True,
    nested_params: Mapping[str, Any] | None = None,
    fp_bound: float = GATE_FP_BOUND,
    tolerance: float = GATE_TOLERANCE,
    min_heldout: int = GATE_MIN_HELDOUT,
    holdout: float = HOLDOUT,
    validation: tuple[Sequence[Sequence[str]], Sequence[int]] | None = None,
) -> TrainResult:
    """Train on the pipeline's own output: the ``sessions/`` partitions of the ``days`` ending at ``end``,
    the hierarchy the hierarchy job grew (so node ids are the pipeline's) and the miner state of ``end``
    (shipped in the model). Labelled anomalies and sessions a champion already reported are left out;
    operators' "normal" feedback joins the knowledge base. The warehouse is optional: if it cannot answer,
    nothing is excluded and no feedback is applied (both logged)."""
    from krone_jobs.jobs.hierarchy_job import load_hierarchy

    check_source(source)
    root = Path(data_root) if data_root is not None else settings().data_root
    url = warehouse_url or settings().warehouse_url
    dates = window_dates(end, days)
    found, frame = read_window(root, source, dates)
    keep = settings().retain_days
    if keep is not None and keep < days and len(found) < len(dates):
        log.warning("the training window (%d days) is longer than KRONE_RETAIN_DAYS=%d: training on the %d of its "
                    "days that are left", days, keep, len(found))
    hierarchy = load_hierarchy(root, source)
    state, store, state_dt = _miner_state(root, source, end)
    reported = reported_sessions(url, source, dates[0], dates[-1]) if exclude_reported else None
    window = select_normal(frame, dates, found, source=source, store=store, labels=labels,
                           reported=reported)
    params = {**window.params(), "miner_state_dt": state_dt, "labels": str(labels) if labels else "none",
              "exclude_reported": exclude_reported}
    return train(
        source, window.sessions, {t.template_id: t.template for t in store.templates()}, hierarchy=hierarchy,
        validation=validation, days=window.days, seed=seed, nested_params=nested_params, holdout=holdout, fp_bound=fp_bound,
        tolerance=tolerance, min_heldout=min_heldout, miner_state=state, tracking_uri=tracking_uri,
        artifact_root=artifact_root, normal_keys=feedback_normal_keys(url, source), extra_params=params, extra_metrics=window.metrics(),
        data=TrainingData.of(root, source, found, frame["dt"].value_counts().to_dict()),
    )


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The ``krone train`` options (the lead wires them into ``krone_jobs/cli.py``)."""
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--dataset", choices=DATASETS, help="a KRONE demo set: train on its split's training sessions")
    data.add_argument("--sessions", type=Path, help="Parquet (file or folder) or CSV: session_id, template_ids, "
                      "[label]; normal = label 0 or missing")
    data.add_argument("--end", metavar="DATE", help="pipeline mode: train on the sessions/ partitions of the --days "
                      "ending at DATE, with the pipeline's hierarchy and miner state (needs --source)")
    p.add_argument("--templates", type=Path, help="CSV template_id,template (required with --sessions)")
    p.add_argument("--train-percent", type=int, default=80, choices=[1, 10, 80], help="demo split (with --dataset)")
    p.add_argument("--source", help="registered model krone-<source> (default: the dataset name; required with "
                   "--sessions and --end)")
    p.add_argument("--days", type=int, default=7, help="with --end: length of the training window in days")
    p.add_argument("--labels", type=Path, help="with --end: CSV session_id,label; labelled anomalies are left out")
    p.add_argument("--data-root", type=Path, help="with --end: the pipeline's data root (default: KRONE_DATA_ROOT)")
    p.add_argument("--warehouse-url", help="with --end: where reports and feedback are read (default: "
                   "KRONE_WAREHOUSE_URL); training goes on without it")
    p.add_argument("--no-exclude-reported", dest="exclude_reported", action="store_false",
                   help="with --end: also train on sessions a previous champion reported as anomalous")
    p.add_argument("--hierarchy", default="offline", help="offline (grow the champion's with new templates), "
                   "official (the authors' node table, demo sets only) or a hierarchy CSV path")
    p.add_argument("--overrides", type=Path, help="human overrides CSV template_id,entity,action[,status]")
    p.add_argument("--validation", type=Path, help="labelled sessions (as --sessions, label required) for the "
                   "gate's recall check")
    p.add_argument("--miner-state", type=Path, help="Drain3 miner state JSON to ship inside the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=float, default=HOLDOUT, help="share of normal sessions held out for the gate")
    p.add_argument("--fp-bound", type=float, default=GATE_FP_BOUND,
                   help="highest held-out false-positive rate to promote")
    p.add_argument("--tolerance", type=float, default=GATE_TOLERANCE,
                   help="allowed FP-rate excess over the champion")
    p.add_argument("--min-heldout", type=int, default=GATE_MIN_HELDOUT,
                   help="fewest held-out normal sessions the gate accepts")
    p.add_argument("--nested-params", type=json.loads, default=None, help='Nested-Aware options as JSON, e.g. {"epochs": 5}')
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: KRONE_MLFLOW_URI / settings)")
    p.add_argument("--data-dir", type=Path, default=None, help="shared data root for --dataset")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _inputs(args: argparse.Namespace) -> tuple[str, list[tuple[str, ...]], dict[str, str], Hierarchy | None]:
    """(source, normal sessions, templates, given hierarchy) from the CLI options."""
    if args.dataset:
        from krone_jobs.datasets import load_demo, load_demo_templates, official_node_table, split

        train_part, _ = split(load_demo(args.dataset, args.data_dir), args.dataset, args.train_percent, "official",
                              args.data_dir)
        sessions, templates = list(train_part.sequences), load_demo_templates(args.dataset, args.data_dir)
        source = args.source or args.dataset
    else:
        if args.templates is None or args.source is None:
            raise SystemExit("--sessions needs --templates and --source")
        every, labels = read_sessions(args.sessions)
        sessions = [s for s, y in zip(every, labels) if y == 0]
        templates, source = read_templates(args.templates), args.source
    if args.hierarchy == "offline":
        return source, sessions, templates, None
    if args.hierarchy == "official":
        if not args.dataset:
            raise SystemExit("--hierarchy official needs --dataset")
        from krone_jobs.hierarchy.official import load_node_table

        return source, sessions, templates, load_node_table(official_node_table(args.dataset, args.data_dir), templates)
    return source, sessions, templates, Hierarchy.load_csv(args.hierarchy)


def main_train_partitions(args: argparse.Namespace) -> TrainResult:
    """``krone train --end D``: the pipeline mode; options that only make sense for files are refused, so
    nobody believes they took effect. Missing inputs exit with the reason."""
    if args.source is None:
        raise SystemExit("--end needs --source")
    ignored = [name for name, given in (("--templates", args.templates), ("--miner-state", args.miner_state),
                                        ("--overrides", args.overrides), ("--hierarchy", args.hierarchy != "offline"))
               if given]
    if ignored:
        raise SystemExit(f"--end takes the hierarchy and miner state from the pipeline; drop {', '.join(ignored)} "
                         "(overrides go to state/<source>/overrides.csv, then `krone hierarchy`)")
    from krone_jobs.pipeline import record_training
    from krone_jobs.warehouse import WarehouseUnavailable

    validation = read_sessions(args.validation, require_label=True) if args.validation else None
    try:
        result = train_partitions(
            args.source, args.end, days=args.days, data_root=args.data_root, tracking_uri=args.tracking_uri,
            warehouse_url=args.warehouse_url, seed=args.seed, labels=args.labels,
            exclude_reported=args.exclude_reported, nested_params=args.nested_params, fp_bound=args.fp_bound,
            tolerance=args.tolerance, min_heldout=args.min_heldout, holdout=args.holdout, validation=validation,
        )
    except (ValueError, FileNotFoundError) as e:  # no window, bad date, missing state: say which, no traceback
        raise SystemExit(f"krone train: {e}") from None
    try:  # as the DAG task does; the model is registered either way, so a down warehouse only warns
        record_training(args.source, args.end, result.summary(), url=args.warehouse_url)
    except WarehouseUnavailable as e:
        print(f"krone train: figures not recorded in run_metrics: {e}", file=sys.stderr)
    return result


def _train_files(args: argparse.Namespace) -> tuple[str, TrainResult]:
    """``krone train --dataset/--sessions``."""
    source, sessions, templates, hierarchy = _inputs(args)
    validation = read_sessions(args.validation, require_label=True) if args.validation else None
    return source, train(
        source, sessions, templates, hierarchy=hierarchy, overrides_path=args.overrides, validation=validation,
        seed=args.seed, nested_params=args.nested_params, holdout=args.holdout, fp_bound=args.fp_bound,
        tolerance=args.tolerance, min_heldout=args.min_heldout,
        miner_state=args.miner_state.read_text(encoding="utf-8") if args.miner_state else None,
        tracking_uri=args.tracking_uri,
    )


def main_train(args: argparse.Namespace) -> int:
    """``krone train``: exit 0 when a model was trained and registered, whether or not it was promoted (the
    verdict is printed and tracked); errors raise."""
    source, result = (args.source, main_train_partitions(args)) if args.end else _train_files(args)
    if args.json:
        print(json.dumps(result.summary()))
        return 0
    gate = result.gate
    print(f"krone-{source} v{result.model_version} (run {result.run_id}): "
          f"{'promoted to champion' if gate.passed else 'NOT promoted'}; held-out FP rate "
          f"{gate.candidate_fp_rate:.4f}, {result.metrics['n_train_sessions']:.0f} training sessions, "
          f"{result.metrics['train_seconds']:.1f}s")
    if "n_window_sessions" in result.metrics:
        m = result.metrics
        dates = window_dates(args.end, args.days)
        print(f"  window {dates[0]}..{dates[-1]}: {m['n_window_sessions']:.0f} sessions, "
              f"{m['n_excluded_labelled']:.0f} labelled anomalous and {m['n_excluded_reported']:.0f} reported "
              "left out, "
              f"{m['n_feedback_normal_keys']:.0f} operator-approved keys added")
    for reason in gate.reasons:
        print(f"  {reason}")
    return 0
