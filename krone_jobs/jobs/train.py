"""The train stage: fit a KRONE model on normal sessions, track it in MLflow, register it, gate it.

One call of :func:`train` is one MLflow run in experiment ``krone-<source>``: the hierarchy is grown from
the champion's (new templates only, so node ids never move; human overrides win), a seeded share of the
normal sessions is held out, a :class:`RoutedDetector` is fitted on the rest, the model is logged and
registered as a new version of ``krone-<source>``, and the validation gate decides whether ``champion``
moves to it. A refused candidate stays registered (with the gate's verdict in its tags) for inspection.

Determinism: for the same inputs, seed and torch thread count a run is reproducible (same split,
thresholds and verdicts). The held-out split uses ``RandomState(seed)``; the Nested-Aware detector gets
``seed`` (it calls ``torch.manual_seed`` and seeds its own generators); Python's, NumPy's and torch's
global generators are seeded as well for extractors that draw from them. CPU float reductions can differ
with the number of threads (``torch.get_num_threads()``), so compare runs on the same configuration.

Heavy modules (torch, mlflow) are imported inside functions: DAG files import this module when parsed.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from krone_jobs.hierarchy.extractor import HierarchyExtractor, build_hierarchy
from krone_jobs.hierarchy.model import Hierarchy, load_overrides

if TYPE_CHECKING:
    from krone_jobs.detectors.router import RoutedDetector
    from krone_jobs.model_registry import GateVerdict

HOLDOUT = 0.1
DATASETS = ("hdfs-demo", "thunderbird-demo")


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
    n = len(sessions)
    k = min(int(round(n * share)), max(n - 1, 0))
    held = set(np.random.RandomState(seed).permutation(n)[:k].tolist())
    return [s for i, s in enumerate(sessions) if i not in held], [s for i, s in enumerate(sessions) if i in held]


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
    seed: int = 0,
    nested_params: Mapping[str, Any] | None = None,
    holdout: float = HOLDOUT,
    fp_bound: float = 0.02,
    tolerance: float = 0.002,
    miner_state: str | None = None,
    tracking_uri: str | None = None,
    artifact_root: str | None = None,
) -> TrainResult:
    """Train on ``sessions`` (normal ones: template-id sequences), log and register ``krone-<source>``,
    and promote it to ``champion`` if the gate passes (see the module docstring)."""
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
    fit_set, heldout = split_heldout([tuple(s) for s in sessions], holdout, seed)
    detector = RoutedDetector(hierarchy, nested_params={"seed": seed, **(nested_params or {})})
    checked = registry.Validation(*validation) if validation is not None else None

    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{source}") as run:
        run_id = run.info.run_id
        t0 = time.perf_counter()
        detector.fit(fit_set)
        seconds = time.perf_counter() - t0
        params, metrics = _run_record(detector, n_sessions=len(sessions), n_fit=len(fit_set),
                                      n_heldout=len(heldout), seconds=seconds, base=base)
        mlflow.log_params({"source": source, "seed": seed, "holdout": holdout, "miner_state": miner_state is not None,
                           "hierarchy_base_version": base_version or "none", **params})
        mlflow.log_metrics(metrics)
        info = registry.log_krone_model(detector, miner_state=miner_state)
        version = registry.register(run_id, source)
        verdict = registry.promote_if_better(client, source, version, detector.predict, heldout, run_id=run_id,
                                             validation=checked, fp_bound=fp_bound, tolerance=tolerance)
        heldout_fp = _finite({"heldout_fp_rate": verdict.candidate_fp_rate})  # NaN when nothing was held out
        mlflow.log_metrics(heldout_fp)
        metrics.update(heldout_fp)
        paths = {"tracking_uri": mlflow.get_tracking_uri(), "artifact_uri": run.info.artifact_uri,
                 "model_uri": f"models:/{registry.registered_name(source)}/{version}",
                 "logged_model_uri": info.model_uri}
    return TrainResult(run_id, version, verdict, paths, metrics, detector)


# ----------------------------------------------------------------------------------------- inputs
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
    labels = (pd.to_numeric(frame["label"], errors="coerce").fillna(0).astype(np.int8).to_numpy()
              if "label" in frame.columns else np.zeros(len(frame), dtype=np.int8))
    return [template_ids(v) for v in frame["template_ids"]], labels


def read_templates(path: Path) -> dict[str, str]:
    """``template_id,template`` CSV -> mapping."""
    with open(path, newline="", encoding="utf-8") as fh:
        return {str(row["template_id"]).strip(): row["template"] for row in csv.DictReader(fh)}


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The ``krone train`` options (the lead wires them into ``krone_jobs/cli.py``)."""
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--dataset", choices=DATASETS, help="a KRONE demo set: train on its split's training sessions")
    data.add_argument("--sessions", type=Path, help="Parquet (file or folder) or CSV: session_id, template_ids, "
                      "[label]; normal = label 0 or missing")
    p.add_argument("--templates", type=Path, help="CSV template_id,template (required with --sessions)")
    p.add_argument("--train-percent", type=int, default=80, choices=[1, 10, 80], help="demo split (with --dataset)")
    p.add_argument("--source", help="registered model krone-<source> (default: the dataset name)")
    p.add_argument("--hierarchy", default="offline", help="offline (grow the champion's with new templates), "
                   "official (the authors' node table, demo sets only) or a hierarchy CSV path")
    p.add_argument("--overrides", type=Path, help="human overrides CSV template_id,entity,action[,status]")
    p.add_argument("--validation", type=Path, help="labelled sessions (as --sessions, label required) for the "
                   "gate's recall check")
    p.add_argument("--miner-state", type=Path, help="Drain3 miner state JSON to ship inside the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=float, default=HOLDOUT, help="share of normal sessions held out for the gate")
    p.add_argument("--fp-bound", type=float, default=0.02, help="highest held-out false-positive rate to promote")
    p.add_argument("--tolerance", type=float, default=0.002, help="allowed FP-rate excess over the champion")
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


def main_train(args: argparse.Namespace) -> int:
    """``krone train``: exit 0 when a model was trained and registered, whether or not it was promoted (the
    verdict is printed and tracked); errors raise."""
    source, sessions, templates, hierarchy = _inputs(args)
    validation = read_sessions(args.validation, require_label=True) if args.validation else None
    result = train(
        source, sessions, templates, hierarchy=hierarchy, overrides_path=args.overrides, validation=validation,
        seed=args.seed, nested_params=args.nested_params, holdout=args.holdout, fp_bound=args.fp_bound,
        tolerance=args.tolerance, miner_state=args.miner_state.read_text(encoding="utf-8") if args.miner_state else None,
        tracking_uri=args.tracking_uri,
    )
    if args.json:
        print(json.dumps(result.summary()))
        return 0
    gate = result.gate
    print(f"krone-{source} v{result.model_version} (run {result.run_id}): "
          f"{'promoted to champion' if gate.passed else 'NOT promoted'}; held-out FP rate "
          f"{gate.candidate_fp_rate:.4f}, {result.metrics['n_train_sessions']:.0f} training sessions, "
          f"{result.metrics['train_seconds']:.1f}s")
    for reason in gate.reasons:
        print(f"  {reason}")
    return 0
