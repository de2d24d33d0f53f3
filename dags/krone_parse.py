"""
### krone_parse_&lt;source&gt;: one day of raw logs to KRONE Seqs

One DAG per source of `KRONE_SOURCES` (`source:format,...`, default `synthetic:krone`). Per daily data
interval (UTC midnight to midnight, `dt` = the interval's start day) of its source:

`raw_ready` (a sensor, in reschedule mode: it waits, without holding a worker slot, until the day's raw logs
are all there: the day's marker `KRONE_RAW_MARKER`, default `_SUCCESS`, or a log file once
`KRONE_RAW_GRACE_MINUTES`, default 60, have passed since the day ended on the log's clock; a day with neither
fails after `KRONE_RAW_WAIT_HOURS`, default 24, or at once when it was due longer ago than that, and the
days after it wait) -> `late_days` (with `KRONE_REPARSE_LATE=true`: the stale days of the week before, a log
file delivered after its day was parsed, are parsed again in order first) ->
`parse` (Spark: fields, session keys, Drain3 template ids; bad lines to quarantine) ->
`parsed_gate` (Great Expectations suite *parsed*) -> `sessionize` (Spark; sessions that cross midnight
are carried to the next day) -> `sessions_gate` (suite *sessions*) -> `hierarchy` (new templates only,
offline) -> `kseqs` (Spark), which updates the asset `krone_kseqs` with `{"source", "dt"}` in the event's
extra: that schedules `krone_score` for the day -> `retention` (the source's partitions older than
`KRONE_RETAIN_DAYS` days are removed; unset, the default: nothing is).

The suites run inside the stages (a day that fails *parsed* never saves its miner state); the gate steps
show their recorded verdicts and fail if a verdict is missing or failed.

Every task overwrites exactly its own partition, so reruns and backfills are safe. Days must be processed
in date order (parse seeds from the previous day's miner state; sessionize reads its open sessions):
`max_active_runs=1` and `depends_on_past`. `catchup` reaches back to `KRONE_START_DATE`.

A log file delivered for a day already parsed is never read by that day's run: the next parse runs name the
day as stale (a warning in the `parse` task's log, `stale_earlier_days` in `run_metrics`, the night report,
the digest); clear this DAG's runs from that day on to take it in (`krone status` prints the day), or set
`KRONE_REPARSE_LATE=true` and the next run's `late_days` does it (within a week).

Params: `source` (fixed: the DAG's own), `format` (krone | hdfs | bgl | thunderbird, or a format of
`KRONE_FORMATS_FILE`; default: the one `KRONE_SOURCES` names), `data_root` (default `KRONE_DATA_ROOT`),
`dt` (reprocess one day on a manual run). Settings come from `KRONE_*`
variables and the `krone_warehouse` connection (see `krone_common`). Pool `krone_spark` caps the Spark steps.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from airflow.sdk import PokeReturnValue, chain, dag, task

if str(Path(__file__).parent) not in sys.path:  # a plain DagBag or runpy does not add the dags folder
    sys.path.append(str(Path(__file__).parent))

from krone_common import (  # noqa: E402
    KSEQS_ASSET,
    SPARK_POOL,
    begin_task,
    configured_sources,
    date_param,
    day_partition,
    fail_fast,
    format_param,
    give_up_if_overdue,
    raw_poke_seconds,
    raw_wait_seconds,
    source_dag_args,
    source_params,
)

log = logging.getLogger(__name__)


@task.sensor(poke_interval=raw_poke_seconds(), timeout=raw_wait_seconds(), mode="reschedule")
def raw_ready() -> PokeReturnValue:
    """Wait until the day's raw logs are all there (``krone_jobs.raw_readiness``), so a night never parses a day
    its shippers are still delivering; the reason is logged on every look."""
    from krone_jobs import pipeline

    context = begin_task()
    p = day_partition(context)
    verdict = pipeline.raw_ready(p.source, p.dt, context["params"]["format"], data_root=p.data_root)
    log.info("%s", verdict["reason"])
    give_up_if_overdue(verdict, context)
    return PokeReturnValue(is_done=verdict["ready"], xcom_value=verdict)


@task(pool=SPARK_POOL)
@fail_fast
def late_days() -> dict[str, Any]:
    """With KRONE_REPARSE_LATE, parse again the stale days of the week before (a log file delivered after its
    day was parsed), in order, so that the day is seeded from what they hold now and krone_score's catch-up
    scores them again; without it, nothing (``parse`` names them)."""
    from krone_jobs import pipeline

    context = begin_task()
    p = day_partition(context)
    return pipeline.late_days(p.source, p.dt, context["params"]["format"], data_root=p.data_root, run_id=p.run_id)


@task(pool=SPARK_POOL)
@fail_fast
def parse() -> dict[str, Any]:
    """Parse the day's raw files."""
    from krone_jobs import pipeline

    context = begin_task()
    p = day_partition(context)
    return pipeline.parse_stage(p.source, p.dt, context["params"]["format"], data_root=p.data_root,
                                run_id=p.run_id)


@task
def parsed_gate() -> dict[str, Any]:
    """Show the *parsed* suite's verdict as its own step."""
    from krone_jobs import pipeline

    p = day_partition(begin_task())
    return pipeline.gate_verdict(p.source, p.dt, "parsed", data_root=p.data_root)


@task(pool=SPARK_POOL)
@fail_fast
def sessionize() -> dict[str, Any]:
    """Group the day's events into sessions (with yesterday's still-open ones)."""
    from krone_jobs import pipeline

    p = day_partition(begin_task())
    return pipeline.sessionize_stage(p.source, p.dt, data_root=p.data_root, run_id=p.run_id)


@task
def sessions_gate() -> dict[str, Any]:
    """Show the *sessions* suite's verdict as its own step."""
    from krone_jobs import pipeline

    p = day_partition(begin_task())
    return pipeline.gate_verdict(p.source, p.dt, "sessions", data_root=p.data_root)


@task
@fail_fast
def hierarchy() -> dict[str, Any]:
    """Place the day's new templates in the hierarchy (offline extractor; overrides win)."""
    from krone_jobs import pipeline

    p = day_partition(begin_task())
    return pipeline.hierarchy_stage(p.source, p.dt, data_root=p.data_root, run_id=p.run_id)


@task(pool=SPARK_POOL, outlets=[KSEQS_ASSET])
@fail_fast
def kseqs(*, outlet_events: Any = None) -> dict[str, Any]:
    """Cut the day's sessions into KRONE Seqs and announce the partition to ``krone_score``."""
    from krone_jobs import pipeline

    p = day_partition(begin_task())
    result = pipeline.kseqs_stage(p.source, p.dt, data_root=p.data_root, run_id=p.run_id)
    outlet_events[KSEQS_ASSET].extra = {"source": p.source, "dt": p.dt, "data_root": p.data_root}
    return result


@task(depends_on_past=False)
@fail_fast
def retention() -> dict[str, Any]:
    """Remove the source's partitions older than the retention window ending at the day (KRONE_RETAIN_DAYS;
    unset: nothing is removed). Fails, after recording, if an entry could not be removed; as housekeeping it
    does not depend on the day before's, so a failure never holds up the next day."""
    from krone_jobs import pipeline

    p = day_partition(begin_task())
    result = pipeline.retention_stage(p.source, p.dt, data_root=p.data_root, run_id=p.run_id)
    if errors := result["metrics"]["errors"]:
        raise RuntimeError(f"retention could not remove {len(errors)} entries: {'; '.join(errors[:5])}")
    return result


def parse_dag(source: str, fmt: str) -> Any:
    """The daily parse DAG of one source."""

    @dag(
        **source_dag_args("parse", source, "0 0 * * *", __doc__ or "", catchup=True, note=f", format `{fmt}`",
                          depends_on_past=True),
        params={**source_params(source), **format_param(fmt),
                **date_param("dt", "day to process (default: the data interval)")},
        tags=["krone", "spark", "parse"],
    )
    def krone_parse() -> None:
        chain(raw_ready(), late_days(), parse(), parsed_gate(), sessionize(), sessions_gate(), hierarchy(), kseqs(),
              retention())

    return krone_parse()


for _source, _format in configured_sources().items():
    parse_dag(_source, _format)
