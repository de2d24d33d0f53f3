"""The night report: one static HTML page per source and day, read from the warehouse, for operators.

``krone report --source S --date D`` writes ``<data_root>/reports/<source>/dt=<D>/night_report.html``
(atomically; a rerun overwrites it) and prints a short summary. The page is self-contained (inline CSS
and matplotlib SVG, no script, nothing fetched) so it can be mailed, archived or served as a plain file.

Log text is attacker-controlled: every value from the warehouse or a raw file is HTML-escaped, control
characters are replaced before they reach the page or the terminal, and a line reference may only point
below the data root. The warehouse is only read, in one transaction (one consistent snapshot), with
bind parameters; missing run metrics show as ``n/a`` instead of failing the report.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import io
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import Connection, inspect, make_url, text

from krone_jobs.config import settings
from krone_jobs.logfiles import LogReadError, OversizedLine, iter_lines
from krone_jobs.partitions import atomic_write_text, check_date, check_source
from krone_jobs.warehouse import Warehouse, WarehouseUnavailable

LEVELS = ("status", "action", "entity")
LEVEL_COLOURS = {"status": "#d95f02", "action": "#7570b3", "entity": "#1b9e77"}
TOP_CHUNKS = 20
EXCERPT_LINES = 5
"""Raw lines shown per anomalous chunk (the first ones it references)."""
EXCERPT_CHARS = 300
NEW_TEMPLATES_SHOWN = 50
OFFENDERS_SHOWN = 20
NODES_SHOWN = 10
SUMMARY_REASON_CHARS = 120
REPORT_NAME = "night_report.html"
REQUIRED_TABLES = ("anomaly_reports", "run_metrics", "templates", "score_failures")
FAILED_DAYS_SHOWN = 5
NO_FILE = "(raw file not available)"
NO_LINE = "(line not found in the raw file)"
BAD_REF = "(bad line reference)"
OUTSIDE = "(reference outside the data root)"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
TOP_IN_FIGURES = 5  # the top chunks callers get back with the figures (the page shows TOP_CHUNKS)
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.DOTALL)  # RDF boilerplate of matplotlib's SVG

_Q = {
    "failed_days": text(
        "SELECT dt, error FROM score_failures WHERE source = :source AND dt >= :start AND dt < :dt ORDER BY dt"),
    "per_level": text(
        "SELECT level, COUNT(*) AS n FROM anomaly_reports WHERE source = :source AND dt = :dt GROUP BY level"),
    "per_detector": text(
        "SELECT detector, COUNT(*) AS n FROM anomaly_reports WHERE source = :source AND dt = :dt GROUP BY detector"),
    "runs": text(
        "SELECT DISTINCT model_version, run_id FROM anomaly_reports WHERE source = :source AND dt = :dt"),
    "top": text(
        "SELECT session_id, level, chunk_index, kseq_key, cache_key, line_refs, detector, score, reason, "
        "model_version FROM anomaly_reports WHERE source = :source AND dt = :dt "
        "ORDER BY score DESC, session_id LIMIT :limit"),
    "history": text(
        "SELECT dt, level, anomalies FROM v_anomalies_per_day "
        "WHERE source = :source AND dt >= :start AND dt <= :dt"),
    "metrics": text(
        "SELECT stage, metric, value, run_id FROM run_metrics WHERE source = :source AND dt = :dt "
        "ORDER BY stage, metric"),
    "new_template_count": text(
        "SELECT COUNT(*) FROM templates WHERE source = :source AND first_seen_dt = :dt"),
    "new_templates": text(
        "SELECT template_id, template, count FROM templates WHERE source = :source AND first_seen_dt = :dt "
        "ORDER BY count DESC, template_id LIMIT :limit"),
    "offenders": text(
        "SELECT kind, subject, days, reports, first_dt, last_dt FROM v_repeat_offenders r "
        "WHERE r.source = :source AND ("
        " (r.kind = 'session' AND r.subject IN "
        "  (SELECT session_id FROM anomaly_reports WHERE source = :source AND dt = :dt)) OR"
        " (r.kind = 'kseq' AND r.subject IN "
        "  (SELECT kseq_key FROM anomaly_reports WHERE source = :source AND dt = :dt))) "
        "ORDER BY days DESC, reports DESC, kind, subject LIMIT :limit"),
    "nodes": text(
        "WITH today AS ("
        " SELECT CASE WHEN level = 'status' THEN 'action' ELSE 'entity' END AS node_kind,"
        "  split_part(kseq_key, '|', 2) AS node, COUNT(*) AS anomalies"
        " FROM anomaly_reports WHERE source = :source AND dt = :dt AND level IN ('status', 'action')"
        " GROUP BY CASE WHEN level = 'status' THEN 'action' ELSE 'entity' END, split_part(kseq_key, '|', 2)) "
        "SELECT t.node_kind, t.node, t.anomalies, v.entity, v.action, v.anomalies AS total, v.days "
        "FROM today t LEFT JOIN v_top_anomalous_nodes v "
        " ON v.source = :source AND v.node_kind = t.node_kind AND v.node = t.node "
        "ORDER BY t.anomalies DESC, t.node_kind, t.node LIMIT :limit"),
}
"""Every query of the report; values only ever travel as bind parameters."""


@dataclass(frozen=True)
class NightReport:
    """What :func:`write_night_report` produced: the page, a terminal summary and the figures behind both."""

    path: Path
    summary: str
    figures: dict[str, Any]


@dataclass(frozen=True)
class Excerpt:
    """One referenced raw line: its text (already capped and cleaned), or None and why it is missing."""

    ref: str
    text: str | None
    note: str = ""


@dataclass
class _DayData:
    """Everything the page needs from the warehouse, read in one transaction."""

    per_level: dict[str, int]
    per_detector: dict[str, int]
    runs: list[tuple[str, str]]
    top: list[dict[str, Any]]
    history: list[tuple[date, str, int]]
    metrics: list[tuple[str, str, float, str]]
    new_template_count: int
    new_templates: list[dict[str, Any]]
    offenders: list[dict[str, Any]]
    nodes: list[dict[str, Any]]
    failed_days: list[tuple[date, str]]
    excerpts: list[list[Excerpt]] = field(default_factory=list)


# --- public API ---------------------------------------------------------------------------------------


def write_night_report(
    source: str, dt: str, *, data_root: Path | None = None, warehouse_url: str | None = None,
    days: int = 14, out: Path | None = None,
) -> NightReport:
    """Read the day from the warehouse, write the HTML page atomically and return it with its figures.

    ``warehouse_url`` defaults to ``KRONE_WAREHOUSE_URL``, else the DuckDB file under ``data_root``.
    Raises :class:`WarehouseUnavailable` when the warehouse cannot be reached or holds no krone schema.
    """
    check_source(source)
    day = date.fromisoformat(check_date(dt))
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    root = Path(data_root) if data_root is not None else settings().data_root
    data = _read_day(_warehouse_url(root, data_root, warehouse_url), source, day, days)
    data.excerpts = read_excerpts(root, [_refs(r.get("line_refs")) for r in data.top])
    figures = _figures(source, day, days, data)
    path = Path(out) if out is not None else report_path(root, source, dt)
    atomic_write_text(path, render_html(figures, data))
    return NightReport(path=path, summary=_summary(figures, data, path), figures=figures)


def report_path(data_root: Path, source: str, dt: str) -> Path:
    """Where the night report of a source and day lives by default."""
    return data_root / "reports" / check_source(source) / f"dt={check_date(dt)}" / REPORT_NAME


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``krone report``; also sets ``func`` so ``args.func(args)`` runs it."""
    p.add_argument("--source", required=True)
    p.add_argument("--date", required=True, help="YYYY-MM-DD")
    p.add_argument("--data-root", type=Path, default=None, help="default: $KRONE_DATA_ROOT or <home>/data")
    p.add_argument("--warehouse-url", default=None,
                   help="default: $KRONE_WAREHOUSE_URL or <data root>/warehouse.duckdb")
    p.add_argument("--days", type=_positive_int, default=14, help="days of history in the trend plot")
    p.add_argument("--out", type=Path, default=None,
                   help="HTML file (default: <data root>/reports/<source>/dt=<date>/night_report.html)")
    p.set_defaults(func=main_report)


def main_report(args: argparse.Namespace) -> int:
    """Write the report and print its summary; an unreachable warehouse is a one-line error, exit 2."""
    try:
        report = write_night_report(args.source, args.date, data_root=args.data_root,
                                    warehouse_url=getattr(args, "warehouse_url", None), days=args.days,
                                    out=args.out)
    except WarehouseUnavailable as e:
        print(f"krone report: {e}", file=sys.stderr)
        return 2
    print(report.summary)
    return 0


# --- reading the warehouse ----------------------------------------------------------------------------


def _warehouse_url(root: Path, data_root: Path | None, url: str | None) -> str:
    """An explicit data root brings its own DuckDB file unless a URL is given or configured."""
    if url:
        return url
    if data_root is not None and not os.environ.get("KRONE_WAREHOUSE_URL"):
        return f"duckdb:///{root / 'warehouse.duckdb'}"
    return settings().warehouse_url


def _check_duckdb_file(url: str) -> None:
    """A report must not create an empty DuckDB file where the pipeline never wrote one."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "duckdb" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            raise WarehouseUnavailable(f"warehouse {url} is unavailable: no such DuckDB file")


def _read_day(url: str, source: str, day: date, days: int) -> _DayData:
    """All report queries in one transaction, so the figures agree with each other."""
    _check_duckdb_file(url)
    with Warehouse(url) as wh, wh._begin() as conn:  # _begin turns a failed connect into WarehouseUnavailable
        _check_schema(conn, wh.safe_url)
        p = {"source": source, "dt": day}
        return _DayData(
            per_level={r.level: int(r.n) for r in conn.execute(_Q["per_level"], p)},
            per_detector={r.detector: int(r.n) for r in conn.execute(_Q["per_detector"], p)},
            runs=sorted({(str(r.model_version), str(r.run_id)) for r in conn.execute(_Q["runs"], p)}),
            top=[dict(r._mapping) for r in conn.execute(_Q["top"], {**p, "limit": TOP_CHUNKS})],
            history=[(_as_date(r.dt), r.level, int(r.anomalies)) for r in conn.execute(
                _Q["history"], {**p, "start": day - timedelta(days=days - 1)})],
            metrics=[(r.stage, r.metric, float(r.value), r.run_id) for r in conn.execute(_Q["metrics"], p)],
            new_template_count=int(conn.execute(_Q["new_template_count"], p).scalar_one()),
            new_templates=[dict(r._mapping) for r in conn.execute(
                _Q["new_templates"], {**p, "limit": NEW_TEMPLATES_SHOWN})],
            offenders=[dict(r._mapping) for r in conn.execute(_Q["offenders"], {**p, "limit": OFFENDERS_SHOWN})],
            nodes=[dict(r._mapping) for r in conn.execute(_Q["nodes"], {**p, "limit": NODES_SHOWN})],
            failed_days=[(_as_date(r.dt), r.error) for r in conn.execute(
                _Q["failed_days"], {**p, "start": day - timedelta(days=days - 1)})],
        )


def _check_schema(conn: Connection, safe_url: str) -> None:
    """A clear error for a warehouse the pipeline never set up, instead of a missing-table SQL error."""
    missing = [t for t in REQUIRED_TABLES if not inspect(conn).has_table(t)]
    if missing:
        raise WarehouseUnavailable(
            f"warehouse {safe_url} has no krone tables ({', '.join(missing)}): run the score job first")


def _as_date(value: date | datetime | str) -> date:
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _refs(value: Any) -> list[str]:
    """line_refs as stored (a JSON text array); anything else reads as no references."""
    try:
        refs = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return []
    return [str(r) for r in refs] if isinstance(refs, list) else []


# --- raw line excerpts --------------------------------------------------------------------------------


def read_excerpts(data_root: Path, refs_per_chunk: Sequence[Sequence[str]]) -> list[list[Excerpt]]:
    """The first :data:`EXCERPT_LINES` referenced raw lines of each chunk; each file is read once."""
    chosen = [list(refs[:EXCERPT_LINES]) for refs in refs_per_chunk]
    parsed = {ref: _parse_ref(ref) for refs in chosen for ref in refs}
    wanted: dict[str, set[int]] = {}
    for target in parsed.values():
        if target is not None:
            wanted.setdefault(target[0], set()).add(target[1])
    lines = {rel: _read_lines(data_root, rel, numbers) for rel, numbers in wanted.items()}
    return [[_excerpt(ref, parsed[ref], lines) for ref in refs] for refs in chosen]


def _parse_ref(ref: str) -> tuple[str, int] | None:
    """``"raw/x/dt=D/app.log:12"`` -> (relative file, 1-based line); None if malformed."""
    rel, sep, number = ref.rpartition(":")
    if not sep or not rel or not re.fullmatch(r"[0-9]{1,12}", number) or int(number) < 1:
        return None
    return rel, int(number)


def _inside_root(rel: str) -> bool:
    """Only relative paths without ``..`` (checked lexically, so a symlinked raw/ folder still works)."""
    pure = PurePosixPath(rel)
    return not (pure.is_absolute() or ".." in pure.parts or "\\" in rel)


def _read_lines(data_root: Path, rel: str, numbers: set[int]) -> dict[int, str] | None:
    """The wanted lines of one raw file (.log or .log.gz), read up to the last one; None: no file."""
    path = data_root / rel
    if not _inside_root(rel) or not path.is_file():
        return None
    found: dict[int, str] = {}
    last = max(numbers)
    try:
        with contextlib.closing(iter_lines(path)) as lines:
            for line_no, raw in lines:
                if line_no in numbers:
                    found[line_no] = _clean_line(raw)
                if line_no >= last:
                    break
    except (OSError, LogReadError):
        pass  # a damaged file still shows the lines read before the damage
    return found


def _excerpt(ref: str, target: tuple[str, int] | None, lines: Mapping[str, dict[int, str] | None]) -> Excerpt:
    if target is None:
        return Excerpt(ref, None, BAD_REF)
    if not _inside_root(target[0]):
        return Excerpt(ref, None, OUTSIDE)
    found = lines.get(target[0])
    if found is None:
        return Excerpt(ref, None, NO_FILE)
    return Excerpt(ref, found[target[1]]) if target[1] in found else Excerpt(ref, None, NO_LINE)


def _clean_line(raw: bytes | OversizedLine) -> str:
    """Decode leniently, drop the line end, cap the length and replace control characters."""
    data = raw.head if isinstance(raw, OversizedLine) else raw
    line = data.decode("utf-8", errors="replace").rstrip("\r\n")
    capped = line if len(line) <= EXCERPT_CHARS and not isinstance(raw, OversizedLine) else line[:EXCERPT_CHARS] + " …"
    return printable(capped)


def printable(value: object) -> str:
    """Text without control characters (they could drive a terminal or break the page); tabs stay."""
    return _CONTROL.sub("\ufffd", str(value))


# --- figures and summary ------------------------------------------------------------------------------


def _figures(source: str, day: date, days: int, data: _DayData) -> dict[str, Any]:
    """The numbers of the page and the summary, plain JSON-able values (None where a metric is absent)."""
    score_run = next((run for stage, _, _, run in data.metrics if stage == "score"), None)
    scored_by = _metric([m for m in data.metrics if m[0] == "score"], ("model_version",))
    return {
        "source": source,
        "dt": day.isoformat(),
        "model_versions": sorted({v for v, _ in data.runs}) or ([str(scored_by)] if scored_by is not None else []),
        "run_ids": sorted({r for _, r in data.runs}) or ([score_run] if score_run else []),
        "sessions": _metric(data.metrics, ("sessions", "sessions_scored")),
        "anomalies": sum(data.per_level.values()),
        "per_level": {level: data.per_level.get(level, 0) for level in LEVELS},
        "per_detector": dict(sorted(data.per_detector.items())),
        "cache_hits": _metric(data.metrics, ("cache_hits",)),
        "llm_calls": _metric(data.metrics, ("llm_calls",), total=True),
        "llm_tokens": _metric(data.metrics, ("llm_tokens",), total=True),
        "raw_lines": _metric(data.metrics, ("raw_lines", "raw"), prefer="parse"),
        "parsed_lines": _metric(data.metrics, ("parsed_lines", "parsed"), prefer="parse"),
        "quarantined": _metric(data.metrics, ("quarantined", "quarantined_lines"), prefer="parse"),
        "continuation_lines": _metric(data.metrics, ("quarantine_reasons.continuation",), prefer="parse"),
        "quarantined_byte_share": _share(_metric(data.metrics, ("quarantined_bytes",), prefer="parse"),
                                         _metric(data.metrics, ("raw_bytes",), prefer="parse")),
        **{key: _metric(data.metrics, (key,), prefer="parse") for key in DELIVERY_KEYS},
        "seconds": _metric(data.metrics, ("seconds",)),
        "new_templates": data.new_template_count,
        "repeat_offenders": len(data.offenders),
        "earlier_days_failed": [{"dt": d.isoformat(), "error": error} for d, error in data.failed_days],
        "anomalies_per_day": _history_grid(data.history, day, days),
        "metrics": _metrics_by_stage(data.metrics),
        "top_chunks": [{"session_id": r["session_id"], "level": r["level"], "kseq_key": r["kseq_key"],
                        "detector": r["detector"], "reason": r["reason"],  # no score: inf is not JSON
                        "line_ref": (_refs(r.get("line_refs")) or [""])[0]} for r in data.top[:TOP_IN_FIGURES]],
    }


def _metric(rows: Iterable[tuple[str, str, float, str]], names: Sequence[str], *, prefer: str = "score",
            total: bool = False) -> int | float | None:
    """One figure from run_metrics: the preferred stage's value (else the first stage's), or the sum over
    stages with ``total`` (LLM spend happens in hierarchy and score); None when no stage wrote it."""
    found = sorted(((stage != prefer, stage, value) for stage, metric, value, _ in rows if metric in names))
    if not found:
        return None
    return _number(sum(v for _, _, v in found) if total else found[0][2])


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(float(value), 3)


def _metrics_by_stage(rows: Iterable[tuple[str, str, float, str]]) -> dict[str, dict[str, int | float]]:
    out: dict[str, dict[str, int | float]] = {}
    for stage, metric, value, _ in rows:
        out.setdefault(stage, {})[metric] = _number(value)
    return out


def _shown(metric: str, value: int | float) -> str:
    """A metric as the table shows it: ``sessions_content`` (which sessions a score run read) as the hex start
    of their content id, as ``training_partitions.json`` of a training run spells it, not as a count."""
    return f"{int(value):013x}" if metric == "sessions_content" else _fmt(value)


def _history_grid(history: Iterable[tuple[date, str, int]], day: date, days: int) -> dict[str, dict[str, int]]:
    """Anomalies per day and level over the window, zero-filled so the plot has every day."""
    grid = {(day - timedelta(days=i)).isoformat(): dict.fromkeys(LEVELS, 0) for i in reversed(range(days))}
    for dt, level, n in history:
        if dt.isoformat() in grid and level in grid[dt.isoformat()]:
            grid[dt.isoformat()][level] += n
    return grid


def _fmt(value: int | float | None) -> str:
    """Thousands separators; ``n/a`` for a metric no stage recorded."""
    if value is None:
        return "n/a"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def _share(part: int | float | None, whole: int | float | None) -> float | None:
    return round(part / whole, 4) if part is not None and whole else None


BYTE_SHARE_NOTE = 0.01
"""The quarantined share of the day's bytes is told when it reaches this: the quarantined *line* count hides an
oversized line of any size (a JSON array written on one line is one line)."""


def quarantine_note(figures: Mapping[str, Any]) -> str:
    """What the quarantined line count does not say: how many are stack-trace lines (kept, but no bad input)
    and how much of the day's bytes the quarantined lines were (``" (...)"``, or empty)."""
    notes = []
    if n := figures.get("continuation_lines"):
        notes.append(f"{_fmt(n)} of them continuation lines")
    if (share := figures.get("quarantined_byte_share")) is not None and share >= BYTE_SHARE_NOTE:
        notes.append(f"{share:.0%} of the day's bytes")
    return f" ({'; '.join(notes)})" if notes else ""


def delivery_note(figures: Mapping[str, Any]) -> str:
    """How the parse stage read the raw files, where it did not simply read them whole: duplicate deliveries
    skipped, logs never rotated read after the lines their copy of the day before held, and local-time lines
    of an hour the clocks turned back over read as its second run; and earlier days found stale, as a file
    delivered late for a day already parsed leaves it, and later days, parsed before this one (``", ..."``, or
    empty)."""
    note = ""
    if n := figures.get("duplicate_files"):
        note += f", duplicate files skipped {_fmt(n)} ({_fmt(figures.get('duplicate_lines'))} lines)"
    if n := figures.get("continued_files"):
        note += f", files continued from the day before {_fmt(n)} ({_fmt(figures.get('continued_lines'))} lines read then)"
    if n := figures.get("repeated_hour_lines"):
        note += f", lines in the second run of a repeated hour {_fmt(n)}"
    if n := figures.get("days_parsed_again"):
        note += f", earlier days parsed again {_fmt(n)} (stale: a log file delivered late; KRONE_REPARSE_LATE)"
    if n := figures.get("stale_earlier_days"):
        note += f", earlier days stale {_fmt(n)} (a log file delivered late? `krone status` says what to run)"
    if n := figures.get("stale_later_days"):
        note += (f", later days stale {_fmt(n)} (parsed before this day, not seeded from it: `krone status` says "
                 "what to run)")
    return note


def parse_figures(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The figures of the notes above from one parse run's metrics (``ParseMetrics.to_dict()``)."""
    return {"continuation_lines": metrics.get("quarantine_reasons", {}).get("continuation", 0),
            "quarantined_byte_share": _share(metrics.get("quarantined_bytes"), metrics.get("raw_bytes")),
            **{key: metrics.get(key, 0) for key in DELIVERY_KEYS}}


DELIVERY_KEYS = ("duplicate_files", "duplicate_lines", "continued_files", "continued_lines", "repeated_hour_lines",
                 "days_parsed_again", "stale_earlier_days", "stale_later_days")


def _summary(figures: Mapping[str, Any], data: _DayData, path: Path) -> str:
    """A few terminal lines; log text in them is stripped of control characters."""
    levels = ", ".join(f"{level} {figures['per_level'][level]:,}" for level in LEVELS)
    lines = [
        f"{figures['source']} {figures['dt']}: {_fmt(figures['sessions'])} sessions, "
        f"{figures['anomalies']:,} anomalous ({levels}); cache hits {_fmt(figures['cache_hits'])}, "
        f"LLM calls {_fmt(figures['llm_calls'])}; report: {path}",
        f"  new templates {figures['new_templates']:,}, quarantined lines {_fmt(figures['quarantined'])}"
        f"{quarantine_note(figures)}{delivery_note(figures)}, "
        f"repeat offenders {figures['repeat_offenders']:,}, model {', '.join(figures['model_versions']) or 'n/a'}",
    ]
    if failed := figures["earlier_days_failed"]:
        shown = ", ".join(f"{f['dt']} ({f['error']})" for f in failed[:FAILED_DAYS_SHOWN])
        lines.append(f"  earlier days whose score failed for good and that have not scored since: {shown}"
                     + (" ..." if len(failed) > FAILED_DAYS_SHOWN else "") + " (`krone status` says what to do)")
    if data.top:
        top = data.top[0]
        reason = printable(top["reason"])[:SUMMARY_REASON_CHARS]
        lines.append(f"  top: {top['level']} {printable(top['kseq_key'])} score {top['score']:.3f} "
                     f"({printable(top['detector'])}): {reason}")
    return "\n".join(lines)


# --- plots --------------------------------------------------------------------------------------------


def _svg(fig: Any, name: str) -> str:
    """The figure as an inline ``<svg>`` element (text as paths, so no font is needed to read it)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": f"krone-{name}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    svg = buf.getvalue()
    return _METADATA.sub("", svg[svg.index("<svg"):])


def level_bar_svg(per_level: Mapping[str, int]) -> str:
    """Anomalies of the day per level (bar chart)."""
    from matplotlib.figure import Figure  # lazy: importing matplotlib costs ~1 s; no pyplot, no global state

    fig = Figure(figsize=(4.5, 2.6))
    ax = fig.subplots()
    counts = [per_level.get(level, 0) for level in LEVELS]
    bars = ax.bar(LEVELS, counts, color=[LEVEL_COLOURS[level] for level in LEVELS])
    ax.bar_label(bars, labels=[f"{c:,}" for c in counts])
    ax.set_ylabel("anomalous sessions")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title("first anomalous level, this day")
    ax.margins(y=0.15)
    return _svg(fig, "levels")


def history_svg(grid: Mapping[str, Mapping[str, int]]) -> str:
    """Anomalies per day over the window, bars stacked by level."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.5, 0.38 * len(grid) + 1.5), 2.8))
    ax = fig.subplots()
    labels = [d[5:] for d in grid]  # MM-DD
    bottom = [0] * len(grid)
    for level in LEVELS:
        values = [counts[level] for counts in grid.values()]
        ax.bar(labels, values, bottom=bottom, label=level, color=LEVEL_COLOURS[level])
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("anomalous sessions")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"anomalies per day, last {len(grid)} days")
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    ax.legend(fontsize=7, frameon=False)
    return _svg(fig, "history")


# --- HTML ---------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9em}.figs{display:flex;flex-wrap:wrap;gap:.6em}
.fig{border:1px solid #ddd;border-radius:6px;padding:.5em .8em;min-width:8em}
.fig b{display:block;font-size:1.35em}.fig span{color:#555;font-size:.85em}
.plots{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}.plots svg{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:.85em;width:100%}th,td{border:1px solid #ddd;padding:.25em .45em;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;white-space:nowrap}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.95em}
pre{margin:.2em 0;white-space:pre-wrap;word-break:break-all;background:#fafafa;padding:.3em}
.miss{color:#999;font-style:italic}.none{color:#1b9e77;font-weight:bold}
"""


def _e(value: object) -> str:
    """HTML-escape anything (quotes too) after dropping control characters."""
    return html.escape(printable("" if value is None else value), quote=True)


def render_html(figures: Mapping[str, Any], data: _DayData) -> str:
    """The whole page as one string; every dynamic value passes through :func:`_e`."""
    title = f"krone night report: {figures['source']} {figures['dt']}"
    body = [
        f"<h1>{_e(title)}</h1>",
        _header_html(figures),
        _figures_html(figures),
        _plots_html(figures),
        _top_html(data),
        _nodes_html(data),
        _new_templates_html(data),
        _offenders_html(data),
        _metrics_html(figures),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _header_html(figures: Mapping[str, Any]) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"<p class=\"meta\">source <b>{_e(figures['source'])}</b> &middot; date <b>{_e(figures['dt'])}</b>"
        f" &middot; model version <b>{_e(', '.join(figures['model_versions']) or 'n/a')}</b>"
        f" &middot; run id <code>{_e(', '.join(figures['run_ids']) or 'n/a')}</code>"
        f" &middot; generated {_e(now)}</p>"
    )


def _figures_html(figures: Mapping[str, Any]) -> str:
    cards = [
        ("sessions scored", figures["sessions"]), ("anomalous sessions", figures["anomalies"]),
        *((f"{level} level", figures["per_level"][level]) for level in LEVELS),
        ("cache hits", figures["cache_hits"]), ("LLM calls", figures["llm_calls"]),
        ("LLM tokens", figures["llm_tokens"]), ("new templates", figures["new_templates"]),
        ("repeat offenders", figures["repeat_offenders"]),
    ]
    cards += [(label, figures[key]) for label, key in
              (("raw lines", "raw_lines"), ("parsed lines", "parsed_lines"), ("quarantined lines", "quarantined"),
               ("of them continuation lines", "continuation_lines"), ("score seconds", "seconds"))
              if figures[key] is not None]
    cards += [(label, figures[key]) for label, key in
              (("duplicate files skipped", "duplicate_files"), ("lines in them", "duplicate_lines"),
               ("files continued from the day before", "continued_files"), ("lines read then", "continued_lines"),
               ("earlier days stale (krone status)", "stale_earlier_days"),
               ("later days stale (krone status)", "stale_later_days"))
              if figures[key]]
    if failed := figures["earlier_days_failed"]:
        cards.append(("earlier days failed for good (krone status)", len(failed)))
    share = figures["quarantined_byte_share"]
    shown = [(label, _fmt(v)) for label, v in cards]
    if share is not None and share >= BYTE_SHARE_NOTE:
        shown.append(("of the day's bytes quarantined", f"{share:.0%}"))
    items = "".join(f"<div class=\"fig\"><b>{_e(v)}</b><span>{_e(label)}</span></div>" for label, v in shown)
    detectors = ", ".join(f"{d} {n:,}" for d, n in figures["per_detector"].items())
    by_detector = f"<p class=\"meta\">decided by: {_e(detectors)}</p>" if detectors else ""
    return f"<h2>Key figures</h2><div class=\"figs\">{items}</div>{by_detector}"


def _plots_html(figures: Mapping[str, Any]) -> str:
    grid = figures["anomalies_per_day"]
    parts = [level_bar_svg(figures["per_level"])] if figures["anomalies"] else [
        "<p class=\"none\">No anomalies for this day.</p>"]
    if any(sum(counts.values()) for counts in grid.values()):
        parts.append(history_svg(grid))
    else:
        parts.append(f"<p class=\"meta\">No anomalies in the last {len(grid)} days.</p>")
    return "<h2>Plots</h2><div class=\"plots\">" + "".join(f"<div>{p}</div>" for p in parts) + "</div>"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """A table whose cells are already-escaped HTML; ``numeric`` columns align right."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    num = ' class="num"'
    body = "".join(
        "<tr>" + "".join(f"<td{num if i in numeric else ''}>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _top_html(data: _DayData) -> str:
    if not data.top:
        return "<h2>Top anomalous chunks</h2><p class=\"none\">No anomalies for this day.</p>"
    rows = [
        (str(i), f"{float(r['score']):.3f}", _e(r["level"]), f"<code>{_e(r['kseq_key'])}</code>", _e(r["detector"]),
         _e(r["reason"]), f"<code>{_e(r['session_id'])}</code>", _e(r["chunk_index"]), _excerpts_html(ex))
        for i, (r, ex) in enumerate(zip(data.top, data.excerpts), start=1)
    ]
    headers = ("#", "score", "level", "KRONE Seq key", "detector", "reason", "session", "chunk", "raw lines")
    return (f"<h2>Top anomalous chunks (top {len(rows)} by score)</h2>"
            + _table(headers, rows, numeric=(0, 1, 7)))


def _excerpts_html(excerpts: Sequence[Excerpt]) -> str:
    if not excerpts:
        return "<span class=\"miss\">(no line references)</span>"
    return "".join(
        f"<div><code>{_e(x.ref)}</code>"
        + (f"<pre>{_e(x.text)}</pre>" if x.text is not None else f" <span class=\"miss\">{_e(x.note)}</span>")
        + "</div>"
        for x in excerpts)


def _nodes_html(data: _DayData) -> str:
    if not data.nodes:
        return ""
    rows = [(_e(n["node_kind"]), f"<code>{_e(n['node'])}</code>", _e(n["entity"]), _e(n["action"]),
             _e(f"{int(n['anomalies']):,}"), _e(_fmt(n["total"])), _e(_fmt(n["days"]))) for n in data.nodes]
    headers = ("kind", "node", "entity", "action", "anomalies today", "anomalies all time", "days flagged")
    return "<h2>Nodes flagged today</h2>" + _table(headers, rows, numeric=(4, 5, 6))


def _new_templates_html(data: _DayData) -> str:
    title = f"<h2>New templates of the day ({data.new_template_count:,})</h2>"
    if not data.new_templates:
        return title + "<p class=\"meta\">No new templates.</p>"
    rows = [(f"<code>{_e(t['template_id'])}</code>", f"<code>{_e(t['template'])}</code>", _e(f"{int(t['count']):,}"))
            for t in data.new_templates]
    more = data.new_template_count - len(rows)
    tail = f"<p class=\"meta\">and {more:,} more.</p>" if more > 0 else ""
    return title + _table(("template id", "template", "count"), rows, numeric=(2,)) + tail


def _offenders_html(data: _DayData) -> str:
    title = "<h2>Repeat offenders (flagged today and on other days)</h2>"
    if not data.offenders:
        return title + "<p class=\"meta\">None.</p>"
    rows = [(_e(o["kind"]), f"<code>{_e(o['subject'])}</code>", _e(o["days"]), _e(o["reports"]), _e(o["first_dt"]),
             _e(o["last_dt"])) for o in data.offenders]
    return title + _table(("kind", "session or KRONE Seq key", "days", "reports", "first", "last"), rows,
                          numeric=(2, 3))


def _metrics_html(figures: Mapping[str, Any]) -> str:
    rows = [(_e(stage), _e(metric), _e(_shown(metric, value)))
            for stage, metrics in figures["metrics"].items() for metric, value in metrics.items()]
    if not rows:
        return "<h2>Run metrics</h2><p class=\"meta\">No run metrics recorded for this day.</p>"
    return "<h2>Run metrics</h2>" + _table(("stage", "metric", "value"), rows, numeric=(2,))


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("expected a positive number of days")
    return n
