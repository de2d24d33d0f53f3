"""Evaluation protocols and metrics: one run = train on a split, judge the test sessions, report figures.

Everything a figure in a note or README needs comes from :func:`run_evaluation`, so baselines and our
detectors are always measured the same way, in the same process, on the same split.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from krone_jobs.datasets import load_demo, load_demo_templates, official_node_table, split
from krone_jobs.detectors.local_context import LocalContextDetector
from krone_jobs.hierarchy.kseqs import LEVELS
from krone_jobs.hierarchy.model import Hierarchy
from krone_jobs.hierarchy.official import load_node_table

# The authors' default automaton setting per dataset (their demo_main scripts).
AUTHORS_AUTOMATON = {"hdfs-demo": False, "thunderbird-demo": True}


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | int]:
    """TP/FP/TN/FN with precision, recall and F1 (1 = anomalous). Zero denominators give 0.0."""
    y_true = np.asarray(y_true, dtype=bool)
    y_pred = np.asarray(y_pred, dtype=bool)
    tp = int(np.sum(y_true & y_pred))
    fp = int(np.sum(~y_true & y_pred))
    tn = int(np.sum(~y_true & ~y_pred))
    fn = int(np.sum(y_true & ~y_pred))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run. ``automaton=None`` means the default: the authors' per-dataset setting with
    ``compat``, ``"auto"`` (decided from held-out normal training data) otherwise."""

    dataset: str
    train_percent: int = 80
    hierarchy: str = "official"
    detector: str = "local"
    automaton: bool | None = None
    compat: bool = False
    split: str = "official"
    data_dir: Path | None = None

    def resolved_automaton(self) -> bool | str:
        if self.automaton is not None:
            return self.automaton
        return AUTHORS_AUTOMATON.get(self.dataset, True) if self.compat else "auto"


def load_hierarchy(dataset: str, kind: str, data_dir: Path | None = None) -> Hierarchy:
    """``official``: the authors' LLM-built node table; ``offline``: our own extractor on the template texts."""
    templates = load_demo_templates(dataset, data_dir)
    if kind == "official":
        return load_node_table(official_node_table(dataset, data_dir), templates)
    if kind == "offline":
        from krone_jobs.hierarchy.extractor import build_hierarchy
        from krone_jobs.hierarchy.offline import OfflineExtractor

        return build_hierarchy(templates, OfflineExtractor())
    raise ValueError(f"unknown hierarchy {kind!r} (official or offline)")


DETECTORS = ("local", "nested", "routed")


def detector_names() -> list[str]:
    """Every ``--detector`` choice: ours, then the classical baselines."""
    from krone_jobs.detectors.baselines import BASELINES

    return [*DETECTORS, *BASELINES]


def make_detector(config: EvalConfig, hierarchy: Hierarchy) -> Any:
    """A fresh, unfitted detector for ``config``."""
    if config.detector == "local":
        return LocalContextDetector(hierarchy, automaton=config.resolved_automaton(), compat=config.compat)
    if config.detector == "nested":
        from krone_jobs.detectors.nested_aware import NestedAwareDetector

        return NestedAwareDetector(hierarchy)
    if config.detector == "routed":
        from krone_jobs.detectors.router import RoutedDetector

        return RoutedDetector(hierarchy)
    from krone_jobs.detectors.baselines import BASELINES

    if config.detector in BASELINES:
        return BASELINES[config.detector]()
    raise ValueError(f"unknown detector {config.detector!r}; choose from {detector_names()}")


@dataclass(frozen=True)
class Timed:
    """One fit and one pass over the test sessions (the verdicts too, when the detector gives them)."""

    y_pred: np.ndarray
    verdicts: list[Any] | None
    train_seconds: float
    detect_seconds: float


def fit_and_judge(detector: Any, train: Sequence[Sequence[str]], test: Sequence[Sequence[str]]) -> Timed:
    """Fit on ``train``, then judge ``test`` once, timing both. Detectors with ``detect`` are judged through
    it, so verdicts, routing counts and predictions all come from that single pass."""
    t0 = time.perf_counter()
    detector.fit(train)
    train_seconds = time.perf_counter() - t0
    if hasattr(detector, "stats_"):
        detector.stats_.update(flagged_by_local=0, rescued_by_nested=0, llm_requests=0)
    t0 = time.perf_counter()
    if hasattr(detector, "detect"):
        verdicts = detector.detect(test)
        y_pred = np.fromiter((v.anomalous for v in verdicts), dtype=np.int8, count=len(verdicts))
    else:
        verdicts = None
        y_pred = np.asarray(detector.predict(test), dtype=np.int8)
    return Timed(y_pred, verdicts, train_seconds, time.perf_counter() - t0)


def run_evaluation(config: EvalConfig) -> dict[str, Any]:
    """Train on the split's normal sessions, judge its test sessions, return every figure as a dict."""
    sessions = load_demo(config.dataset, config.data_dir)
    train, test = split(sessions, config.dataset, config.train_percent, config.split, config.data_dir)
    hierarchy = load_hierarchy(config.dataset, config.hierarchy, config.data_dir)
    detector = make_detector(config, hierarchy)
    run = fit_and_judge(detector, train.sequences, test.sequences)

    result: dict[str, Any] = {
        **{k: v for k, v in asdict(config).items() if k != "data_dir"},
        "n_train": len(train),
        "n_test": len(test),
        "test_anomalies": int(test.labels.sum()),
        **confusion(test.labels, run.y_pred),
        "hierarchy_nodes": {lvl: hierarchy.count(lvl) for lvl in ("entity", "action", "status")},
        "train_seconds": round(run.train_seconds, 4),
        "detect_seconds": round(run.detect_seconds, 4),
        "sessions_per_s": round(len(test) / run.detect_seconds, 1) if run.detect_seconds > 0 else None,
    }
    result.pop("automaton")
    if hasattr(detector, "automaton_"):
        result["automaton"] = detector.automaton_
        result["automaton_setting"] = config.resolved_automaton()
    if hasattr(detector, "stats_"):
        for key in ("flagged_by_local", "rescued_by_nested", "llm_requests"):
            result[key] = detector.stats_[key]
    if hasattr(detector, "predict_levels"):
        levels = detector.predict_levels(test.sequences)
        first = Counter(v.level for v in run.verdicts or () if v.anomalous)
        result["per_level"] = {
            name: {**confusion(test.labels, levels[:, i]), "first_anomalous": first.get(name, 0)}
            for i, name in enumerate(LEVELS)
        }
    return result
