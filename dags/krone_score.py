"""
### krone_score: judge a parsed day and write the night report

Scheduled by the asset `krone_kseqs`: a `krone_parse_<source>` run that wrote a day's KRONE Seqs triggers
it, and the event's extra names the partition. One DAG serves every source. If several days (or sources)
landed before this DAG ran (a catchup), one run scores each of them, oldest day first (one at a time:
the verdict cache of a source grows in date order unless a retry intervenes). It is also scheduled by the
asset `krone_model`: when a source's model becomes champion, every day of that source with KRONE Seqs but
no score run is scored, so the days parsed before a source's first model are not left out. A run that a
source's KRONE Seqs trigger also scores that source's earlier days with no score run, once it has a
champion: a day whose scoring failed after its retries, or was skipped before a model promoted with
`krone promote` (which emits no asset event), is taken up by the next night of its source. A day whose score
failed for good (a damaged sessions file, the reports gate) is set aside, with a warning in the `partitions`
log, until what it is scored from changes (its sessions written again, its hierarchy, a new champion):
`krone status` names it; a manual run with its `dt` scores it at any time.

`partitions` (which (source, dt) to score: the triggering events; on a manual run the `dt` param, else
the day of its logical date, else the day before the run), then per partition (a mapped task group
`partition`, so a failing day or source holds up no other) `score` (the `champion` model of
`krone-<source>`: verdict-cache lookup -> Local-Context -> Nested-Aware -> LLM within budget, early exit;
the *reports* Great Expectations gate, then anomaly_reports, kseq_cache and run_metrics in one warehouse
transaction, so a rerun replaces the day; *skipped* while the source has no champion) -> `reports_gate`
(the recorded *reports* verdict of the day, if it has reports) -> `night_report` (the operators' HTML
page), which updates the asset `krone_reports`. Each mapped task is labelled with its source and day. Last,
`notify` sends the night's digest to the alert targets (`krone_alerts` connection, or `KRONE_ALERT_URLS` and
`KRONE_ALERT_CONFIG`; `KRONE_ALERT_DIGEST`: when there are anomalies, always or never), also when some days
failed: every task that fails for good sends its own alert.

`score` runs in pool `krone_llm` (it may call the LLM; the budget is per run, the pool caps how many
runs spend it at once) and starts Spark: give `krone_llm` no more slots than `krone_spark`.
Params (manual runs): `source` (default: the first of `KRONE_SOURCES`), `dt`, `data_root`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow.sdk import chain, dag, task, task_group, teardown

if str(Path(__file__).parent) not in sys.path:  # a plain DagBag or runpy does not add the dags folder
    sys.path.append(str(Path(__file__).parent))

from krone_common import (  # noqa: E402
    ALERTS_CONN,
    KSEQS_ASSET,
    LLM_POOL,
    MODEL_ASSET,
    PARTITION_LABEL,
    REPORTS_ASSET,
    alert_targets,
    asset_partitions,
    backlog_partitions,
    begin_task,
    catch_up_requests,
    date_param,
    default_args,
    fail_fast,
    run_deadline,
    source_params,
    start_date,
    with_catch_up,
)


MAX_CATCH_UP = 500
"""Days one run scores at most, catch-up included (Airflow maps at most ``max_map_length``, 1,024 by default,
instances of a task)."""


@task
def partitions() -> list[dict[str, Any]]:
    """The (source, dt) partitions this run scores, oldest first: those the triggering ``krone_kseqs`` events
    name and the days to catch up on (``catch_up_requests``): every day not scored yet of a source whose
    model just became champion, and of a source the events name, those before its oldest named day. An
    unknown backlog (warehouse or tracking server down) is logged and left to a later run."""
    context = begin_task()
    parts = asset_partitions(context, KSEQS_ASSET)
    requests = catch_up_requests(context)
    if requests:
        parts = with_catch_up(parts, backlog_partitions(requests, parts, context["dag_run"].run_id), MAX_CATCH_UP)
    return [p.to_dict() for p in sorted(parts, key=lambda p: (p.dt, p.source))]


LABEL = "{{ %s }}" % PARTITION_LABEL
"""Each mapped task's ``map_index_template``: the UI (and a failure alert) name its source and day."""


@task(pool=LLM_POOL, max_active_tis_per_dagrun=1, map_index_template=LABEL)
@fail_fast
def score(part: dict[str, Any]) -> dict[str, Any]:
    """Score one partition (gate and warehouse writes happen inside); skipped while its source has no
    champion (the day is scored when the first one is promoted)."""
    from airflow.sdk.exceptions import AirflowSkipException

    from krone_jobs import pipeline
    from krone_jobs.model_registry import NoChampion

    begin_task(part)
    try:
        return pipeline.score_day(part["source"], part["dt"], data_root=part["data_root"])
    except NoChampion as exc:
        raise AirflowSkipException(f"{part['source']} {part['dt']} not scored yet: {exc}") from exc


@task(map_index_template=LABEL)
def reports_gate(part: dict[str, Any], scored: dict[str, Any]) -> dict[str, Any]:
    """Show the recorded *reports* verdict of the day; a day without reports had nothing to check."""
    from krone_jobs import pipeline

    begin_task(part)
    if not scored["metrics"].get("anomalies"):
        return {"suite": "reports", "source": part["source"], "dt": part["dt"], "found": False,
                "reason": "no reports to check"}
    return pipeline.gate_verdict(part["source"], part["dt"], "reports", data_root=part["data_root"])


@task(outlets=[REPORTS_ASSET], map_index_template=LABEL)
@fail_fast
def night_report(part: dict[str, Any], *, outlet_events: Any = None) -> dict[str, Any]:
    """Write the day's night report."""
    from krone_jobs import pipeline

    begin_task(part)
    report = pipeline.night_report(part["source"], part["dt"], data_root=part["data_root"])
    outlet_events[REPORTS_ASSET].extra = {"partitions": [{"source": part["source"], "dt": part["dt"]}]}
    return report


@task_group(group_id="partition")
def one_partition(part: dict[str, Any]) -> Any:
    """One (source, day): a failing or skipped day stops only its own steps. Its night report is the group's
    result, which ``notify`` collects over the days."""
    report = night_report(part)
    chain(reports_gate(part, score(part)), report)
    return report


@teardown
@task
def notify(parts: list[dict[str, Any]] | None, reports: Any) -> dict[str, Any]:
    """Send the night's digest (:func:`krone_jobs.alerts.digest`: each day's figures and top chunk, and how many
    days have no report) to the alert targets, when ``KRONE_ALERT_DIGEST`` says so. A teardown: it runs
    whatever became of the days (each failure sent its own alert; ``parts`` and ``reports`` are ``None`` where
    none came), and the run's state stays theirs: a failed day fails the run, a digest does not. A digest a
    target did not take fails this task (its retries send it again, its failure alert says so)."""
    from krone_jobs import alerts

    begin_task()
    to = alert_targets()
    if to is None:
        return {"sent": False,
                "reason": f"no alert targets (connection {ALERTS_CONN}, KRONE_ALERT_URLS, KRONE_ALERT_CONFIG)"}
    # the reports of the days that wrote one: one day's comes as itself, not as a list of one
    reports = [reports] if isinstance(reports, Mapping) else [r for r in reports or () if r]
    note = alerts.digest(reports, expected=len(parts or ()))
    if note is None:
        return {"sent": False, "reason": "nothing to send (KRONE_ALERT_DIGEST)", "reports": len(reports)}
    return {"sent": True, "title": note.title, "targets": alerts.send(note, to), "reports": len(reports)}


@dag(
    dag_id="krone_score",
    schedule=KSEQS_ASSET | MODEL_ASSET,
    start_date=start_date(),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    deadline=run_deadline(),
    params={**source_params(), **date_param("dt", "day to score on a manual run")},
    tags=["krone", "score", "llm", "spark"],
    doc_md=__doc__,
)
def krone_score() -> None:
    parts = partitions()
    notify(parts, one_partition.expand(part=parts))


krone_score()
