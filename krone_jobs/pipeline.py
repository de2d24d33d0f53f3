"""Task-level entry points shared by the Airflow DAGs and ``krone demo``: one call per DAG task.

Each function runs one stage (or a day of them) for one partition through the stage modules in
``krone_jobs.jobs``, records the stage's numeric metrics in the warehouse's ``run_metrics`` (one row per
metric, replaced on rerun) and returns a JSON-able dict, which is what Airflow keeps as the task's XCom.
Keeping this layer out of the DAG files means the scheduler's parser never imports Spark, torch, MLflow or
Great Expectations, and the demo exercises exactly the code the DAGs run.

Every stage module is imported inside the function that needs it, for the same reason.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from datetime import date, timedelta
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from krone_jobs.config import settings

if TYPE_CHECKING:
    from krone_jobs.hierarchy.extractor import HierarchyExtractor
    from krone_jobs.score_failures import ScoreFailure

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------- failures
def permanent_failures() -> tuple[type[BaseException], ...]:
    """Failures that running the same task again cannot mend, only a person can: the day's data failed its
    quality gate, a stage file is damaged, the hierarchy, the miner state or the source record is broken, the
    day before was skipped, a line was lost, the training window holds nothing, the champion's artifacts are
    damaged, the day has no log file and no marker (in Airflow its ``raw_ready`` sensor has waited already).
    The DAGs fail these at once instead of spending retries (each a rerun of a Spark stage, hours on a large
    day) and their backoff on them."""
    from krone_jobs.hierarchy.model import HierarchyError
    from krone_jobs.jobs.parse import ReconciliationError
    from krone_jobs.jobs.sessionize import SkippedDayError
    from krone_jobs.jobs.train import NoTrainingData
    from krone_jobs.model_registry import ModelUnloadable
    from krone_jobs.partitions import PartitionUnreadable, SourceRecordError
    from krone_jobs.quality import QualityGateError
    from krone_jobs.raw_readiness import NoLogFilesError
    from krone_jobs.templates import TemplateStateError

    return (QualityGateError, PartitionUnreadable, HierarchyError, TemplateStateError, SkippedDayError,
            ReconciliationError, NoTrainingData, ModelUnloadable, SourceRecordError, NoLogFilesError)


# ------------------------------------------------------------------------------------------ metrics
def numeric_metrics(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numbers of a (nested) metrics dict, flattened as ``outer.inner``: ``run_metrics`` holds
    doubles only, so names, paths and lists stay in the XCom and the logs."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(numeric_metrics(value, f"{name}."))
        elif isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
            out[name] = float(value)
    return out


def record_metrics(source: str, dt: str, stage: str, run_id: str, metrics: Mapping[str, Any],
                   url: str | None = None) -> int:
    """Replace the stage's ``run_metrics`` rows for (source, dt) (warehouse ``url``, default the configured
    one); returns the number written."""
    from krone_jobs.warehouse import Warehouse

    with Warehouse(url) as warehouse:
        warehouse.ensure_schema()
        return warehouse.write_run_metrics(source, dt, stage, run_id, numeric_metrics(metrics))


def new_run_id(prefix: str = "manual") -> str:
    """A run id for calls from outside Airflow (the demo, the CLI)."""
    return f"{prefix}__{uuid.uuid4().hex[:12]}"


def _result(stage: str, source: str, dt: str, run_id: str, metrics: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The XCom of a stage: JSON round-tripped, so anything odd fails here rather than in Airflow."""
    payload = {"stage": stage, "source": source, "dt": dt, "run_id": run_id, "metrics": dict(metrics), **extra}
    return json.loads(json.dumps(payload, default=str))


def _recorded(stage: str, source: str, dt: str, run_id: str | None, metrics: Mapping[str, Any]) -> dict[str, Any]:
    run_id = run_id or new_run_id()
    rows = record_metrics(source, dt, stage, run_id, metrics)
    return _result(stage, source, dt, run_id, metrics, metric_rows=rows)


def _root(data_root: str | Path | None) -> Path:
    return Path(data_root) if data_root else settings().data_root


def _path(value: str | Path | None, root: Path) -> Path | None:
    """A path param: relative paths are taken from the data root (where the generator writes labels)."""
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else root / path


# ------------------------------------------------------------------------------------------ daily stages
def raw_ready(source: str, dt: str, fmt: str, *, data_root: str | Path | None = None) -> dict[str, Any]:
    """Whether the day's raw logs are all there to parse (:mod:`krone_jobs.raw_readiness`: the day's marker,
    or a log file once the grace after the day's end on the format's clock has passed), and why."""
    from krone_jobs.logformats import get_format
    from krone_jobs.raw_readiness import raw_readiness

    return raw_readiness(_root(data_root), source, dt, zone=get_format(fmt).timezone).to_dict()


def window_ready(source: str, end: str, *, data_root: str | Path | None = None) -> dict[str, Any]:
    """Whether a training window's last day is parsed through sessionize, so that a weekly run does not train
    on a window whose last day's logs are late; with the raw readiness of that day (``due``: when its logs
    were due) while it is not."""
    from krone_jobs.partitions import partition_dir, source_timezone
    from krone_jobs.raw_readiness import raw_readiness

    root = _root(data_root)
    folder = partition_dir(root, "sessions", source, end)
    try:
        zone = source_timezone(root, source)
    except FileNotFoundError:  # never parsed: no record of its format yet
        zone = None
    raw = raw_readiness(root, source, end, zone=zone)
    if folder.is_dir():
        return {**raw.to_dict(), "ready": True, "reason": f"{folder.relative_to(root).as_posix()} is there"}
    why = (f"its logs are there and its krone_parse_{source} run has not got that far yet" if raw.ready
           else raw.reason)
    return {**raw.to_dict(), "ready": False, "reason": f"the window's last day {end} has no sessions partition: {why}"}


def late_days(source: str, dt: str, fmt: str, *, data_root: str | Path | None = None,
              run_id: str | None = None) -> dict[str, Any]:
    """With ``KRONE_REPARSE_LATE``: run the parse stages again, in date order, from the earliest stale day of the
    week before ``dt`` (:func:`late_rerun_from`) to the day before, so that ``dt`` is seeded and carried from
    what they hold now; the score catch-up then scores them again (their sessions were written anew). Without
    it, nothing is run and the parse stage names the stale days. Holds the source's lock throughout."""
    from krone_jobs.night import day_range
    from krone_jobs.source_lock import source_lock

    if not settings().reparse_late:
        return _result("late_days", source, dt, run_id or "", {"enabled": False, "days_parsed_again": 0})
    with source_lock(_root(data_root), source, f"late days before {dt}"):
        first = late_rerun_from(source, dt, fmt, data_root=data_root)
        days = day_range(first, _day_before(dt)) if first else []
        for day in days:
            parse_day(source, day, fmt, data_root=data_root, run_id=run_id)
    metrics = {"enabled": True, "days_parsed_again": len(days), "first_day_parsed_again": first}
    return _recorded("late_days", source, dt, run_id, metrics)


def late_rerun_from(source: str, dt: str, fmt: str, *, data_root: str | Path | None = None) -> str | None:
    """The earliest day of the week before ``dt`` with a stale partition (:func:`krone_jobs.lineage.stale_before`:
    a log file delivered after its day was parsed, a day run again since), from which the days up to ``dt`` run
    again; ``None`` with none, or when a day of that run has no logs to parse any more (raw retention): then
    the parse stage only names them."""
    from krone_jobs.lineage import stale_before
    from krone_jobs.night import day_range

    stale = stale_before(_root(data_root), source, dt)
    if not stale:
        return None
    days = day_range(stale[0].dt, _day_before(dt))
    if gone := [d for d in days if not raw_ready(source, d, fmt, data_root=data_root)["ready"]]:
        log.warning("%s %s: the stale days from %s are not parsed again: %s has no logs to parse any more (raw "
                    "retention?)", source, dt, days[0], gone[0])
        return None
    log.warning("%s %s: parsing again from %s, whose partitions are stale: %s", source, dt, days[0],
                "; ".join(str(s) for s in stale[:5]))
    return days[0]


def _day_before(dt: str) -> str:
    return (date.fromisoformat(dt) - timedelta(days=1)).isoformat()


def parse_stage(source: str, dt: str, fmt: str, *, data_root: str | Path | None = None,
                run_id: str | None = None, **options: Any) -> dict[str, Any]:
    """Parse one raw day (its ``parsed`` quality gate runs inside, before the miner state is saved), and say
    which partitions of the days before are stale (``stale_earlier_days``: a log file delivered late, see
    :mod:`krone_jobs.lineage`) and of the days after (``stale_later_days``: days parsed before this one, as
    in a backfill of earlier days, were not seeded from it, ``lineage.parsed_before``); ``options`` go to
    :func:`~krone_jobs.jobs.parse.run_parse` (``partitions``, ``max_quarantine_ratio``, ``max_new_templates``)."""
    from krone_jobs.jobs.parse import run_parse
    from krone_jobs.lineage import parsed_before, stale_before

    metrics = run_parse(source, dt, fmt, data_root=data_root, **options).to_dict()
    stale = stale_before(_root(data_root), source, dt)
    later = parsed_before(_root(data_root), source, dt)
    for found, which in ((stale, "the days before"), (later, "later days")):
        if found:
            log.warning("%s %s: %d partition(s) of %s are stale, from %s (`krone status --source %s` says how to "
                        "bring them up to date): %s", source, dt, len(found), which, found[0].dt, source,
                        "; ".join(map(str, found[:5])))
    metrics |= {"stale_earlier_days": len({s.dt for s in stale}), "stale_later_days": len({s.dt for s in later}),
                "stale_partitions": [str(s) for s in stale + later]}
    return _recorded("parse", source, dt, run_id, metrics)


def sessionize_stage(source: str, dt: str, *, data_root: str | Path | None = None, run_id: str | None = None,
                     gap_seconds: float | None = None, max_session_seconds: float | None = None,
                     max_session_events: int | None = None) -> dict[str, Any]:
    """Sessionize one parsed day (reads the previous day's open sessions: run days in date order)."""
    from krone_jobs.jobs.sessionize import run_sessionize

    metrics = run_sessionize(source, dt, data_root=data_root, gap_seconds=gap_seconds,
                             max_session_seconds=max_session_seconds,
                             max_session_events=max_session_events).to_dict()
    return _recorded("sessionize", source, dt, run_id, metrics)


def hierarchy_stage(source: str, dt: str | None, *, data_root: str | Path | None = None,
                    run_id: str | None = None, extractor: HierarchyExtractor | None = None) -> dict[str, Any]:
    """Grow the hierarchy by the templates of the day's miner state (``dt`` None: the newest; no Spark, and
    no network unless ``extractor`` is the LLM one), and publish templates and hierarchy to the warehouse,
    where the operators' views read them."""
    from krone_jobs.jobs.hierarchy_job import run_hierarchy

    grown = run_hierarchy(source, dt, data_root=data_root, extractor=extractor)
    dt = dt or grown.dt  # the newest state's day when none was named
    metrics = {**grown.to_dict(), **publish_templates(source, dt, data_root=data_root)}
    return _recorded("hierarchy", source, dt, run_id, metrics)


def publish_templates(source: str, dt: str, *, data_root: str | Path | None = None) -> dict[str, int]:
    """Upsert the day's live templates (first / last day live in the miner's state, its running line count)
    and the hierarchy rows into the warehouse; idempotent (dates only widen, counts are replaced)."""
    from krone_jobs.jobs.hierarchy_job import load_hierarchy
    from krone_jobs.miner_state import latest_templates
    from krone_jobs.warehouse import Warehouse

    root = _root(data_root)
    store = latest_templates(root, source, dt)
    day = date.fromisoformat(dt)
    templates = [{"template_id": t.template_id, "template": t.template, "first_seen_dt": day, "last_seen_dt": day,
                  "count": t.size} for t in (store.templates() if store is not None else [])]
    nodes = [n.as_row() for n in load_hierarchy(root, source).nodes()]
    with Warehouse() as warehouse:
        warehouse.ensure_schema()
        return {"templates_published": warehouse.upsert_templates(source, templates),
                "hierarchy_rows_published": warehouse.upsert_hierarchy(source, nodes)}


def kseqs_stage(source: str, dt: str, *, data_root: str | Path | None = None,
                run_id: str | None = None) -> dict[str, Any]:
    """Cut the day's sessions into KRONE Seqs."""
    from krone_jobs.jobs.kseqs import run_kseqs

    metrics = run_kseqs(source, dt, data_root=data_root).to_dict()
    return _recorded("kseqs", source, dt, run_id, metrics)


def retention_stage(source: str, dt: str, *, data_root: str | Path | None = None, run_id: str | None = None,
                    keep_days: int | None = None, keep_raw_days: int | None = None,
                    dry_run: bool = False) -> dict[str, Any]:
    """Remove the source's partitions older than the retention window ending at ``dt``
    (:mod:`krone_jobs.retention`; the windows default to ``KRONE_RETAIN_DAYS`` / ``KRONE_RETAIN_RAW_DAYS``,
    and with neither set nothing is removed). A dry run records no metrics."""
    from krone_jobs.retention import run_retention

    config = settings()
    metrics = run_retention(source, dt, data_root=_root(data_root),
                            keep_days=keep_days if keep_days is not None else config.retain_days,
                            keep_raw_days=keep_raw_days if keep_raw_days is not None else config.retain_raw_days,
                            dry_run=dry_run).to_dict()
    if dry_run or metrics["keep_days"] is None:
        return _result("retention", source, dt, run_id or "", metrics)
    return _recorded("retention", source, dt, run_id, metrics)


def gate_verdict(source: str, dt: str, suite: str, *, data_root: str | Path | None = None,
                 required: bool = True) -> dict[str, Any]:
    """The recorded result of a quality suite for a partition, so a DAG can show the gate as its own step.

    The suites run inside the stages (a failing ``parsed`` gate must stop before the miner state is
    saved); they write their result under ``quality/<suite>/source=S/dt=D/``. Raises if the newest result
    failed, or (with ``required``) if there is none.
    """
    folder = _root(data_root) / "quality" / suite / f"source={source}" / f"dt={dt}"
    results = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not results:
        if required:
            raise FileNotFoundError(f"no {suite!r} quality result for {source} {dt} under {folder}")
        return {"suite": suite, "source": source, "dt": dt, "found": False}
    data = json.loads(results[-1].read_text(encoding="utf-8"))
    if not data.get("success"):
        raise RuntimeError(data.get("summary") or f"quality gate {suite!r} failed for {source} {dt}")
    return {"suite": suite, "source": source, "dt": dt, "found": True, "success": True,
            "summary": data.get("summary"), "counts": data.get("counts"), "path": str(results[-1])}


def parse_day(source: str, dt: str, fmt: str, *, data_root: str | Path | None = None,
              run_id: str | None = None, **parse_options: Any) -> dict[str, Any]:
    """Everything ``krone_parse_<source>`` does for one day, in its order: parse, gate, sessionize, gate,
    hierarchy, kseqs, retention (``parse_options`` as for :func:`parse_stage`), holding the source's lock
    throughout. Returns each step's result by name."""
    from krone_jobs.source_lock import source_lock

    run_id = run_id or new_run_id()
    kw: dict[str, Any] = {"data_root": data_root, "run_id": run_id}
    with source_lock(_root(data_root), source, f"night {dt}"):
        out = {"parse": parse_stage(source, dt, fmt, **kw, **parse_options)}
        out["parsed_gate"] = gate_verdict(source, dt, "parsed", data_root=data_root)
        out["sessionize"] = sessionize_stage(source, dt, **kw)
        out["sessions_gate"] = gate_verdict(source, dt, "sessions", data_root=data_root)
        out["hierarchy"] = hierarchy_stage(source, dt, **kw)
        out["kseqs"] = kseqs_stage(source, dt, **kw)
        out["retention"] = retention_stage(source, dt, **kw)
    return out


# ------------------------------------------------------------------------------------------ train, score
def train_window(source: str, end: str, *, days: int = 7, data_root: str | Path | None = None,
                 labels: str | Path | None = None, seed: int = 0, run_id: str | None = None,
                 **gate: Any) -> dict[str, Any]:
    """Train on the ``days`` days ending at ``end``; the gate and the ``champion`` move happen inside.

    ``labels`` (a CSV of ``session_id,label``; relative paths are from the data root) keeps known
    anomalies out of training; ``gate`` sets the champion gate (``fp_bound``, ``tolerance``, ``min_heldout``).
    The summary's metrics are recorded as stage ``train`` at ``end``.
    """
    from krone_jobs.jobs.train import train_partitions

    root = _root(data_root)
    result = train_partitions(source, end, days=days, data_root=root, labels=_path(labels, root), seed=seed, **gate)
    return record_training(source, end, result.summary(), run_id=run_id)


def record_training(source: str, end: str, summary: Mapping[str, Any], *, run_id: str | None = None,
                    url: str | None = None) -> dict[str, Any]:
    """Record a training run's figures (``TrainResult.summary()``) as stage ``train`` at ``end``."""
    version = str(summary.get("model_version", ""))
    metrics = {**summary.get("metrics", {}), "promoted": bool(summary.get("promoted")),
               **({"model_version": float(version)} if version.isdigit() else {})}
    run_id = run_id or new_run_id()
    rows = record_metrics(source, end, "train", run_id, metrics, url)
    return _result("train", source, end, run_id, metrics, metric_rows=rows, summary=dict(summary))


def score_day(source: str, dt: str, *, data_root: str | Path | None = None) -> dict[str, Any]:
    """Score one day's KRONE Seqs; the score job gates its reports and writes anomaly_reports, kseq_cache
    and run_metrics itself, in one warehouse transaction."""
    from krone_jobs.jobs.score import run_score

    metrics = run_score(source, dt, data_root=data_root or None).to_dict()
    return _result("score", source, dt, str(metrics.get("run_id", "")), metrics)


def unscored_days(source: str, *, data_root: str | Path | None = None) -> list[str]:
    """Days with KRONE Seqs that are not scored as they stand, oldest first: no score run has recorded them
    (what a source's first champion, or one after days that could not be scored, has to catch up on), or their
    sessions were written anew after it (:func:`krone_jobs.lineage.scored_from_older`: a stage run again by
    hand, without scoring, after a late log file)."""
    from krone_jobs.lineage import scored_from_older
    from krone_jobs.partitions import dated_files, stage_dir
    from krone_jobs.warehouse import Warehouse

    root = _root(data_root)
    written = dated_files(stage_dir(root, "kseqs", source))
    with Warehouse() as wh:
        wh.ensure_schema()  # a warehouse no stage wrote to yet has no run_metrics table
        scored = wh.stage_days(source, "score")
        content = wh.stage_metric(source, "score", "sessions_content")
    again = set(scored_from_older({dt: n for dt, n in content.items() if dt in written}, root, source))
    return [dt for dt in written if dt not in scored or dt in again]


def has_champion(source: str) -> bool:
    """Whether ``krone-<source>`` has a ``champion`` to score with (the configured MLflow store)."""
    return _champion_version(source) is not None


def set_aside(source: str, days: Iterable[str], *, data_root: str | Path | None = None,
              model_version: str | None = None) -> dict[str, ScoreFailure]:
    """Of ``days``, those whose score failed for good on what they would be scored from now (the champion
    ``model_version``, looked up when not given): the catch-up leaves them to a person
    (:mod:`krone_jobs.score_failures`)."""
    from krone_jobs.score_failures import recorded, set_aside as unchanged
    from krone_jobs.warehouse import Warehouse

    with Warehouse() as wh:
        failures = recorded(wh, source)
    version = model_version if model_version is not None else _champion_version(source)
    return unchanged(failures, _root(data_root), source, days, version)


def backlog(source: str, *, before: str | None = None, data_root: str | Path | None = None,
            retry_failed: bool = False) -> list[str]:
    """The days a scoring run catches up on for ``source``: its :func:`unscored_days` (those before
    ``before`` only, when given), or none while the source has no champion (they would only be skipped).
    Covers the days parsed before a first model, a promotion by ``krone promote`` (which emits no Airflow
    asset event) and days whose scoring failed or was skipped. A day whose score failed for good is
    :func:`set_aside` (logged) unless ``retry_failed``."""
    version = _champion_version(source)
    if version is None:
        return []
    days = [dt for dt in unscored_days(source, data_root=data_root) if before is None or dt < before]
    aside = {} if retry_failed else set_aside(source, days, data_root=data_root, model_version=version)
    for dt, failure in aside.items():
        log.warning("%s; after mending it: `krone score --source %s --date %s`", failure.set_aside_line(source),
                    source, dt)
    return [dt for dt in days if dt not in aside]


def _champion_version(source: str) -> str | None:
    from krone_jobs.model_registry import champion_version, connect

    return champion_version(connect(), source)


def night_report(source: str, dt: str, *, data_root: str | Path | None = None) -> dict[str, Any]:
    """Write the night report of a scored day; returns where it is, its summary and its figures."""
    from krone_jobs.report import write_night_report

    report = write_night_report(source, dt, data_root=Path(data_root) if data_root else None)
    payload = {"stage": "report", "source": source, "dt": dt, "path": str(report.path), "summary": report.summary,
               "figures": report.figures}
    return json.loads(json.dumps(payload, default=str))
