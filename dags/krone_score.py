"""
### krone_score: judge a parsed day and write the night report

Scheduled by the asset `krone_kseqs`: a `krone_parse_<source>` run that wrote a day's KRONE Seqs triggers
it, and the event's extra names the partition. One DAG serves every source. If several days (or sources)
landed before this DAG ran (a catchup), one run scores each of them, oldest day first (the verdict cache
of a source grows in date order).

`partitions` (which (source, dt) to score: the triggering events; on a manual run the `dt` param, else
the day of its logical date, else the day before the run) -> `score` (the `champion` model of
`krone-<source>`: verdict-cache lookup -> Local-Context -> Nested-Aware -> LLM within budget, early exit;
the *reports* Great Expectations gate, then anomaly_reports, kseq_cache and run_metrics in one warehouse
transaction, so a rerun replaces the day) -> `reports_gate` (the recorded *reports* verdict of each day
that has reports) -> `night_report` (the operators' HTML page), which updates the asset `krone_reports`.

`score` runs in pool `krone_llm` (it may call the LLM; the budget is per run, the pool caps how many
runs spend it at once) and starts Spark: give `krone_llm` no more slots than `krone_spark`.
Params (manual runs): `source` (default: the first of `KRONE_SOURCES`), `dt`, `data_root`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from airflow.sdk import chain, dag, task

if str(Path(__file__).parent) not in sys.path:  # a plain DagBag or runpy does not add the dags folder
    sys.path.append(str(Path(__file__).parent))

from krone_common import (  # noqa: E402
    KSEQS_ASSET,
    LLM_POOL,
    REPORTS_ASSET,
    asset_partitions,
    begin_task,
    date_param,
    default_args,
    source_params,
    start_date,
)


@task
def partitions() -> list[dict[str, Any]]:
    """The (source, dt) partitions this run scores, oldest first."""
    return [p.to_dict() for p in asset_partitions(begin_task(), KSEQS_ASSET)]


@task(pool=LLM_POOL)
def score(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Score each partition (gate and warehouse writes happen inside, per day)."""
    from krone_jobs import pipeline

    begin_task()
    return [pipeline.score_day(p["source"], p["dt"], data_root=p["data_root"]) for p in parts]


def _reports_verdict(part: dict[str, Any], scored: dict[str, Any]) -> dict[str, Any]:
    """The recorded *reports* verdict of one day; a day without reports had nothing to check."""
    from krone_jobs import pipeline

    if not scored["metrics"].get("anomalies"):
        return {"suite": "reports", "source": part["source"], "dt": part["dt"], "found": False,
                "reason": "no reports to check"}
    return pipeline.gate_verdict(part["source"], part["dt"], "reports", data_root=part["data_root"])


@task
def reports_gate(parts: list[dict[str, Any]], scored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Show the *reports* suite's verdict per partition."""
    begin_task()
    return [_reports_verdict(p, s) for p, s in zip(parts, scored)]


@task(outlets=[REPORTS_ASSET])
def night_report(parts: list[dict[str, Any]], *, outlet_events: Any = None) -> list[dict[str, Any]]:
    """Write each partition's night report."""
    from krone_jobs import pipeline

    begin_task()
    reports = [pipeline.night_report(p["source"], p["dt"], data_root=p["data_root"]) for p in parts]
    outlet_events[REPORTS_ASSET].extra = {"partitions": [{"source": p["source"], "dt": p["dt"]} for p in parts]}
    return reports


@dag(
    dag_id="krone_score",
    schedule=KSEQS_ASSET,
    start_date=start_date(),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    params={**source_params(), **date_param("dt", "day to score on a manual run")},
    tags=["krone", "score", "llm", "spark"],
    doc_md=__doc__,
)
def krone_score() -> None:
    parts = partitions()
    chain(reports_gate(parts, score(parts)), night_report(parts))


krone_score()
