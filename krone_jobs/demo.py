"""``krone demo``: the whole idea on generated logs, in one process, with visible progress.

Generates a few days of nested-execution logs with injected anomalies, parses them (bad lines go to
quarantine with a reason), mines templates with Drain3, groups lines into sessions, builds the hierarchy
with the offline abstraction model, trains on the normal sessions of the first days and judges the last
day, then prints what an operator would read in the morning: counts, anomalies per level, the top
anomalous chunks with their reasons and the raw lines they point to. It uses the same modules as the
pipeline stages; the Spark/Airflow/warehouse versions of these steps reuse them.
"""

from __future__ import annotations

import csv
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from krone_jobs.detectors.router import RoutedDetector
from krone_jobs.evaluate import confusion
from krone_jobs.hierarchy.extractor import build_hierarchy
from krone_jobs.hierarchy.offline import OfflineExtractor
from krone_jobs.logformats import KRONE, Quarantined, default_session_rule, iter_lines, parse_line
from krone_jobs.synthetic import generate
from krone_jobs.templates import TemplateStore

SOURCE = "synthetic"


@dataclass
class _Line:
    file: str
    line_no: int
    template_id: str
    ts: float


@dataclass
class DemoResult:
    figures: dict[str, Any]
    top: list[dict[str, Any]] = field(default_factory=list)


class _Stages:
    """Prints one line per stage with its count and duration."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.t0 = time.perf_counter()

    def done(self, name: str, what: str) -> None:
        now = time.perf_counter()
        self.say(f"  [{name:<9}] {what} ({now - self.t0:.1f}s)")
        self.t0 = now


def run_demo(
    workdir: Path, *, days: int = 3, sessions_per_day: int = 1500, seed: int = 0,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Run generate -> parse -> templates -> sessions -> hierarchy -> train -> score on ``workdir``."""
    stages = _Stages(say)
    say(f"krone demo: {days} days x {sessions_per_day} jobs of generated logs in {workdir}")
    gen = generate(workdir, days=days, sessions_per_day=sessions_per_day, seed=seed, source=SOURCE)
    stages.done("generate", f"{gen.lines:,} lines, {gen.sessions:,} sessions, {sum(gen.anomalies.values())} injected anomalies")

    store = TemplateStore()
    rule = default_session_rule(KRONE.name)
    sessions: dict[str, list[_Line]] = defaultdict(list)
    first_day: dict[str, str] = {}
    quarantined: Counter[str] = Counter()
    n_lines = 0
    day_dirs = sorted((workdir / "raw" / SOURCE).glob("dt=*"))
    for day_dir in day_dirs:
        day = day_dir.name[3:]
        for path in sorted(day_dir.glob("*.log*")):
            rel = str(path.relative_to(workdir))
            for line_no, raw in iter_lines(path):
                n_lines += 1
                parsed = parse_line(raw, KRONE)
                if isinstance(parsed, Quarantined):
                    quarantined[parsed.reason] += 1
                    continue
                keys = rule.keys(parsed)
                if not keys:
                    quarantined["no_session_key"] += 1
                    continue
                tid = store.mine(parsed.content).template_id
                ts = parsed.timestamp.timestamp() if parsed.timestamp else 0.0
                for key in keys:
                    sessions[key].append(_Line(rel, line_no, tid, ts))
                    first_day.setdefault(key, day)
    stages.done("parse", f"{n_lines:,} lines read, {sum(quarantined.values())} quarantined, "
                         f"{len(store.templates())} templates, {len(sessions):,} sessions")

    templates = {t.template_id: t.template for t in store.templates()}
    hierarchy = build_hierarchy(templates, OfflineExtractor())
    stages.done("hierarchy", f"{hierarchy.count('entity')} entities, {hierarchy.count('action')} actions, "
                             f"{hierarchy.count('status')} statuses (offline abstraction model)")

    labels = _labels(workdir / "labels" / SOURCE / "labels.csv")
    seqs = {k: tuple(store.resolve(x.template_id) for x in sorted(v, key=lambda x: x.ts)) for k, v in sessions.items()}
    last = day_dirs[-1].name[3:]
    train = [s for k, s in seqs.items() if first_day[k] < last and labels.get(k, 0) == 0]
    test_keys = [k for k in seqs if first_day[k] == last]
    detector = RoutedDetector(hierarchy).fit(train)
    stages.done("train", f"{len(train):,} normal sessions from the first {len(day_dirs) - 1} days")

    verdicts = detector.detect([seqs[k] for k in test_keys])
    y_true = np.asarray([labels.get(k, 0) for k in test_keys], dtype=np.int8)
    y_pred = np.asarray([v.anomalous for v in verdicts], dtype=np.int8)
    figures = {**confusion(y_true, y_pred), "day": last, "sessions": len(test_keys),
               "anomalies": int(y_pred.sum()), "quarantined": dict(quarantined),
               "per_level": dict(Counter(v.level for v in verdicts if v.anomalous)),
               "flagged_by_local": detector.stats_["flagged_by_local"],
               "rescued_by_nested": detector.stats_["rescued_by_nested"]}
    stages.done("score", f"{len(test_keys):,} sessions of {last}: {figures['anomalies']} anomalous")

    top = []
    for key, v in sorted(zip(test_keys, verdicts), key=lambda kv: -kv[1].score):
        if not v.anomalous or len(top) >= 5:
            continue
        start = v.span[0] if v.span else 0
        ref = sorted(sessions[key], key=lambda x: x.ts)[start]
        top.append({"session": key, "level": v.level, "detector": v.detector, "reason": v.reason,
                    "line": f"{ref.file}:{ref.line_no}", "label": int(labels.get(key, 0))})
    return DemoResult(figures, top)


def _labels(path: Path) -> dict[str, int]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["session_id"]: int(row["label"]) for row in csv.DictReader(fh)}


def print_summary(result: DemoResult, workdir: Path, say: Callable[[str], None] = print) -> None:
    f = result.figures
    say("")
    say(f"Night summary for {f['day']}: {f['sessions']:,} sessions, {f['anomalies']} anomalous "
        f"(by level: {f['per_level']}); {f['flagged_by_local']} flagged by the knowledge base, "
        f"{f['rescued_by_nested']} rescued by the Nested-Aware model")
    say(f"Against the generator's labels: precision {f['precision']:.3f}, recall {f['recall']:.3f}, "
        f"F1 {f['f1']:.3f} (TP {f['tp']}, FP {f['fp']}, FN {f['fn']})")
    say("Top anomalies:")
    for t in result.top:
        say(f"  {t['session']} [{t['level']}, {t['detector']}] {t['reason'][:160]}")
        say(f"      first line of the chunk: {workdir / t['line']}")
    say(f"Raw logs and labels: {workdir}")
