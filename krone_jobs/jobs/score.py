"""Score stage: ``sessions/`` of a day -> ``anomaly_reports``, ``kseq_cache`` and ``run_metrics``.

What a night costs is decided by the verdict cache. The champion model (``models:/krone-<source>@champion``)
and the cache of its version (one query, ``Warehouse.load_cache``) are loaded on the driver; then

1. **Spark, per session** (``mapInArrow``): cut the session into KRONE Seqs with the model's hierarchy (plus
   the templates the hierarchy stage placed since training, :meth:`RoutedDetector.extend_hierarchy`: a new
   template is judged in context, not flagged for being new) and walk them as the router does (status,
   then action, then entity; stop at the first anomalous chunk).
   A chunk in the knowledge base, or one an operator marked normal (feedback), is normal; a chunk in the
   cache takes the cached verdict (a *cache hit*). A session whose walk meets only such chunks is decided
   there; the others (an uncached chunk on the way, or a template the model lacks) go back to the driver.
   The knowledge base, the feedback keys and the cache's verdict bits travel once, in a broadcast.
2. **Driver, per distinct undecided session**: the champion's :class:`RoutedDetector` judges it
   (Nested-Aware, then the budgeted LLM when configured and only for chunks the walk reaches), and every
   chunk its walk judged becomes a new cache row, so the next run finds it.
3. **One transaction** writes the day's reports (replacing the partition: a rerun leaves the same rows),
   the cache rows (hits add up) and the run's metrics, after the Great Expectations ``reports`` gate. With
   the warehouse down the job fails before any work with :class:`WarehouseUnavailable`; losing it
   mid-write rolls everything back.

**Cache key.** The Nested-Aware model judges a chunk in its session's context (its entity-level check and
the fallback for a new ordinary step look at the session's content), so a verdict is reusable only where
that context is the same: the key is the chunk's overall identifier (its entity, action and status nodes)
plus, below the entity level, its session's content (the multiset of status nodes; the entity chunk's
identifier already covers the whole session). Reusing one session's verdict for a chunk of another would
make a day's reports depend on which session was scored first; with this key a rerun gives the same rows.

A report names the session, the level and index of the first anomalous chunk, its level key and cache key
(what ``krone feedback --key`` takes), its template ids and raw lines (``file:line``), the detector, the
score and the reason, the model version and the run id.

A failure no retry mends (a damaged sessions file, the reports gate, a damaged champion) is recorded in
``score_failures`` with what the day was scored from, so that the catch-up sets the day aside instead of
failing on it every night (:mod:`krone_jobs.score_failures`); the next successful run of the day removes it.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from krone_jobs.config import settings
from krone_jobs.hierarchy.kseqs import LEVELS, Decomposition, UnknownTemplateError, decompose
from krone_jobs.hierarchy.model import Hierarchy
from krone_jobs.lineage import content_number
from krone_jobs.partitions import check_date, check_source, count_rows, partition_dir, read_table

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import SparkSession

    from krone_jobs.detectors.router import RoutedDetector
    from krone_jobs.detectors.verdict import SessionVerdict
    from krone_jobs.templates import TemplateStore

ENGINES = ("auto", "spark", "local")
LOCAL_MAX_SESSIONS = 50_000
"""``engine="auto"`` walks a day of at most this many sessions in the driver process (the same function
Spark runs per partition): below that, starting Spark tasks costs more than the walk itself."""
DECIDED_ANOMALOUS, UNDECIDED, HITS = "anomalous", "undecided", "hits"
_WALK_INPUT = ("session_id", "template_ids", "lines")


@dataclass(frozen=True)
class ScoreMetrics:
    """What one scoring run did; ``to_dict`` is what the DAG task returns and ``run_metrics`` stores."""

    source: str
    dt: str
    run_id: str
    model_version: str
    sessions: int
    anomalies: int
    per_level: dict[str, int] = field(default_factory=dict)
    decided_from_cache: int = 0
    """Sessions decided in the Spark pass (knowledge base, feedback and cache only)."""
    routed_sessions: int = 0
    """Distinct session sequences the driver judged (cache misses)."""
    cache_hits: int = 0
    """Chunk lookups answered by the warehouse cache."""
    new_cache_entries: int = 0
    templates_placed: int = 0
    """Templates the model lacks that the hierarchy stage placed since training: judged in context."""
    unknown_template_sessions: int = 0
    feedback_normal_keys: int = 0
    llm_requests: int = 0
    """Uncertain chunks the walk put to the LLM judge (some answered from its cache or refused by the budget)."""
    llm_calls: int = 0
    """Calls charged to the run's LLM budget (answered or not): the spend."""
    llm_budget_refusals: int = 0
    llm_tokens: int = 0
    llm_invalid: int = 0
    llm_failures: int = 0
    llm_fraction: float = 0.0
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    """``load`` (warehouse, model, cache), ``walk`` (Spark pass), ``route`` (driver), ``gate`` (GX suite); the
    final write is not in ``seconds`` (the metrics go into the warehouse in that same transaction)."""
    sessions_content: float | None = None
    """The sessions partition scored (:func:`krone_jobs.lineage.content_number`): a day whose sessions are
    written anew after its score run is scored again by the next catch-up."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def numeric(self) -> dict[str, float]:
        """The figures ``run_metrics`` keeps (numbers only; per level as ``anomalies_<level>``)."""
        out = {k: float(v) for k, v in asdict(self).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out.update({f"anomalies_{lvl}": float(self.per_level.get(lvl, 0)) for lvl in LEVELS})
        out.update({f"seconds_{phase}": float(v) for phase, v in self.phase_seconds.items()})
        if self.model_version.isdigit():  # so the night report names the model on a day with no anomaly
            out["model_version"] = float(self.model_version)
        return out


# ------------------------------------------------------------------------------------ the walk
def verdict_keys(d: Decomposition) -> dict[tuple[str, int], str]:
    """``(level, chunk index) -> kseq_cache key`` of every chunk of a session (module docstring)."""
    bag = ",".join(f"{n}*{k}" for n, k in sorted(Counter(d.entity.statuses).items()))
    keys = {("entity", 0): d.entity.cache_key}
    for level in LEVELS[:2]:
        for i, chunk in enumerate(d.level(level)):
            keys[(level, i)] = hashlib.blake2b(f"{chunk.overall}|session={bag}".encode(), digest_size=16).hexdigest()
    return keys


def walk(d: Decomposition, known: Callable[[str], bool],
         cached: Mapping[str, bool]) -> tuple[tuple[str, int, int] | None, tuple[str, ...]]:
    """First anomalous chunk of a decomposed session and the cache keys looked up on the way.

    The outcome is ``(kind, level index, chunk index)``: ``kind`` is ``anomalous`` (from the cache) or
    ``undecided`` (an uncached chunk on the way); ``None``: normal. ``known(kseq_key)``: in the knowledge
    base or marked normal; ``cached``: cache key -> anomalous."""
    keys: dict[tuple[str, int], str] | None = None
    hits: list[str] = []
    for li, level in enumerate(LEVELS):
        for i, chunk in enumerate(d.level(level)):
            if known(chunk.key):
                continue
            keys = keys or verdict_keys(d)
            verdict = cached.get(keys[(level, i)])
            if verdict is None:
                return (UNDECIDED, li, i), tuple(hits)
            hits.append(keys[(level, i)])
            if verdict:
                return (DECIDED_ANOMALOUS, li, i), tuple(hits)
    return None, tuple(hits)


def model_ids(day: TemplateStore | None, model: TemplateStore | None) -> dict[str, str]:
    """Day template id -> the id the model was trained with, where they differ.

    Drain generalises templates as it sees more lines (old id superseded by a new one). Training resolved
    its sessions with the miner state it ships (``model``); the day's ids are resolved forward with the
    day's state and then, where the model knew the template under an older id (the generalisation came
    after training), mapped back to that id (the smallest if several). An id with no such link is new
    to the model. Without a shipped state, ids are only resolved forward."""
    if day is None:
        return {}
    live = {t.template_id for t in model.templates()} if model is not None else set()
    back: dict[str, str] = {}
    for known in sorted(live):
        back.setdefault(day.resolve(known), known)
    out: dict[str, str] = {}
    for tid in {*day.superseded, *(t.template_id for t in day.templates())}:
        newest = day.resolve(tid)
        target = newest if not live or newest in live else back.get(newest, newest)
        if target != tid:
            out[tid] = target
    return out


def _walker(payload: Any) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The per-partition function of the Spark pass (see the module docstring, step 1)."""

    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa
        import pyarrow.compute as pc

        data = json.loads(payload.value)
        hierarchy = Hierarchy.from_json(data["hierarchy"])
        to_model: dict[str, str] = data["to_model"]
        known = set(data["known"]).__contains__
        cached: dict[str, bool] = data["cached"]
        # Sessions repeat: each distinct sequence is walked once. Ids are joined in Arrow (C) and the
        # joined text is the memo key, so a repeated session costs a dictionary lookup, not a list build.
        memo: dict[str, dict[str, Any] | None] = {}  # joined ids -> the session's row (None: normal)
        seen: Counter[str] = Counter()
        hit_keys: dict[str, tuple[str, ...]] = {}
        schema = _walk_schema()
        names = schema.names
        for batch in batches:
            out: dict[str, list[Any]] = {n: [] for n in names}
            lines = batch.column(2)  # converted only for the rows that leave the executor
            joined = pc.binary_join(batch.column(1), " ").to_pylist()
            for j, (sid, ids) in enumerate(zip(batch.column(0).to_pylist(), joined)):
                seen[ids] += 1
                if ids not in memo:
                    seq = tuple(to_model.get(t, t) for t in ids.split(" ")) if ids else ()
                    memo[ids], hit_keys[ids] = _outcome(seq, hierarchy, known, cached)
                row = memo[ids]
                if row is None:
                    continue  # normal: nothing leaves the executor
                for n, v in (*row.items(), ("session_id", sid), ("lines", lines[j].as_py() or [])):
                    out[n].append(v)
            yield pa.RecordBatch.from_pydict(out, schema=schema)
        hits: Counter[str] = Counter()
        for seq, looked_up in hit_keys.items():
            for k in looked_up:
                hits[k] += seen[seq]
        if hits:  # one row per distinct hit chunk and partition, summed on the driver
            keys = sorted(hits)
            empty = [None] * len(keys)
            yield pa.RecordBatch.from_pydict(
                {"kind": [HITS] * len(keys), "session_id": empty, "level": empty, "chunk_index": empty,
                 "kseq_key": empty, "cache_key": keys, "span_start": empty, "span_end": empty,
                 "template_ids": empty, "lines": empty, "hits": [hits[k] for k in keys]}, schema=schema)

    return run


def _outcome(seq: tuple[str, ...], hierarchy: Hierarchy, known: Callable[[str], bool],
             cached: Mapping[str, bool]) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    """The walk's row for one distinct sequence (without session id and lines), or ``None`` when normal."""
    if not seq:
        return None, ()  # nothing to judge (the sessions gate keeps empty sessions out anyway)
    try:
        d = decompose(seq, hierarchy)
    except UnknownTemplateError:  # a template the model lacks: the router reports it
        return {"kind": UNDECIDED, "level": None, "chunk_index": None, "kseq_key": None, "cache_key": None,
                "span_start": None, "span_end": None, "template_ids": list(seq), "hits": None}, ()
    outcome, hits = walk(d, known, cached)
    if outcome is None:
        return None, hits
    kind, li, i = outcome
    chunk = d.level(LEVELS[li])[i] if kind == DECIDED_ANOMALOUS else None
    return {"kind": kind, "level": LEVELS[li] if chunk else None, "chunk_index": i if chunk else None,
            "kseq_key": chunk.key if chunk else None,
            "cache_key": verdict_keys(d)[(LEVELS[li], i)] if chunk else None,
            "span_start": chunk.start if chunk else None, "span_end": chunk.end if chunk else None,
            "template_ids": list(seq), "hits": None}, hits


def _walk_schema() -> pa.Schema:
    """The walk's output rows (Spark's result type is derived from it: one definition)."""
    import pyarrow as pa

    return pa.schema([
        ("kind", pa.string()), ("session_id", pa.string()), ("level", pa.string()), ("chunk_index", pa.int32()),
        ("kseq_key", pa.string()), ("cache_key", pa.string()), ("span_start", pa.int32()), ("span_end", pa.int32()),
        ("template_ids", pa.list_(pa.string())), ("lines", pa.list_(pa.string())), ("hits", pa.int64())])


# ----------------------------------------------------------------------------------- the model
@dataclass
class Champion:
    """The loaded champion: its detector, version, the miner state it was trained with and the template
    texts its LLM prompts may show."""

    detector: RoutedDetector
    version: str
    store: TemplateStore | None
    templates: dict[str, str]

    @classmethod
    def load(cls, source: str, tracking_uri: str | None = None) -> Champion:
        from krone_jobs import model_registry as registry

        client = registry.connect(tracking_uri)
        version = registry.champion_version(client, source)
        if version is None:
            raise registry.NoChampion(f"no champion for {registry.registered_name(source)}: run `krone train` "
                                      "first (or `krone promote` a registered version)")
        # By the version the alias pointed at, so the verdict cache read for it is this model's even if
        # the alias moves meanwhile.
        try:
            kmodel = registry.load_version(source, version).unwrap_python_model()
        except registry.ModelUnloadable as exc:
            raise registry.ModelUnloadable(
                f"the champion {str(exc).rstrip('.')}. Promote a version that loads "
                f"(`krone promote --source {source} --version N`) or train a new one (`krone train --source "
                f"{source} --end <day>`): a damaged champion is not compared with, so a new version that passes "
                "its bounds replaces it", version) from exc
        texts = {t.template_id: t.template for t in kmodel.templates.templates()} if kmodel.templates else {}
        return cls(kmodel.detector, version, kmodel.templates, texts)


def _llm_judge(champion: Champion, n_sessions: int, day_templates: Mapping[str, str]) -> Any:
    """An :class:`LLMJudge` when ``KRONE_LLM_*`` configure an endpoint, else ``None`` (LLM off)."""
    from krone_jobs.llm.client import LLMClient

    client = LLMClient.from_settings(n_sessions=n_sessions)
    if client is None:
        return None
    from krone_jobs.llm.judge import LLMJudge

    return LLMJudge(client, {**day_templates, **champion.templates}, k=champion.detector.llm_examples)


# ---------------------------------------------------------------------------------------- rows
def _report(sid: str, seq: Sequence[str], lines: Sequence[str], *, level: str, index: int, span: tuple[int, int],
            kseq_key: str, cache_key: str | None, detector: str, score: float, reason: str,
            model_version: str) -> dict[str, Any]:
    start, end = span
    return {"session_id": sid, "level": level, "chunk_index": index, "kseq_key": kseq_key, "cache_key": cache_key,
            "segment_template_ids": list(seq[start:end]), "line_refs": list(lines[start:end]),
            "detector": detector, "score": float(score), "reason": reason, "model_version": model_version}


def _routed_report(sid: str, seq: tuple[str, ...], lines: Sequence[str], v: SessionVerdict,
                   d: Decomposition | None, version: str) -> dict[str, Any]:
    """A report from the router's verdict (cache key from the decomposition; none for a new template)."""
    cache_key = verdict_keys(d)[(v.level, v.chunk_index)] if d is not None and v.chunk_index is not None else None
    return _report(sid, seq, lines, level=v.level or "status", index=v.chunk_index or 0, span=v.span or (0, len(seq)),
                   kseq_key=v.key, cache_key=cache_key, detector=v.detector, score=v.score, reason=v.reason,
                   model_version=version)


def _cache_rows(detector: RoutedDetector, seq: tuple[str, ...], d: Decomposition) -> list[dict[str, Any]]:
    """The chunks the router judged on this session's walk (knowledge-base chunks need no cache entry)."""
    rows = []
    keys = verdict_keys(d)
    for level, i, decision in detector.walked_chunks(seq):
        if decision.detector == "local" and not decision.anomalous:
            continue
        chunk = d.level(level)[i]
        rows.append({"cache_key": keys[(level, i)], "level": level, "kseq_key": chunk.key,
                     "verdict": decision.anomalous, "score": decision.score, "detector": decision.detector,
                     "reason": decision.reason, "hits": 0})
    return rows


def _knowledge_keys(detector: RoutedDetector) -> list[str]:
    """The knowledge base as level keys ``<level>|<parent>|<nodes>`` (what the Spark pass looks up)."""
    from krone_jobs.model_registry import knowledge_base

    return [f"{level}|{row['parent']}|{','.join(row['nodes'])}"
            for level, rows in knowledge_base(detector).items() for row in rows]


def _gate(reports: list[dict[str, Any]], root: Path, source: str, dt: str) -> None:
    """The Great Expectations ``reports`` suite on what is about to be written (a failure stops the job
    before the warehouse is touched); the result file lands beside the other suites' results."""
    if not reports:
        return
    import pandas as pd

    from krone_jobs.quality import REPORT_COLUMNS, gate

    frame = pd.DataFrame([{**r, "source": source, "dt": dt} for r in reports])[list(REPORT_COLUMNS)]
    gate(frame, "reports", run_name=f"reports-{source}-{dt}",
         result_dir=root / "quality" / "reports" / f"source={source}" / f"dt={dt}")


# ----------------------------------------------------------------------------------------- job
def run_score(
    source: str, date: str, *, data_root: str | Path | None = None, spark: SparkSession | None = None,
    warehouse_url: str | None = None, tracking_uri: str | None = None, llm: Any = None, engine: str = "auto",
    say: Callable[[str], None] | None = None,
) -> ScoreMetrics:
    """Score one day's sessions with the champion and write reports, cache and metrics (module docstring).

    ``llm``: a :class:`~krone_jobs.detectors.router.ChunkJudge` to use instead of the one built from
    ``KRONE_LLM_*`` (evaluation harnesses pass theirs). ``engine``: where the per-session walk runs
    (``spark``, ``local`` = this process, ``auto`` = local up to :data:`LOCAL_MAX_SESSIONS` sessions)."""
    from krone_jobs import score_failures
    from krone_jobs.jobs.hierarchy_job import hierarchy_at
    from krone_jobs.miner_state import latest_templates
    from krone_jobs.pipeline import permanent_failures
    from krone_jobs.spark import get_spark
    from krone_jobs.warehouse import Warehouse

    t0 = time.perf_counter()
    check_source(source)
    check_date(date)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    root = Path(data_root) if data_root is not None else settings().data_root
    if not partition_dir(root, "sessions", source, date).is_dir():
        raise FileNotFoundError(f"no sessions partition for source={source} dt={date}: run `krone sessionize` first")
    run_id = uuid.uuid4().hex
    wh = Warehouse(warehouse_url)
    champion: Champion | None = None
    try:
        wh.ensure_schema()  # the warehouse must answer before any work: nothing is half-done when it is down
        champion = Champion.load(source, tracking_uri)
        detector = champion.detector
        placed = hierarchy_at(root, source, date)
        templates_placed = detector.extend_hierarchy(placed) if placed is not None else 0
        feedback = {k for k in wh.normal_feedback(source).values() if k}
        applied = sum(detector.add_normal(k) for k in sorted(feedback))
        cache = wh.load_cache(source, champion.version)
        store = latest_templates(root, source, date)
        day_templates = {t.template_id: t.template for t in store.templates()} if store is not None else {}

        phases = {"load": time.perf_counter() - t0}
        n_sessions = count_rows(partition_dir(root, "sessions", source, date))
        scored_content = content_number(partition_dir(root, "sessions", source, date))
        payload = json.dumps({
            "hierarchy": detector.hierarchy_.to_json(), "to_model": model_ids(store, champion.store),
            "known": sorted(set(_knowledge_keys(detector)) | feedback),
            "cached": {k: bool(v["verdict"]) for k, v in cache.items()}})
        if engine == "spark" or (engine == "auto" and n_sessions > LOCAL_MAX_SESSIONS):
            rows = _walk_spark(spark or get_spark(), payload, root, source, date)
        else:
            rows = _walk_local(payload, root, source, date)
        phases["walk"] = time.perf_counter() - t0 - sum(phases.values())
        hits: Counter[str] = Counter()
        reports: list[dict[str, Any]] = []
        undecided: list[Any] = []
        for r in rows:
            if r["kind"] == HITS:
                hits[r["cache_key"]] += r["hits"]
            elif r["kind"] == UNDECIDED:
                undecided.append(r)
            else:
                c = cache[r["cache_key"]]
                reports.append(_report(r["session_id"], r["template_ids"], r["lines"], level=r["level"],
                                       index=r["chunk_index"], span=(r["span_start"], r["span_end"]),
                                       kseq_key=r["kseq_key"], cache_key=r["cache_key"], detector=c["detector"],
                                       score=c["score"] if c["score"] is not None else 1.0,
                                       reason=c["reason"] or "", model_version=champion.version))

        judge = llm if llm is not None else _llm_judge(champion, n_sessions, day_templates)
        detector.llm = judge
        detector.llm_band = settings().llm_band if settings().llm_band is not None else detector.llm_band
        seqs = [tuple(r["template_ids"]) for r in undecided]
        verdicts = dict(zip(dict.fromkeys(seqs), detector.detect(list(dict.fromkeys(seqs)))))
        new_cache: list[dict[str, Any]] = []
        decomposed: dict[tuple[str, ...], Decomposition | None] = {}
        for seq in verdicts:
            try:
                decomposed[seq] = decompose(seq, detector.hierarchy_)
            except UnknownTemplateError:
                decomposed[seq] = None
                continue
            new_cache.extend(_cache_rows(detector, seq, decomposed[seq]))  # type: ignore[arg-type]
        for r, seq in zip(undecided, seqs):
            v = verdicts[seq]
            if v.anomalous:
                reports.append(_routed_report(r["session_id"], seq, r["lines"], v, decomposed[seq], champion.version))
        reports.sort(key=lambda x: x["session_id"])
        cache_rows = new_cache + [{**{f: cache[k][f] for f in ("level", "kseq_key", "verdict", "score", "detector",
                                                               "reason")}, "cache_key": k, "hits": n}
                                  for k, n in sorted(hits.items())]
        phases["route"] = time.perf_counter() - t0 - sum(phases.values())
        llm_counters = judge.client.metrics() if judge is not None and hasattr(judge, "client") else {}
        metrics = ScoreMetrics(
            source=source, dt=date, run_id=run_id, model_version=champion.version, sessions=n_sessions,
            anomalies=len(reports), per_level=dict(sorted(Counter(r["level"] for r in reports).items())),
            decided_from_cache=n_sessions - len(undecided), routed_sessions=len(verdicts),
            cache_hits=sum(hits.values()), new_cache_entries=len({r["cache_key"] for r in new_cache}),
            templates_placed=templates_placed,
            unknown_template_sessions=sum(1 for s in seqs if decomposed.get(s) is None),
            feedback_normal_keys=applied, llm_requests=detector.stats_["llm_requests"],
            llm_calls=int(llm_counters.get("calls", 0)),
            llm_budget_refusals=int(llm_counters.get("budget_refusals", 0)),
            llm_tokens=int(llm_counters.get("prompt_tokens", 0) + llm_counters.get("completion_tokens", 0)),
            llm_invalid=int(llm_counters.get("invalid", 0)), llm_failures=int(llm_counters.get("failures", 0)),
            llm_fraction=round(int(llm_counters.get("calls", 0)) / n_sessions, 6) if n_sessions else 0.0,
            sessions_content=scored_content,
        )
        _gate(reports, root, source, date)
        phases["gate"] = time.perf_counter() - t0 - sum(phases.values())
        metrics = replace(metrics, seconds=round(time.perf_counter() - t0, 3),
                          phase_seconds={k: round(v, 3) for k, v in phases.items()})
        wh.write_score(source, date, run_id, model_version=champion.version, reports=reports, cache=cache_rows,
                       metrics=metrics.numeric())
        if say is not None:
            say(summary_line(metrics))
        return metrics
    except permanent_failures() as exc:  # the catch-up sets the day aside until what it is scored from changes
        version = champion.version if champion is not None else getattr(exc, "version", None)
        score_failures.record(wh, root, source, date, run_id, exc, version)
        raise
    finally:
        wh.close()


def _walk_spark(spark: SparkSession, payload: str, root: Path, source: str, date: str) -> list[Any]:
    from pyspark.sql.pandas.types import from_arrow_schema

    from krone_jobs.partitions import raise_if_damaged, read_partition

    sessions = read_partition(spark, root, "sessions", source, date).select(*_WALK_INPUT)
    shared = spark.sparkContext.broadcast(payload)
    try:
        return sessions.mapInArrow(_walker(shared), from_arrow_schema(_walk_schema())).collect()
    except Exception as exc:
        raise_if_damaged(exc, partition_dir(root, "sessions", source, date))
        raise
    finally:
        shared.unpersist()


def _walk_local(payload: str, root: Path, source: str, date: str) -> list[dict[str, Any]]:
    table = read_table(partition_dir(root, "sessions", source, date), columns=list(_WALK_INPUT))
    walker = _walker(SimpleNamespace(value=payload))
    return [row for batch in walker(table.to_batches()) for row in batch.to_pylist()]


def summary_line(m: ScoreMetrics) -> str:
    levels = ", ".join(f"{lvl} {m.per_level.get(lvl, 0)}" for lvl in LEVELS)
    return (f"{m.source} {m.dt}: {m.sessions:,} sessions, {m.anomalies} anomalous ({levels}); "
            f"{m.decided_from_cache:,} decided from knowledge base + cache ({m.cache_hits:,} cache hits), "
            f"{m.routed_sessions:,} routed, {m.llm_calls} LLM calls; model v{m.model_version}, {m.seconds:.1f}s")
