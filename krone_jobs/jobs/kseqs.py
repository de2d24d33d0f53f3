"""KRONE Seqs stage: ``sessions/`` -> ``kseqs/``: the distinct KRONE Seqs of a day, with counts.

Every session is cut in parallel (``mapInArrow``; the hierarchy travels to the executors once, as JSON in
a broadcast) with :func:`~krone_jobs.hierarchy.kseqs.decompose`; each chunk yields its level, level key,
cache key (hash of the overall identifier over all three levels), parent node and own nodes. Rows are then
counted per (level, key, cache_key) with the smallest session id as a reproducible example.

Template ids are first resolved through the newest miner state (a session may hold an id that Drain has
since generalised; the hierarchy keeps superseded ids, so they are resolved even when it knows them). A session that still has an unknown template is not cut: it is
counted in the metrics with an example, because it needs ``krone hierarchy`` to run first.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from krone_jobs.config import settings
from krone_jobs.hierarchy.kseqs import UnknownTemplateError, decompose
from krone_jobs.hierarchy.model import Hierarchy
from krone_jobs.jobs.hierarchy_job import load_hierarchy
from krone_jobs.lineage import inputs
from krone_jobs.miner_state import latest_templates
from krone_jobs.partitions import (
    check_date,
    check_source,
    count_rows,
    partition_dir,
    raise_if_damaged,
    read_partition,
    read_table,
    write_partition,
)
from krone_jobs.source_lock import holds_source_lock

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import SparkSession

CHUNK_DDL = "level string, key string, cache_key string, parent string, nodes array<string>, session_id string"
KSEQ_COLUMNS = ("level", "key", "cache_key", "parent", "nodes", "count", "example_session_id")


@dataclass(frozen=True)
class KseqMetrics:
    source: str
    dt: str
    sessions: int
    sessions_unknown_template: int
    chunks: int
    distinct: dict[str, int] = field(default_factory=dict)
    unknown_examples: list[str] = field(default_factory=list)
    """``session_id: template_id`` of a few sessions that were not cut."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cutter(payload: Any) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        data = json.loads(payload.value)
        hierarchy = Hierarchy.from_json(data["hierarchy"])
        resolve: dict[str, str] = data["resolve"]
        names = ("level", "key", "cache_key", "parent", "nodes", "session_id")
        for batch in batches:
            out: dict[str, list[Any]] = {n: [] for n in names}
            for sid, tids in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                try:
                    d = decompose([resolve.get(t, t) for t in tids], hierarchy)
                except UnknownTemplateError as exc:
                    rows = [(None, str(exc.args[0]), None, None, None, sid)]
                else:
                    rows = [(c.level, c.key, c.cache_key, c.parent, list(c.nodes), sid)
                            for c in (*d.status, *d.action, d.entity)]
                for row in rows:
                    for n, v in zip(names, row):
                        out[n].append(v)
            yield pa.RecordBatch.from_pydict(out, schema=pa.schema([
                ("level", pa.string()), ("key", pa.string()), ("cache_key", pa.string()), ("parent", pa.string()),
                ("nodes", pa.list_(pa.string())), ("session_id", pa.string())]))

    return run


@holds_source_lock("kseqs")
def run_kseqs(
    source: str, date: str, *, data_root: str | Path | None = None, spark: SparkSession | None = None
) -> KseqMetrics:
    """Cut one day's sessions into KRONE Seqs and overwrite the ``kseqs/`` partition with the distinct ones."""
    from pyspark.sql import functions as F

    from krone_jobs.spark import get_spark

    t0 = time.perf_counter()
    check_source(source)
    check_date(date)
    root = Path(data_root) if data_root is not None else settings().data_root
    spark = spark or get_spark()
    hierarchy = load_hierarchy(root, source)
    sessions_dir = partition_dir(root, "sessions", source, date)
    sessions = read_partition(spark, root, "sessions", source, date).select("session_id", "template_ids")
    store = latest_templates(root, source)
    resolve = {t: store.resolve(t) for t in store.superseded} if store is not None else {}
    payload = spark.sparkContext.broadcast(json.dumps({"hierarchy": hierarchy.to_json(), "resolve": resolve}))

    chunks = sessions.mapInArrow(_cutter(payload), CHUNK_DDL).cache()
    try:
        cut = F.col("level").isNotNull()
        stats = chunks.agg(F.sum(cut.cast("long")), F.count_distinct(F.when(~cut, F.col("session_id")))).first()
        distinct = chunks.filter(cut).groupBy("level", "key", "cache_key").agg(
            F.first("parent").alias("parent"), F.first("nodes").alias("nodes"), F.count("*").alias("count"),
            F.min("session_id").alias("example_session_id"))
        kseqs_dir = partition_dir(root, "kseqs", source, date)
        write_partition(distinct.select(*KSEQ_COLUMNS), kseqs_dir, sort_by=["level", "key", "cache_key"], files=1,
                        inputs=inputs(root, partitions=[sessions_dir]))
        examples = [f"{r['session_id']}: {r['key']}"
                    for r in chunks.filter(~cut).orderBy("session_id").limit(5).collect()] if stats[1] else []
    except Exception as exc:
        raise_if_damaged(exc, sessions_dir)
        raise
    finally:
        chunks.unpersist()
    levels = read_table(kseqs_dir, columns=["level"]).column("level").to_pylist()
    return KseqMetrics(
        source=source, dt=date, sessions=count_rows(sessions_dir), sessions_unknown_template=stats[1],
        chunks=stats[0] or 0, distinct=dict(sorted(Counter(levels).items())), unknown_examples=examples,
        seconds=round(time.perf_counter() - t0, 3),
    )
