"""Sessionize stage: ``parsed/`` -> ``sessions/``: the ordered template ids of every session that closed today.

A session is the events of one session key (HDFS block id, job id) or, for node-based formats, one node's
burst of activity (a new window after more than ``gap_seconds`` of silence on the node, keyed
``<node>#<epoch second of its first event>`` exactly as :class:`~krone_jobs.logformats.NodeWindowSessionKey`
does; the window is cut here because only here are a node's lines in time order). Events are ordered by
timestamp, then file and line number (lines within one second keep their file order).

**Midnight.** A session is emitted once, when it is closed: its last event is more than ``gap_seconds``
before the end of the day. Otherwise its events are kept in ``state/<source>/open/dt=D`` and prepended to
the next day's run, so a session crossing midnight is emitted whole on the day it ends, never as two
halves. The end of the day is the later of midnight on the log's clock and the day's last event, which
covers logs whose clock (e.g. Thunderbird's UTC epoch) is offset from the partition's day; for a format with a
``timezone`` (stamps parsed into UTC) it is midnight in that zone. Ids of carried
events are resolved through the day's miner state (a template may have been generalised since).

**Endless sessions.** A key that never falls silent for ``gap_seconds`` (a node that logs every few seconds,
a constant request id) would never close: carried from day to day, growing, never scored. A session that is
still open at the end of a day but already spans more than ``max_session_seconds`` (default
``KRONE_MAX_SESSION_SECONDS``, one day) is closed there and emitted as it is; the key's next events start a
new session. Such a piece of an id-keyed session is named ``<key>@<epoch second of its first event>`` (a node
window's name already says where it starts), and the day's metrics count them as ``cut_sessions``.

**Huge sessions.** A session of more than ``max_session_events`` events (default ``KRONE_MAX_SESSION_EVENTS``,
100,000: a node that logs many lines a second, a request id written on every line) is closed at once and
emitted as pieces of that many events in time order, named ``<name>~<k>`` (``k`` from 0) where ``<name>`` is
the name a cut session gets. The events of one session are gathered into one row, and a row of millions
of events exhausts the JVM heap (3,000,000 lines of one node did, with the default 2 GB driver), failing the
whole night. The metrics count such sessions as ``split_sessions``; each piece is a session of its own.

Only the previous calendar day's open sessions are read: days are sessionized in date order, and a rerun
of day D reads the same input, so it rewrites the same rows. A day whose previous day was never sessionized,
while an earlier day left sessions open, is refused (:class:`SkippedDayError`): those sessions are carried only
into the next day, and sessionizing past the gap dropped them without a word.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import date as date_cls
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from krone_jobs.config import settings
from krone_jobs.lineage import inputs
from krone_jobs.logformats import NodeWindowSessionKey, SessionSpec, get_format
from krone_jobs.partitions import (
    check_date,
    check_source,
    count_rows,
    dated_files,
    partition_dir,
    raise_if_damaged,
    read_partition,
    source_format,
    source_session,
    source_timezone,
    state_dir,
    write_partition,
)
from krone_jobs.source_lock import holds_source_lock
from krone_jobs.timestamps import day_end_utc

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

ID_SESSION_GAP_SECONDS = 1800.0
"""Id-keyed sessions: a session whose last event is this close to the day's end may still continue."""
EVENT_COLUMNS = ("key", "timestamp", "file", "line_no", "template_id")
SESSION_COLUMNS = ("session_id", "template_ids", "n_events", "first_ts", "last_ts", "lines")
_MICROS = 1_000_000


@dataclass(frozen=True)
class SessionizeMetrics:
    source: str
    dt: str
    events: int
    carried_in_events: int
    sessions: int
    open_sessions: int
    seconds: float
    cut_sessions: int = 0
    """Sessions closed at the end of the day because they span more than ``max_session_seconds``."""
    split_sessions: int = 0
    """Sessions of more than ``max_session_events`` events, emitted as pieces of that many events."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SkippedDayError(FileNotFoundError):
    """The day before was never sessionized, but an earlier day left sessions open: they would be lost."""


def _check_carry(root: Path, source: str, previous: str) -> None:
    """Raise :class:`SkippedDayError` if the newest open-session state before ``previous`` holds sessions."""
    earlier = [d for d in dated_files(state_dir(root, source) / "open") if d < previous]
    if earlier and count_rows(open_dir(root, source, earlier[-1])):
        after = (date_cls.fromisoformat(earlier[-1]) + timedelta(days=1)).isoformat()
        todo = previous if after == previous else f"{after} to {previous}"
        raise SkippedDayError(
            f"{source}: {previous} was never sessionized, and the sessions still open after {earlier[-1]} are "
            f"carried only into the next day: sessionize {todo} first (a day without logs is fine), or remove "
            f"{open_dir(root, source, earlier[-1])} to drop them")


def open_dir(root: Path, source: str, dt: str) -> Path:
    """Events of the sessions still open at the end of ``dt`` (input of the next day's run)."""
    return state_dir(root, source) / "open" / f"dt={dt}"


def _epoch_micros(col: Column) -> Column:
    """Microseconds since 1970 of a naive (log clock) timestamp; the session time zone is UTC."""
    from pyspark.sql import functions as F

    return F.unix_micros(col.cast("timestamp"))


def _node_windows(events: DataFrame, gap_seconds: float) -> DataFrame:
    """``session_id`` = ``<node>#<first epoch second>`` of each window (gap > ``gap_seconds`` starts one)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy("key").orderBy("timestamp", "file", "line_no")
    t = F.col("epoch")
    new = F.when(F.lag(t).over(order).isNull() | (t - F.lag(t).over(order) > int(gap_seconds * _MICROS)), 1)
    numbered = events.withColumn("window", F.sum(F.coalesce(new, F.lit(0))).over(
        order.rowsBetween(Window.unboundedPreceding, Window.currentRow)))
    start = F.min("epoch").over(Window.partitionBy("key", "window"))
    return numbered.withColumn(
        "session_id", F.concat(F.col("key"), F.lit("#"), F.floor(start / _MICROS).cast("string"))
    ).drop("window")


def _resolved(carried: DataFrame, root: Path, source: str, dt: str) -> DataFrame:
    """Carried events with the ids the day's miner state has superseded replaced (a template seen
    yesterday may have been generalised today); today's events already carry the day's ids."""
    from pyspark.sql import functions as F

    from krone_jobs.miner_state import latest_templates

    store = latest_templates(root, source, dt)
    if store is None:
        return carried
    ids = [r[0] for r in carried.select("template_id").distinct().collect()]
    changed = {t: store.resolve(t) for t in ids if store.resolve(t) != t}
    if not changed:
        return carried
    mapping = F.create_map(*[F.lit(x) for pair in sorted(changed.items()) for x in pair])
    return carried.withColumn("template_id", F.coalesce(F.element_at(mapping, F.col("template_id")),
                                                        F.col("template_id")))


def _day_end(root: Path, source: str, fmt_name: str | None, date: str) -> datetime:
    """Midnight after ``date`` on the log's clock: in the format's zone, as naive UTC, when it has one."""
    return day_end_utc(date, get_format(fmt_name).timezone if fmt_name is not None else source_timezone(root, source))


def _session_spec(root: Path, source: str, fmt_name: str | None) -> SessionSpec:
    """The session rule to cut by: the named format's, else the one recorded when the source was parsed."""
    if fmt_name is not None:
        return get_format(fmt_name).session
    recorded = source_session(root, source)
    return SessionSpec(**recorded) if recorded is not None else get_format(source_format(root, source)).session


@holds_source_lock("sessionize")
def run_sessionize(
    source: str,
    date: str,
    *,
    data_root: str | Path | None = None,
    spark: SparkSession | None = None,
    fmt_name: str | None = None,
    gap_seconds: float | None = None,
    max_session_seconds: float | None = None,
    max_session_events: int | None = None,
    gate: bool = True,
) -> SessionizeMetrics:
    """Sessionize one parsed day; overwrite ``sessions/`` and the day's open-session state.

    ``fmt_name`` defaults to the format the source was parsed with (its session rule as the parse job
    recorded it, so a format from ``KRONE_FORMATS_FILE`` needs no file here); ``gap_seconds`` to the format's
    node-window gap, or :data:`ID_SESSION_GAP_SECONDS` for id-keyed sessions; ``max_session_seconds`` bounds
    how long a session may stay open and ``max_session_events`` how many events it may hold (module
    docstring). Raises the ``sessions`` quality gate's ``QualityGateError`` if it fails (``gate=False`` skips
    it, for tests of other behaviour).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from krone_jobs.jobs.parse import quality_gate
    from krone_jobs.spark import get_spark

    t0 = time.perf_counter()
    check_source(source)
    check_date(date)
    root = Path(data_root) if data_root is not None else settings().data_root
    spark = spark or get_spark()
    rule = _session_spec(root, source, fmt_name).make()
    node_windows = isinstance(rule, NodeWindowSessionKey)
    gap = gap_seconds if gap_seconds is not None else rule.gap_seconds if node_windows else ID_SESSION_GAP_SECONDS
    max_span = max_session_seconds if max_session_seconds is not None else settings().max_session_seconds
    max_events = max_session_events if max_session_events is not None else settings().max_session_events
    if max_events < 1:
        raise ValueError(f"max_session_events must be at least 1, not {max_events}")

    today = read_partition(spark, root, "parsed", source, date).select(
        F.explode("session_keys").alias("key"), "timestamp", "file", "line_no", "template_id")
    previous = (date_cls.fromisoformat(date) - timedelta(days=1)).isoformat()
    carried_path = open_dir(root, source, previous)
    if not carried_path.is_dir():
        _check_carry(root, source, previous)
    carried_events = count_rows(carried_path) if carried_path.is_dir() else 0
    built_from = inputs(root, partitions=[partition_dir(root, "parsed", source, date), carried_path])
    events = today
    if carried_events:
        carried = spark.read.parquet(str(carried_path)).select(*EVENT_COLUMNS)
        events = today.unionByName(_resolved(carried, root, source, date))
    events = events.withColumn("epoch", _epoch_micros(F.col("timestamp")))
    events = _node_windows(events, gap) if node_windows else events.withColumn("session_id", F.col("key"))
    events = _pieces(events, max_events)

    ev = F.struct("timestamp", "file", "line_no", "template_id", "key")
    whole = Window.partitionBy("session_id")
    sessions = events.groupBy("session_id", "piece").agg(
        F.sort_array(F.collect_list(ev)).alias("ev"), F.min("epoch").alias("piece_first"),
        F.max("epoch").alias("piece_last")).select(
        "*", F.min("piece_first").over(whole).alias("first_epoch"), F.max("piece_last").over(whole).alias("last_epoch"),
        (F.max("piece").over(whole) > 0).alias("split")).cache()
    try:
        last_event, n_events = sessions.agg(F.max("last_epoch"), F.sum(F.size("ev"))).first()
        midnight = _day_end(root, source, fmt_name, date)
        # carried events are older than today's, so the latest event overall is today's latest
        day_end = max(int((midnight - datetime(1970, 1, 1)).total_seconds()) * _MICROS, last_event or 0)
        active = F.coalesce(F.col("last_epoch") >= F.lit(day_end - int(gap * _MICROS)), F.lit(False))
        cut = active & (F.col("last_epoch") - F.col("first_epoch") > int(max_span * _MICROS))
        is_open = active & ~cut & ~F.col("split")
        # a cut id-keyed session is <key>@<first epoch second>; a node window's name already says where it starts
        at = F.concat(F.col("session_id"), F.lit("@"), F.floor(F.col("first_epoch") / _MICROS).cast("string"))
        base = F.col("session_id") if node_windows else F.when(cut | F.col("split"), at).otherwise(F.col("session_id"))
        name = F.when(F.col("split"), F.concat(base, F.lit("~"), F.col("piece").cast("string"))).otherwise(base)
        closed = sessions.filter(~is_open).select(
            name.alias("session_id"),
            F.transform("ev", lambda e: e["template_id"]).alias("template_ids"),
            F.size("ev").alias("n_events"),
            F.col("ev")[0]["timestamp"].alias("first_ts"),
            F.element_at("ev", -1)["timestamp"].alias("last_ts"),
            F.transform("ev", lambda e: F.concat(e["file"], F.lit(":"), e["line_no"].cast("string"))).alias("lines"),
        )
        sessions_dir = partition_dir(root, "sessions", source, date)
        write_partition(closed, sessions_dir, sort_by=["first_ts", "session_id"], files=1, inputs=built_from)
        still_open = sessions.filter(is_open).select(F.explode("ev").alias("e")).select(
            *(F.col("e")[c].alias(c) for c in EVENT_COLUMNS))
        write_partition(still_open, open_dir(root, source, date), sort_by=["key", "timestamp", "file", "line_no"],
                        files=1, inputs=built_from)
        first_piece = F.col("piece") == 0
        n_open, n_cut, n_split = sessions.agg(F.sum(is_open.cast("long")), F.sum((cut & first_piece).cast("long")),
                                              F.sum((F.col("split") & first_piece).cast("long"))).first()
    except Exception as exc:
        raise_if_damaged(exc, partition_dir(root, "parsed", source, date), carried_path)
        raise
    finally:
        sessions.unpersist()

    if gate:
        quality_gate(read_partition(spark, root, "sessions", source, date), "sessions", root, source, date)
    return SessionizeMetrics(
        source=source,
        dt=date,
        events=(n_events or 0) - carried_events,
        carried_in_events=carried_events,
        sessions=count_rows(sessions_dir),
        open_sessions=n_open or 0,
        seconds=round(time.perf_counter() - t0, 3),
        cut_sessions=n_cut or 0,
        split_sessions=n_split or 0,
    )


def _pieces(events: DataFrame, max_events: int) -> DataFrame:
    """``piece``: the event's place in its session, in time order, integer-divided by ``max_events`` (0 for
    every event of a session that is not too long)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy("session_id").orderBy("timestamp", "file", "line_no")
    return events.withColumn("piece", F.floor((F.row_number().over(order) - 1) / F.lit(max_events)))
