"""The warehouse: schema from ``sql/``, idempotent partition writes, the verdict cache and feedback.

The same API and SQL for DuckDB (the default: a file under the data root, one machine, one writing process
at a time) and PostgreSQL (the multi-machine deployment). Every value travels as a bind parameter; the only
identifiers put into SQL text are this module's constants (caller table names are checked against them).

Each write is one transaction keyed by its partition: a rerun or backfill replaces rows instead of adding
them, and a failure half-way leaves the previous rows. On PostgreSQL bulk rows go in with one executemany
(Core ``insert`` with a list of dicts). DuckDB binds an executemany row by row (35 s for 100k reports), so
there the same list of dicts goes in as one Arrow table matched to the columns by name (2-3 s). Upserts
stage rows in a temporary table that way and merge them with one ``INSERT ... SELECT ... ON CONFLICT``
(a per-row ``ON CONFLICT`` executemany costs DuckDB ~7 ms a row). Timestamps are UTC instants.

A DuckDB file admits one process at a time, and DAG tasks of different runs are different processes (a
parse of the next day while a score runs). So a DuckDB file is opened per transaction (no pool: the file is
free between transactions), and a transaction that finds it held waits for it, up to ``lock_wait_s``
(:data:`LOCK_WAIT_S`), instead of failing the task. Measured under ``airflow standalone``
(``bench/airflow_catch_up_check.py --via parse``): a parse task that met a running score failed at once on
the lock and ran again only after its retry delay, 3 min 51 s later. The price: opening (and, on closing,
checkpointing) the file costs a write transaction 34-48 ms instead of 5-6 ms pooled, a few dozen
transactions a night.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, column, create_engine, delete, exc, insert, make_url, table, text
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.expression import TableClause

from krone_jobs.config import settings
from krone_jobs.hierarchy.model import FIELDS as HIERARCHY_FIELDS
from krone_jobs.partitions import check_date

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
SCHEMA_FILES = ("tables.sql", "views.sql")
CONNECT_TIMEOUT_S = 5
LOCK_WAIT_S = 120.0
"""Seconds a transaction waits for a DuckDB file another process holds (a krone transaction takes seconds)."""
PARTITIONED = ("anomaly_reports", "run_metrics")
"""Tables whose rows belong to a (source, dt) partition, the unit that :meth:`replace_partition` swaps."""
REPORT_FIELDS = (
    "session_id", "level", "chunk_index", "kseq_key", "cache_key", "segment_template_ids", "line_refs", "detector", "score",
    "reason", "model_version",
)
CACHE_FIELDS = ("level", "kseq_key", "verdict", "score", "detector", "reason")
TEMPLATE_FIELDS = ("template_id", "template", "first_seen_dt", "last_seen_dt", "count")
VERDICTS = ("normal", "anomalous")
_ARROW_VIEW = "krone_rows"
_SCHEMA_LOCK = 0x6B726F6E65  # "krone": serialises concurrent ensure_schema() calls on PostgreSQL

_MERGES = {
    "templates": """
        INSERT INTO templates SELECT * FROM krone_stage_templates
        ON CONFLICT (source, template_id) DO UPDATE SET
            template = excluded.template,
            first_seen_dt = LEAST(templates.first_seen_dt, excluded.first_seen_dt),
            last_seen_dt = GREATEST(templates.last_seen_dt, excluded.last_seen_dt),
            count = excluded.count""",
    "hierarchy": """
        INSERT INTO hierarchy SELECT * FROM krone_stage_hierarchy
        ON CONFLICT (source, template_id) DO UPDATE SET
            template = excluded.template, entity = excluded.entity, action = excluded.action,
            status = excluded.status, entity_node = excluded.entity_node, action_node = excluded.action_node,
            status_node = excluded.status_node, origin = excluded.origin, version = excluded.version,
            updated_at = excluded.updated_at""",
    "kseq_cache": """
        INSERT INTO kseq_cache SELECT * FROM krone_stage_kseq_cache
        ON CONFLICT (source, model_version, cache_key) DO UPDATE SET
            level = excluded.level, kseq_key = excluded.kseq_key, verdict = excluded.verdict,
            score = excluded.score, detector = excluded.detector, reason = excluded.reason,
            hits = kseq_cache.hits + excluded.hits,
            last_seen = GREATEST(kseq_cache.last_seen, excluded.last_seen)""",
    "score_failures": """
        INSERT INTO score_failures SELECT * FROM krone_stage_score_failures
        ON CONFLICT (source, dt) DO UPDATE SET
            run_id = excluded.run_id, error = excluded.error, message = excluded.message, inputs = excluded.inputs,
            attempts = score_failures.attempts + excluded.attempts, failed_at = excluded.failed_at""",
}
"""Upsert statements per table; the stage table is a column-for-column copy, hence ``SELECT *``."""

_FIND_CHUNK = text(
    "SELECT cache_key, kseq_key FROM anomaly_reports WHERE source = :source AND cache_key IS NOT NULL"
    " AND (cache_key = :key OR kseq_key = :key) "
    "UNION SELECT cache_key, kseq_key FROM kseq_cache WHERE source = :source AND (cache_key = :key OR kseq_key = :key)"
)
_REPORTED = text(
    "SELECT DISTINCT session_id FROM anomaly_reports WHERE source = :source AND dt BETWEEN :start AND :end"
)
_STAGE_DAYS = text("SELECT DISTINCT dt FROM run_metrics WHERE source = :source AND stage = :stage")
_STAGE_METRIC = text("SELECT dt, value FROM run_metrics WHERE source = :source AND stage = :stage AND metric = :metric")
_SCORE_FAILURES = text(
    "SELECT dt, run_id, error, message, inputs, attempts, first_failed_at, failed_at FROM score_failures "
    "WHERE source = :source ORDER BY dt"
)
_LOAD_CACHE = text(
    "SELECT cache_key, level, kseq_key, verdict, score, detector, reason, hits, first_seen, last_seen "
    "FROM kseq_cache WHERE source = :source AND model_version = :model_version"
)
_NORMAL_KEYS = text(
    "SELECT cache_key, kseq_key FROM ("
    " SELECT cache_key, kseq_key, verdict,"
    "  ROW_NUMBER() OVER (PARTITION BY cache_key ORDER BY created_at DESC) AS newest"
    " FROM feedback WHERE source = :source) latest "
    "WHERE newest = 1 AND verdict = 'normal'"
)

Row = Mapping[str, Any]


class WarehouseUnavailable(RuntimeError):
    """The warehouse cannot be reached: server down, wrong URL, or a DuckDB file held by another process."""


class Warehouse:
    """SQLAlchemy engine on the warehouse plus the writes and reads the pipeline stages need.

    Call :meth:`ensure_schema` once per job before writing. ``url`` defaults to ``settings().warehouse_url``.
    """

    def __init__(self, url: str | None = None, *, lock_wait_s: float = LOCK_WAIT_S) -> None:
        self.url = url or settings().warehouse_url
        self.safe_url = make_url(self.url).render_as_string(hide_password=True)
        self.engine = _create_engine(self.url)
        self.lock_wait_s = lock_wait_s

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release pooled connections (and, for DuckDB, the file) so another process can use it."""
        self.engine.dispose()

    def ensure_schema(self) -> None:
        """Create missing tables and (re)create the views: safe to run before every job."""
        statements = [s for name in SCHEMA_FILES for s in _statements((SQL_DIR / name).read_text())]
        with self._begin() as conn:
            if conn.dialect.name == "postgresql":  # parallel DAG tasks would race on CREATE TABLE
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            for statement in statements:
                conn.exec_driver_sql(statement)

    def replace_partition(self, table_name: str, source: str, dt: str | date, rows: Iterable[Row]) -> int:
        """Swap the (source, dt) rows of ``table_name`` for ``rows`` in one transaction; the partition wins
        over any ``source``/``dt`` in the rows. Empty ``rows`` clears the partition (a rerun that finds
        nothing must not leave yesterday's run behind). Returns the number of rows written."""
        if table_name not in PARTITIONED:
            raise ValueError(f"not a partitioned table: {table_name!r} (expected one of {PARTITIONED})")
        keys = {"source": source, "dt": _day(dt)}
        with self._begin() as conn:
            return _replace(conn, table_name, keys, [{**r, **keys} for r in rows])

    def write_reports(self, source: str, dt: str | date, run_id: str, rows: Iterable[Row]) -> int:
        """Replace the day's anomaly reports; list-valued template ids and line refs are stored as JSON."""
        with self._begin() as conn:
            return _replace(conn, "anomaly_reports", {"source": source, "dt": _day(dt)}, _reports(source, dt, run_id, rows))

    def write_run_metrics(
        self, source: str, dt: str | date, stage: str, run_id: str, metrics: Mapping[str, float]
    ) -> int:
        """Replace one stage's metrics for the partition (other stages' metrics of that day stay)."""
        keys = {"source": source, "dt": _day(dt), "stage": stage}
        with self._begin() as conn:
            return _replace(conn, "run_metrics", keys, _metric_rows(keys, run_id, metrics))

    def write_score(
        self, source: str, dt: str | date, run_id: str, *, model_version: str, reports: Iterable[Row],
        cache: Iterable[Row], metrics: Mapping[str, float],
    ) -> int:
        """The score job's whole output in ONE transaction: the day's reports, the verdict cache and the
        run's metrics. A failure anywhere (warehouse gone mid-way) leaves the previous state untouched."""
        day = _day(dt)
        keys = {"source": source, "dt": day, "stage": "score"}
        with self._begin() as conn:
            n = _replace(conn, "anomaly_reports", {"source": source, "dt": day}, _reports(source, day, run_id, reports))
            _merge(conn, "kseq_cache", _cache_rows(source, model_version, cache))
            _replace(conn, "run_metrics", keys, _metric_rows(keys, run_id, metrics))
            _replace(conn, "score_failures", {"source": source, "dt": day}, [])
        return n

    def record_score_failure(self, source: str, dt: str | date, *, run_id: str, error: str, message: str,
                             inputs: str) -> None:
        """Record a score run's failure of the day (one row per day: attempts add up, the first time stays)."""
        now = _now()
        row = {"source": source, "dt": _day(dt), "run_id": run_id, "error": error, "message": self._scrub(message),
               "inputs": inputs, "attempts": 1, "first_failed_at": now, "failed_at": now}
        with self._begin() as conn:
            _merge(conn, "score_failures", [row])

    def score_failures(self, source: str) -> list[dict[str, Any]]:
        """The recorded score failures of ``source``, oldest day first (``dt`` as ``YYYY-MM-DD``)."""
        with self._begin() as conn:
            return [{**row._mapping, "dt": _day(row.dt).isoformat()}
                    for row in conn.execute(_SCORE_FAILURES, {"source": source})]

    def upsert_templates(self, source: str, rows: Iterable[Row]) -> int:
        """Insert or update templates. ``count`` is the miner's running total and replaces the stored one;
        first/last seen only widen, so replaying an old day changes nothing."""
        by_id = {r["template_id"]: {"source": source, **{f: r.get(f) for f in TEMPLATE_FIELDS}} for r in rows}
        with self._begin() as conn:
            return _merge(conn, "templates", list(by_id.values()))

    def upsert_hierarchy(self, source: str, rows: Iterable[Row]) -> int:
        """Insert or update hierarchy rows (``TemplateNode.as_row()``); the latest write wins."""
        now = _now()
        by_id = {
            r["template_id"]: {"source": source, **{f: r.get(f) for f in HIERARCHY_FIELDS}, "updated_at": now}
            for r in rows
        }
        with self._begin() as conn:
            return _merge(conn, "hierarchy", list(by_id.values()))

    def reported_sessions(self, source: str, start: str | date, end: str | date) -> set[str]:
        """Ids of the sessions reported anomalous on the days [start, end]."""
        with self._begin() as conn:
            bounds = {"source": source, "start": _day(start), "end": _day(end)}
            return {str(sid) for sid in conn.execute(_REPORTED, bounds).scalars()}

    def stage_days(self, source: str, stage: str) -> set[str]:
        """The days (``YYYY-MM-DD``) on which ``stage`` ran for ``source`` and recorded its metrics."""
        with self._begin() as conn:
            return {_day(d).isoformat() for d in conn.execute(_STAGE_DAYS, {"source": source, "stage": stage}).scalars()}

    def stage_metric(self, source: str, stage: str, metric: str) -> dict[str, float]:
        """One metric of ``stage`` by day (``YYYY-MM-DD``), where the stage recorded it."""
        with self._begin() as conn:
            params = {"source": source, "stage": stage, "metric": metric}
            return {_day(d).isoformat(): float(v) for d, v in conn.execute(_STAGE_METRIC, params)}

    def load_cache(self, source: str, model_version: str) -> dict[str, dict[str, Any]]:
        """All cached verdicts of one model version, in one query (the scorer looks up in memory)."""
        with self._begin() as conn:
            result = conn.execute(_LOAD_CACHE, {"source": source, "model_version": str(model_version)})
            return {row.cache_key: dict(row._mapping) for row in result}

    def update_cache(self, source: str, model_version: str, rows: Iterable[Row]) -> int:
        """Upsert verdicts: ``hits`` (default 1 per row) add up, ``last_seen`` moves, ``first_seen`` stays.

        Rows need ``cache_key`` and :data:`CACHE_FIELDS`; repeated keys in one batch are merged here, as
        ``ON CONFLICT`` may touch a row only once per statement. Returns the number of distinct keys.
        """
        merged = _cache_rows(source, model_version, rows)
        with self._begin() as conn:
            _merge(conn, "kseq_cache", merged)
        return len(merged)

    def record_feedback(
        self, source: str, cache_key: str, verdict: str, *,
        author: str, kseq_key: str | None = None, note: str | None = None,
    ) -> None:
        """Append an operator's verdict on a KRONE Seq; the newest verdict per key is the one that counts."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        row = {"source": source, "cache_key": cache_key, "kseq_key": kseq_key, "verdict": verdict, "note": note,
               "author": author, "created_at": _now()}
        with self._begin() as conn:
            conn.execute(insert(_table("feedback", row)), row)

    def normal_feedback(self, source: str) -> dict[str, str | None]:
        """``cache_key -> kseq_key`` of the chunks whose newest feedback says normal: the scorer and the next
        training treat their level keys as known normal."""
        with self._begin() as conn:
            return {row.cache_key: row.kseq_key for row in conn.execute(_NORMAL_KEYS, {"source": source})}

    def find_chunk(self, source: str, key: str) -> list[tuple[str, str]]:
        """``(cache_key, kseq_key)`` pairs a report or cache entry holds for ``key`` (either kind of key):
        how ``krone feedback --key`` turns what an operator copied from a report into both keys."""
        with self._begin() as conn:
            return sorted({(r.cache_key, r.kseq_key) for r in conn.execute(_FIND_CHUNK, {"source": source, "key": key})})

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A connection in a transaction; failing to connect at all raises :class:`WarehouseUnavailable` (a DuckDB
        file another process holds is waited for first, up to ``lock_wait_s``)."""
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                conn = self.engine.connect()
                break
            except exc.DBAPIError as e:
                if _held_by_another_process(e) and time.monotonic() < deadline:
                    time.sleep(random.uniform(0.05, 0.25))
                    continue
                reason = self._scrub(str(e.orig))
                raise WarehouseUnavailable(f"warehouse {self.safe_url} is unavailable: {reason}") from e
        try:
            with conn, conn.begin():
                yield conn
        except exc.OperationalError as e:  # the server went away mid-transaction: rolled back, nothing written
            raise WarehouseUnavailable(f"warehouse {self.safe_url} failed: {self._scrub(str(e.orig))}") from e

    def _scrub(self, message: str) -> str:
        password = make_url(self.url).password
        return message.replace(password, "***") if password else message



def _replace(conn: Connection, name: str, keys: Mapping[str, Any], rows: list[dict[str, Any]]) -> int:
    """Delete the rows under ``keys`` and insert ``rows``, inside the caller's transaction."""
    target = table(name, *(column(k) for k in keys))
    conn.execute(delete(target).where(*(target.c[k] == v for k, v in keys.items())))
    if rows:
        _insert_rows(conn, name, rows)
    return len(rows)


def _merge(conn: Connection, name: str, rows: list[dict[str, Any]]) -> int:
    """Upsert ``rows`` into ``name`` (a key of ``_MERGES``) inside the caller's transaction."""
    if not rows:
        return 0
    stage = f"krone_stage_{name}"  # name is a key of _MERGES, never caller input
    conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {stage} AS SELECT * FROM {name} WHERE 1 = 0")
    _insert_rows(conn, stage, rows)
    conn.exec_driver_sql(_MERGES[name])
    conn.exec_driver_sql(f"DROP TABLE {stage}")
    return len(rows)


def _reports(source: str, dt: str | date, run_id: str, rows: Iterable[Row]) -> list[dict[str, Any]]:
    now, day = _now(), _day(dt)
    return [
        {**{f: r.get(f) for f in REPORT_FIELDS}, "source": source, "dt": day, "run_id": run_id, "created_at": now,
         "segment_template_ids": _json(r.get("segment_template_ids")), "line_refs": _json(r.get("line_refs"))}
        for r in rows
    ]


def _metric_rows(keys: Mapping[str, Any], run_id: str, metrics: Mapping[str, float]) -> list[dict[str, Any]]:
    now = _now()
    return [{**keys, "run_id": run_id, "metric": m, "value": float(v), "recorded_at": now} for m, v in metrics.items()]


def _cache_rows(source: str, model_version: str, rows: Iterable[Row]) -> list[dict[str, Any]]:
    """One row per cache key (``ON CONFLICT`` may touch a row once per statement): hits add up."""
    now = _now()
    merged: dict[str, dict[str, Any]] = {}
    for r in rows:
        hits = int(r.get("hits", 1)) + (merged[r["cache_key"]]["hits"] if r["cache_key"] in merged else 0)
        merged[r["cache_key"]] = {
            "source": source, "model_version": str(model_version), "cache_key": r["cache_key"],
            **{f: r.get(f) for f in CACHE_FIELDS}, "hits": hits, "first_seen": now, "last_seen": now,
        }
    return list(merged.values())


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "duckdb" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        return create_engine(parsed, poolclass=NullPool)  # the file is free between transactions (module docstring)
    connect_args: dict[str, Any] = {}
    if backend == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S  # an unreachable host fails fast, not after minutes
    return create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)


def _held_by_another_process(error: exc.DBAPIError) -> bool:
    """Whether connecting failed because another process holds the DuckDB file (its lock), which passes."""
    return "Could not set lock on file" in str(error.orig)


def _statements(sql: str) -> list[str]:
    """Drop ``--`` comments, then split on ``;`` (the files keep both out of string literals)."""
    pieces = (p.strip() for p in re.sub(r"--[^\n]*", "", sql).split(";"))
    return [p for p in pieces if p]


def _insert_rows(conn: Connection, name: str, rows: list[dict[str, Any]]) -> None:
    """Bulk insert into ``name`` (a constant of this module); see the module docstring for DuckDB."""
    if conn.dialect.name != "duckdb":
        conn.execute(insert(_table(name, rows[0])), rows)
        return
    import pyarrow as pa  # DuckDB only: PostgreSQL deployments and DAG parsing skip its import time

    conn.exec_driver_sql("register", (_ARROW_VIEW, pa.Table.from_pylist(rows)))  # duckdb-engine's hook
    try:
        conn.exec_driver_sql(f"INSERT INTO {name} BY NAME SELECT * FROM {_ARROW_VIEW}")
    except exc.DBAPIError:
        conn.rollback()  # now, not on the way out: DuckDB cannot unregister inside an aborted transaction
        raise
    finally:
        conn.connection.driver_connection.unregister(_ARROW_VIEW)  # the view would pin the rows in memory


def _table(name: str, row: Mapping[str, Any]) -> TableClause:
    """A lightweight table of the row's columns: the DDL in ``sql/`` stays the one definition."""
    return table(name, *(column(k) for k in row))


def _json(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(list(value))


def _day(dt: str | date) -> date:
    return date.fromisoformat(check_date(dt)) if isinstance(dt, str) else dt


def _now() -> datetime:
    return datetime.now(timezone.utc)
