"""``krone demo``: the nightly pipeline on generated logs, on the embedded defaults, with visible progress.

Generates three days of nested-execution logs with injected anomalies (missing, extra and reordered
steps, unexpected statuses, new templates) under the data root, then runs exactly what the Airflow DAGs
run (:mod:`krone_jobs.pipeline`): ``krone_parse_<source>`` for every day (Spark local mode: parse with its quality
gate, sessionize, hierarchy, KRONE Seqs), ``krone_train_<source>`` on the first days (MLflow store under
``mlflow/``, registered model ``krone-<source>``, champion gate), and ``krone_score`` for the last day
(verdict cache, routed detection, DuckDB warehouse) with its night report. It ends with the night
summary, the generator's ground truth next to it, and where to look next.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from krone_jobs.config import settings

if TYPE_CHECKING:
    from krone_jobs.synthetic import Layout

SOURCE = "demo"
START = "2026-11-01"


@dataclass
class DemoResult:
    """What the demo produced: the figures of the scored day and where everything is."""

    figures: dict[str, Any]
    top: list[dict[str, Any]] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)


class _Stages:
    """Prints one line per stage with its count and duration."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.t0 = time.perf_counter()

    def done(self, name: str, what: str) -> None:
        now = time.perf_counter()
        self.say(f"  [{name:<8}] {what} ({now - self.t0:.1f}s)")
        self.t0 = now


def run_demo(
    data_root: Path | None = None, *, days: int = 3, sessions_per_day: int = 1500, seed: int = 0,
    source: str = SOURCE, say: Callable[[str], None] = print, layout: Layout = "text",
) -> DemoResult:
    """generate -> parse (every day) -> train (all days but the last) -> score + report (the last day).
    ``layout="json"`` writes the same jobs as JSON lines, parsed with the ``krone-json`` format."""
    from krone_jobs import pipeline
    from krone_jobs.synthetic import LAYOUT_FORMATS, generate

    if days < 2:
        raise ValueError("the demo needs at least two days: training days, then a day to score")
    root = Path(data_root) if data_root is not None else settings().data_root
    dates = [(date.fromisoformat(START) + timedelta(days=i)).isoformat() for i in range(days)]
    stages = _Stages(say)
    say(f"krone demo: {days} days x {sessions_per_day:,} jobs of generated logs under {root}")
    gen = generate(root, days=days, sessions_per_day=sessions_per_day, seed=seed, start_date=START, source=source,
                   layout=layout)
    stages.done("generate", f"{gen.lines:,} lines, {gen.sessions:,} jobs, {sum(gen.anomalies.values())} injected "
                            f"anomalies {dict(gen.anomalies)}")
    for dt in dates:
        out = pipeline.parse_day(source, dt, LAYOUT_FORMATS[layout], data_root=root)
        p, s, k = out["parse"]["metrics"], out["sessionize"]["metrics"], out["kseqs"]["metrics"]
        stages.done("parse", f"{dt}: {p['raw_lines']:,} lines ({p['quarantined']} quarantined), "
                             f"{s['sessions']:,} sessions closed ({s['open_sessions']} carried over), "
                             f"{k['chunks']:,} KRONE Seqs, quality gates passed")
    labels = root / "labels" / source / "labels.csv"
    trained = pipeline.train_window(source, dates[-2], days=days - 1, data_root=root, labels=labels, seed=seed)
    t = trained["summary"]
    stages.done("train", f"krone-{source} v{t['model_version']} on {t['metrics'].get('n_train_sessions', 0):,.0f} "
                         f"normal sessions, {'promoted to champion' if t['promoted'] else 'NOT promoted'}")
    scored = pipeline.score_day(source, dates[-1], data_root=root)["metrics"]
    stages.done("score", f"{dates[-1]}: {scored['sessions']:,} sessions, {scored['anomalies']} anomalous, "
                         f"{scored['routed_sessions']:,} routed to the models, {scored['llm_calls']} LLM calls")
    report = pipeline.night_report(source, dates[-1], data_root=root)
    stages.done("report", report["path"])
    figures = {**scored, **_against_labels(root, source, dates[-1], labels), "report_summary": report["summary"]}
    paths = {"report": report["path"], "data_root": str(root), "warehouse": settings().warehouse_url,
             "mlflow": settings().mlflow_uri}
    top = [{"session": r["session_id"], "level": r["level"], "detector": r["detector"], "reason": r["reason"],
            "line": r["line_ref"]} for r in report["figures"]["top_chunks"]]
    return DemoResult(figures, top, paths)


def _against_labels(root: Path, source: str, dt: str, labels: Path) -> dict[str, Any]:
    """Precision and recall of the day's reports against the generator's labels (demo only: real logs have
    no labels). A session counts for the day its sessionize partition holds it."""
    from krone_jobs.partitions import partition_dir, read_table
    from krone_jobs.warehouse import Warehouse

    with open(labels, newline="", encoding="utf-8") as fh:
        truth = {r["session_id"]: r["label"] == "1" for r in csv.DictReader(fh)}
    sessions = read_table(partition_dir(root, "sessions", source, dt), columns=["session_id"]).column(0).to_pylist()
    with Warehouse() as wh:
        flagged = wh.reported_sessions(source, dt, dt)
    tp = sum(1 for s in sessions if truth.get(s) and s in flagged)
    fp = sum(1 for s in sessions if not truth.get(s) and s in flagged)
    fn = sum(1 for s in sessions if truth.get(s) and s not in flagged)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def print_summary(result: DemoResult, say: Callable[[str], None] = print) -> None:
    f, paths = result.figures, result.paths
    say("")
    say(f["report_summary"])
    say(f"Against the generator's labels: precision {f['precision']:.3f}, recall {f['recall']:.3f}, "
        f"F1 {f['f1']:.3f} (TP {f['tp']}, FP {f['fp']}, FN {f['fn']})")
    say("Top anomalies:")
    for t in result.top:
        say(f"  {t['session']} [{t['level']}, {t['detector']}] {t['reason'][:150]}")
        say(f"      first line of the chunk: {Path(paths['data_root']) / t['line']}")
    say("")
    say("Where to look next:")
    say(f"  night report  {paths['report']}")
    say(f"  MLflow UI     .venv/bin/mlflow ui --backend-store-uri {paths['mlflow']}   (http://127.0.0.1:5000)")
    say(f"  warehouse     {paths['warehouse']}")
    say("                .venv/bin/python -c \"import duckdb; print(duckdb.connect('"
        f"{paths['warehouse'].removeprefix('duckdb:///')}', read_only=True).sql('SELECT * FROM v_anomalies_per_day'))\"")
    say(f"  feedback      .venv/bin/krone feedback --source {SOURCE} --key '<kseq_key of a report>' --verdict normal")
