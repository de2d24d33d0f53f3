"""Shared pieces of the krone DAGs: pools, task defaults, assets, params and the partition a task covers.

Only the standard library and ``airflow.sdk`` are imported here, because the dag-processor re-parses these
files every few seconds; ``krone_jobs`` (Spark, torch, MLflow, Great Expectations) is imported inside
task functions only.

Deployment notes (nothing of this lives in code):

* **Pools** must exist before the scheduler runs these tasks: ``airflow pools set krone_spark 2 "Spark
  jobs"`` and ``airflow pools set krone_llm 1 "LLM-judged scoring"``. ``krone_spark`` caps concurrent
  Spark jobs on the cluster, ``krone_llm`` caps scoring runs that may call the LLM (its budget is per run).
* **Settings** come from ``KRONE_*`` environment variables (see ``krone_jobs.config``). Where an Airflow
  connection ``krone_warehouse`` exists, its URI is exported as ``KRONE_WAREHOUSE_URL`` inside the task
  (a ``postgres://`` URI becomes ``postgresql+psycopg://``; an ``sqlalchemy_url`` extra wins). Where a
  connection ``krone_llm`` exists, its host (or ``base_url`` extra), password and ``model`` extra become
  ``KRONE_LLM_BASE_URL``, ``KRONE_LLM_API_KEY`` and ``KRONE_LLM_MODEL``. Connections win over the
  environment, so secrets can stay in Airflow's secrets backend.
* **Alerts** (:mod:`krone_jobs.alerts`) go to the targets of a connection ``krone_alerts`` (type ``apprise``:
  ``{"config": {"path": "<Apprise URL>", "tag": "failure"}}`` in its extra, or a list of such; the tag, which
  routes, is optional) or else of ``KRONE_ALERT_URLS`` and ``KRONE_ALERT_CONFIG`` (an Apprise configuration
  file, whose tags route): every task that fails for good sends one (``on_failure_callback``), and
  ``krone_score`` ends with the night's digest (``KRONE_ALERT_DIGEST``). With none, nothing is sent. A run not done
  ``KRONE_RUN_DEADLINE_HOURS`` after it was queued sends one too (a deadline alert), to the environment's
  targets only: the scheduler's executor runs it, and Airflow 3.3 denies such a callback the connections.
* **Start date** of the daily DAG (how far ``catchup`` reaches back) is ``KRONE_START_DATE``
  (``YYYY-MM-DD``, default :data:`DEFAULT_START_DATE`).
* **Sources** are ``KRONE_SOURCES``: ``source:format`` entries separated by commas (format ``krone`` when
  left out), default :data:`DEFAULT_SOURCES`. Each source gets its own ``krone_parse_<source>`` and
  ``krone_train_<source>`` DAG, so each keeps its own day-by-day history (``depends_on_past``, catchup) and a
  failing day of one source holds up no other; ``krone_score`` serves them all through the asset events.
  A malformed value fails the DAG files' import with a message naming the entry, which Airflow shows.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, TypeVar

from airflow.sdk import (
    Asset,
    CronDataIntervalTimetable,
    DeadlineAlert,
    DeadlineReference,
    Param,
    SyncCallback,
    get_current_context,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

SPARK_POOL = "krone_spark"
LLM_POOL = "krone_llm"
OWNER = "krone"
ALERTS_CONN = "krone_alerts"
PARTITION_LABEL = "krone_partition"
"""The context key a mapped task sets to ``"<source> <dt>"``: its ``map_index_template``, shown in the UI and
in a failure alert instead of a bare map index."""
FORMATS = ("krone", "hdfs", "bgl", "thunderbird")  # built-in; proposals in the trigger form, not the only ones
FORMAT_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
DEFAULT_SOURCES = "synthetic:krone"
DEFAULT_START_DATE = "2026-11-01"
SOURCE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"

KSEQS_ASSET = Asset(name="krone_kseqs", uri="x-krone://kseqs", group="krone")
"""Updated when a day's KRONE Seqs are written; the event's extra names the partition (source, dt)."""
MODEL_ASSET = Asset(name="krone_model", uri="x-krone://model", group="krone")
"""Updated when a trained model passed the gate and became ``champion``."""
REPORTS_ASSET = Asset(name="krone_reports", uri="x-krone://reports", group="krone")
"""Updated when a day's anomaly reports and night report are written."""


def raw_poke_seconds() -> float:
    """How often ``raw_ready`` looks at a day's raw partition (``KRONE_RAW_POKE_SECONDS``, default 300; a look
    only lists the folder)."""
    return _bounded("KRONE_RAW_POKE_SECONDS", os.environ.get("KRONE_RAW_POKE_SECONDS"), 300.0, 1.0, 86_400.0)


def raw_wait_seconds() -> float:
    """How long ``raw_ready`` waits for a day's logs before it fails the day (``KRONE_RAW_WAIT_HOURS``, default
    24)."""
    return _bounded("KRONE_RAW_WAIT_HOURS", os.environ.get("KRONE_RAW_WAIT_HOURS"), 24.0, 0.001, 24 * 14) * 3600


def run_deadline() -> DeadlineAlert | None:
    """The deadline of every krone run (``KRONE_RUN_DEADLINE_HOURS``; unset or 0: none): a run not done this
    long after it was queued sends an alert (:func:`run_overdue`). Sensors wait up to ``KRONE_RAW_WAIT_HOURS``
    for late logs, and a task may be stuck or retrying; without it the operators would hear of a night that
    never ends only when a timeout fails it. Counted from when the run was queued, so a catch-up's runs, queued
    long after their day, are not overdue at once. Off unless set (the deployment sets 8): in Airflow 3.3.2,
    ``airflow dags test`` and ``dag.test()`` fail at the end of a run of any DAG with a deadline alert."""
    hours = _bounded("KRONE_RUN_DEADLINE_HOURS", os.environ.get("KRONE_RUN_DEADLINE_HOURS"), 0.0, 0.0, 24 * 14)
    if not hours:
        return None
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=timedelta(hours=hours),
                         callback=SyncCallback(run_overdue), name="krone run deadline")


def _bounded(name: str, value: str | None, default: float, low: float, high: float) -> float:
    number = float(value) if value and value.strip() else default
    if not low <= number <= high:  # NaN too
        raise ValueError(f"{name} must lie between {low:g} and {high:g}, not {value!r}")
    return number


@dataclass(frozen=True)
class Partition:
    """One (source, day) a task works on, plus where the data lives (``None``: ``KRONE_DATA_ROOT``)."""

    source: str
    dt: str
    data_root: str | None = None
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------ DAG arguments
def configured_sources() -> dict[str, str]:
    """``source -> line format`` from ``KRONE_SOURCES`` (see the module docstring), in the order given."""
    raw = os.environ.get("KRONE_SOURCES", "").strip() or DEFAULT_SOURCES
    sources: dict[str, str] = {}
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        source, _, fmt = (part.strip() for part in entry.partition(":"))
        fmt = fmt or "krone"
        if not re.fullmatch(SOURCE_PATTERN, source) or not re.fullmatch(FORMAT_PATTERN, fmt):
            raise ValueError(f"KRONE_SOURCES entry {entry!r} is not source[:format] (source {SOURCE_PATTERN}, "
                             f"format {FORMAT_PATTERN})")
        if source in sources:
            raise ValueError(f"KRONE_SOURCES names source {source!r} twice")
        sources[source] = fmt
    if not sources:
        raise ValueError("KRONE_SOURCES names no source")
    return sources


def start_date() -> datetime:
    """How far back ``catchup`` goes: from the environment, so a deployment chooses without a code change."""
    return datetime.fromisoformat(os.environ.get("KRONE_START_DATE") or DEFAULT_START_DATE).replace(
        tzinfo=timezone.utc)


def default_args(**overrides: Any) -> dict[str, Any]:
    """Owner and retries with exponential backoff: Spark, MLflow and the warehouse fail transiently."""
    return {
        "owner": OWNER,
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": timedelta(hours=6),
        "on_failure_callback": alert_failure,
        **overrides,
    }


def source_dag_args(kind: str, source: str, cron: str, doc: str, *, catchup: bool, note: str = "",
                    **task_defaults: Any) -> dict[str, Any]:
    """The ``@dag`` arguments a per-source DAG ``krone_<kind>_<source>`` shares with the others: a UTC cron
    data interval from :func:`start_date`, one active run, the task defaults, and its doc naming it."""
    dag_id = f"krone_{kind}_{source}"
    return {"dag_id": dag_id, "schedule": CronDataIntervalTimetable(cron, timezone="UTC"), "start_date": start_date(),
            "catchup": catchup, "max_active_runs": 1, "default_args": default_args(**task_defaults),
            "deadline": run_deadline(), "doc_md": f"{doc}\n\nThis DAG: `{dag_id}`, source `{source}`{note}."}


def source_params(fixed: str | None = None) -> dict[str, Param]:
    """Params every DAG takes: which source (``fixed``: that one only, for a DAG of one source) and,
    optionally, another data root."""
    source = (Param(fixed, type="string", enum=[fixed], description="the source this DAG runs for")
              if fixed is not None else
              Param(next(iter(configured_sources())), type="string", pattern=SOURCE_PATTERN,
                    description="source system: raw/<source>/dt=D/*.log[.gz]"))
    return {
        "source": source,
        "data_root": Param(None, type=["null", "string"],
                           description="data root (default: KRONE_DATA_ROOT of the worker)"),
    }


def date_param(name: str, description: str) -> dict[str, Param]:
    """An optional ``YYYY-MM-DD`` param that overrides the day the run would otherwise cover."""
    return {name: Param(None, type=["null", "string"], pattern=DATE_PATTERN, description=description)}


def format_param(default: str = "krone") -> dict[str, Param]:
    return {"format": Param(default, type="string", examples=list(FORMATS), pattern=FORMAT_PATTERN,
                            description="log line format: a built-in one or a format of KRONE_FORMATS_FILE")}


# ------------------------------------------------------------------------------------------ inside tasks
def fail_fast(body: Callable[..., T]) -> Callable[..., T]:
    """Wrap a task body so that a failure no retry can mend (``krone_jobs.pipeline.permanent_failures``: a
    failed quality gate, a damaged partition file, ...) fails the task at once, as ``AirflowFailException``
    with the same message, while any other failure (Spark, MLflow, the warehouse, a late file) keeps the
    task's retries."""

    @functools.wraps(body)
    def run(*args: Any, **kwargs: Any) -> T:
        try:
            return body(*args, **kwargs)
        except Exception as exc:
            from airflow.sdk.exceptions import AirflowFailException

            from krone_jobs.pipeline import permanent_failures

            if isinstance(exc, permanent_failures()):
                raise AirflowFailException(f"{type(exc).__name__} (not retried): {exc}") from exc
            raise

    return run


def give_up_if_overdue(verdict: Mapping[str, Any], context: Mapping[str, Any]) -> None:
    """In a sensor: fail at once, saying why, when what it waits for (``verdict``: ``ready``, ``reason``, ``due``
    as ISO 8601) was due longer ago than the sensor waits: a catch-up over days nobody delivered would otherwise
    hold the DAG for the whole timeout of each."""
    wait = context["task"].timeout
    wait = wait.total_seconds() if isinstance(wait, timedelta) else float(wait)
    if not verdict["ready"] and datetime.now(timezone.utc) - datetime.fromisoformat(verdict["due"]) > timedelta(
            seconds=wait):
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"{verdict['reason']}. Not waited for: it was due at {verdict['due']}, longer ago "
                                   "than this sensor waits (KRONE_RAW_WAIT_HOURS)")


def begin_task(part: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """Export connection settings into ``KRONE_*`` variables, then hand back the task's context; a mapped
    task passes its ``part``, which labels its map index (:data:`PARTITION_LABEL`)."""
    export_connections()
    context = get_current_context()
    if part is not None:
        context[PARTITION_LABEL] = f"{part['source']} {part['dt']}"  # type: ignore[index]
    return context


def alert_targets() -> Any | None:
    """The alert targets (``apprise.Apprise``) of the ``krone_alerts`` connection (read the Apprise provider's
    way), else of ``KRONE_ALERT_URLS`` and ``KRONE_ALERT_CONFIG``; ``None`` with none."""
    from krone_jobs.alerts import targets

    conn = _connection(ALERTS_CONN)
    if conn is None:
        return targets()
    from airflow.providers.apprise.hooks.apprise import AppriseHook

    return targets(AppriseHook(ALERTS_CONN).get_config_from_conn(conn))


def alert_failure(context: Mapping[str, Any]) -> None:
    """``on_failure_callback`` of every krone task: one alert per task that failed for good (its retries spent,
    or a failure no retry mends), naming the task, its day, the error and the log. An alert that cannot be sent
    is logged; it never hides the task's own failure."""
    ti = context["ti"]
    task = f"{ti.dag_id}.{ti.task_id}"
    try:
        from krone_jobs.alerts import failure, send

        to = alert_targets()
        if to is None:
            return
        label = getattr(ti, "rendered_map_index", None) or (f"map index {ti.map_index}" if ti.map_index >= 0 else "")
        day = label or context["params"].get("dt") or day_of(context.get("data_interval_start"))
        send(failure(task, context.get("exception"), run=ti.run_id, day=day, attempt=f"try {ti.try_number}",
                     log_url=getattr(ti, "log_url", None)), to)
    except Exception:
        log.exception("the failure alert of %s was not sent", task)


def run_overdue(context: Mapping[str, Any], **_: Any) -> None:
    """The callback of :func:`run_deadline` (run by the scheduler's executor; ``context`` holds the run and the
    deadline): an alert naming the run, what it may be waiting for and where to look, to the targets of
    ``KRONE_ALERT_URLS`` and ``KRONE_ALERT_CONFIG``: Airflow 3.3 denies a callback the connections
    (``krone_alerts`` included). Not sent is logged."""
    run, deadline = context["dag_run"], context["deadline"]
    try:
        from urllib.parse import quote

        from airflow.configuration import conf

        from krone_jobs.alerts import late, send, targets

        to = targets()
        if to is None:
            log.warning("%s %s is not done by its deadline; no alert sent: deadline alerts go to KRONE_ALERT_URLS "
                        "or KRONE_ALERT_CONFIG of the scheduler (a callback may not read the %s connection)",
                        run.get("dag_id"), run.get("dag_run_id"), ALERTS_CONN)
            return
        base = conf.get("api", "base_url", fallback="").rstrip("/")
        link = f"{base}/dags/{run['dag_id']}/runs/{quote(run['dag_run_id'], safe='')}"
        send(late(run["dag_id"], run["dag_run_id"], state=str(run.get("state")), queued=str(run.get("queued_at")),
                  deadline=str(deadline["deadline_time"]), link=link), to)
    except Exception:
        log.exception("the deadline alert of %s %s was not sent", run.get("dag_id"), run.get("dag_run_id"))


def export_connections() -> list[str]:
    """Export the ``krone_warehouse`` / ``krone_llm`` connections where they exist; returns what was set."""
    exported: list[str] = []
    warehouse = _connection("krone_warehouse")
    if warehouse is not None:
        exported += _export({"KRONE_WAREHOUSE_URL": warehouse_url(warehouse)})
    llm = _connection("krone_llm")
    if llm is not None:
        extra = llm.extra_dejson
        exported += _export({"KRONE_LLM_BASE_URL": extra.get("base_url") or llm.host,
                             "KRONE_LLM_API_KEY": llm.password, "KRONE_LLM_MODEL": extra.get("model")})
    return exported


def warehouse_url(conn: Any) -> str:
    """SQLAlchemy URL of a connection: Airflow writes ``postgres://``, SQLAlchemy wants a driver name."""
    explicit = conn.extra_dejson.get("sqlalchemy_url")
    if explicit:
        return str(explicit)
    uri = conn.get_uri()
    for prefix in ("postgres://", "postgresql://"):
        if uri.startswith(prefix):
            return "postgresql+psycopg://" + uri[len(prefix):]
    return uri


def _connection(conn_id: str) -> Any | None:
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None


def _export(values: Mapping[str, Any]) -> list[str]:
    set_now = [name for name, value in values.items() if value]
    for name in set_now:
        os.environ[name] = str(values[name])
    if set_now:
        log.info("exported %s from Airflow connections", ", ".join(set_now))
    return set_now


def day_of(value: Any) -> str | None:
    """``YYYY-MM-DD`` (UTC) of a datetime from the context, or None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).date().isoformat() if value.tzinfo else value.date().isoformat()
    return date.fromisoformat(str(value)[:10]).isoformat()


def interval_day(context: Mapping[str, Any]) -> str:
    """The day a daily run covers: ``params.dt`` if given, else the start of its data interval, else (a
    manual run without a logical date) the day before it was triggered."""
    dt = context["params"].get("dt") or day_of(context.get("data_interval_start"))
    return dt or str(day_of(context["dag_run"].run_after - timedelta(days=1)))


def day_partition(context: Mapping[str, Any]) -> Partition:
    """The partition a ``krone_parse_<source>`` task covers (idempotent over the run's data interval)."""
    params = context["params"]
    return Partition(source=params["source"], dt=interval_day(context), data_root=params.get("data_root"),
                     run_id=context["dag_run"].run_id)


def asset_partitions(context: Mapping[str, Any], asset: Asset) -> list[Partition]:
    """Partitions named by the asset events that triggered this run, oldest first; a manual run (or
    ``dag.test``) has none, so it falls back to params and the run's own day."""
    params, run_id = context["params"], context["dag_run"].run_id
    if params.get("dt"):
        return [Partition(params["source"], params["dt"], params.get("data_root"), run_id)]
    triggered = context.get("triggering_asset_events")
    events = _events(triggered, asset)
    found = {(e["source"], e["dt"], e.get("data_root")) for e in events if e.get("source") and e.get("dt")}
    if found or triggered:  # triggered by events of another asset only: none of this one's partitions
        return [Partition(s, d, root, run_id) for s, d, root in sorted(found, key=lambda k: (k[1], k[0]))]
    return [Partition(params["source"], interval_day(context), params.get("data_root"), run_id)]


def promoted_sources(context: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """``(source, data_root)`` of each model that became champion in the events that triggered this run."""
    events = _events(context.get("triggering_asset_events"), MODEL_ASSET)
    return sorted({(e["source"], e.get("data_root")) for e in events if e.get("source")}, key=lambda k: k[0])


def catch_up_requests(context: Mapping[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """``(source, data_root, before)`` for each source whose unscored days this run catches up on: every
    such day (``before`` None) of a source whose model just became champion, and for a source that
    ``krone_kseqs`` events named, those older than its oldest named day. Later days are left alone: their
    own events may still be queued for the next run. So a day whose scoring failed or was skipped (no
    champion yet, or one promoted by ``krone promote``, which emits no asset event) is scored by the next
    run of its source, unless it failed for good and nothing it is scored from changed since
    (:mod:`krone_jobs.score_failures`). A manual run for one ``dt`` catches up only on promoted sources."""
    promoted = promoted_sources(context)
    requests: list[tuple[str, str | None, str | None]] = [(source, root, None) for source, root in promoted]
    if context["params"].get("dt"):
        return requests
    oldest: dict[tuple[str, str | None], str] = {}
    for e in _events(context.get("triggering_asset_events"), KSEQS_ASSET):
        if e.get("source") and e.get("dt") and e["source"] not in {source for source, _ in promoted}:
            key = (e["source"], e.get("data_root"))
            oldest[key] = min(oldest.get(key, e["dt"]), e["dt"])
    return requests + [(source, root, dt) for (source, root), dt in sorted(oldest.items(), key=lambda kv: kv[0][0])]


def backlog_partitions(requests: Iterable[tuple[str, str | None, str | None]], named: Iterable[Partition],
                       run_id: str) -> list[Partition]:
    """The unscored days :func:`catch_up_requests` asks for (``krone_jobs.pipeline.backlog``), less the
    ``named`` ones. Catching up is extra: a backlog that cannot be read (warehouse or tracking server
    down) is logged and left to a later run, and the named days still go (and fail on their own)."""
    from krone_jobs import pipeline

    taken = {(p.source, p.dt) for p in named}
    found: list[Partition] = []
    for source, root, before in requests:
        try:
            days = pipeline.backlog(source, before=before, data_root=root)
        except Exception as exc:  # noqa: BLE001 - any failure here must not cost the named days their run
            log.warning("%s: not catching up this run, its backlog is unknown: %r", source, exc)
            continue
        found += [Partition(source, dt, root, run_id) for dt in days if (source, dt) not in taken]
    return found


def with_catch_up(named: list[Partition], catch_up: list[Partition], most: int) -> list[Partition]:
    """The partitions a run names (always all of them) and, up to ``most`` in all, the oldest days to catch up
    on; the days left over are logged (a later run takes them)."""
    room = max(0, most - len(named))
    if len(catch_up) > room:
        log.warning("%d unscored days left for a later run (at most %d a run)", len(catch_up) - room, most)
    return [*named, *sorted(catch_up, key=lambda p: (p.dt, p.source))[:room]]


def _events(accessor: Any, asset: Asset) -> Iterable[Mapping[str, Any]]:
    """Extras of the triggering events of ``asset`` (none when the run was not asset-triggered)."""
    if not accessor:
        return []
    try:
        return [dict(e.extra or {}) for e in accessor[asset]]
    except KeyError:
        return []
