"""Parse stage: ``raw/<source>/dt=D`` -> ``parsed/`` + ``quarantine/``, with partition-independent template ids.

Design: Spark schedules Python tasks; rows never pass through the JVM (its per-row conversion cost more
than the parsing itself on two cores); each task reads and writes Parquet with pyarrow.

1. **Work units.** Every raw file is cut into ``partitions`` interleaved stripes of :data:`STRIPE_LINES`
   lines; a unit is (file, stripe), so one big ``.gz`` still keeps every core busy (each stripe's reader
   decompresses the file and skips the other stripes' lines, ~1 us/line). Units are cut, in file order, into
   ``partitions`` groups of about equal bytes (:func:`group_units`); a group is one Spark task and one output
   file, so thousands of small files make a few tasks, not thousands. Files are read with
   :func:`~krone_jobs.logfiles.iter_lines` because hostile input must be kept as raw bytes. A file whose
   content another file of the day, or of the day before, holds whole (a duplicate or partial delivery,
   :mod:`krone_jobs.raw_duplicates`) is skipped; a file that begins with a file of the day before whole (a log
   never rotated, shipped whole every day) is read after the lines that file holds whole.
2. **Pass 1** (one task per group): parse (:func:`~krone_jobs.logformats.parse_line`; a format's local stamps
   become UTC, see :func:`repeated_hours`; a line stamped more than :data:`CLOCK_SLACK` past its partition's
   day is quarantined as ``future_timestamp``), session keys
   (a key longer than ``MAX_SESSION_KEY_CHARS`` is kept shortened, counted in ``long_session_keys``),
   quarantine; mask the content with the miner's masks and give each distinct masked text a per-group index.
   Rows (with the index) and quarantine records go to the group's own staging files; the task returns only
   its dictionary (masked text, index, first file and line, count) and its line counts.
3. **One miner** (driver): the distinct masked texts of all groups, in order of first occurrence (file,
   line), are mined once each into a :class:`TemplateStore` seeded with the source's state after the
   previous parsed day (a source's first day starts from its format's Drain settings,
   :attr:`~krone_jobs.logformats.LineFormat.miner`, which the state then carries). A repeat of an
   identical masked line cannot change the template it falls into, so this yields the templates one Drain
   process would find reading the day in file order (it also skips Drain's per-line work). Then every
   masked text is matched (match-only) against the final state; the state is saved as
   ``state/<source>/templates/dt=D.json``. A day may open ``max_new_templates`` templates; on a day that
   would open more, a text of a single line may open none (:func:`mine_texts`): a flood of unique text must
   not turn every line into a template.
4. **Pass 2** (one task per group): each group's rows get their template id by index (``pyarrow.take``) and
   are written as the group's part file of the staged ``parsed/`` partition, which then replaces the old one;
   the rows of refused texts become ``template_flood`` quarantine records, their raw lines read again.

So a line's template id is a function of the day's miner state and the line's text only, never of the
task that saw it, and the state depends only on the previous day's state and the day's lines in file
order: 1 or N partitions give the same ids, and a day parsed alone or after earlier days gives the same
ids whenever the earlier days taught Drain nothing this day does not show itself (tested on generated
days). A rerun of day D seeds from the same previous-day state and rewrites the same files. Template ids
are hashes of template text (:func:`~krone_jobs.templates.template_id`); when Drain generalises a template
the old id stays in the state's ``superseded`` map, through which later stages resolve older rows' ids.

Limits: the distinct masked texts are mined in one process. Drain's search within a leaf of its prefix tree
goes through an index once the leaf is large (:mod:`krone_jobs.drain_search`), so a flood of unique text costs
about linear time (200,000 such lines: mine step 6 s; before: quadratic, 50,000 took ~10 min), but a log
whose lines mask to millions of distinct texts (ids the masks miss) still wants a mask for them. Raw files and
the data root must be on a file system every executor can open (local disk in local mode, a shared mount on a
cluster).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date as date_cls
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from krone_jobs.config import settings
from krone_jobs.lineage import inputs
from krone_jobs.logfiles import DEFAULT_MAX_LINE_BYTES, LogReadError, OversizedLine, iter_lines
from krone_jobs.logformats import (
    MAX_SESSION_KEY_CHARS,
    IdPatternSessionKey,
    LineFormat,
    NodeWindowSessionKey,
    ParsedLine,
    QuarantineReason,
    SessionKeyRule,
    bounded_session_key,
    get_format,
    parse_line,
)
from krone_jobs.miner_state import parse_state, templates_dir, templates_path
from krone_jobs.partitions import (
    RAW_SUFFIXES,
    atomic_write_text,
    check_date,
    check_source,
    ignored_raw_files,
    latest_before,
    partition_dir,
    raw_dir,
    raw_files,
    read_partition,
    record_source_format,
    swap_in,
    temp_dir_for,
)
from krone_jobs.raw_duplicates import check_deliveries
from krone_jobs.raw_readiness import NoLogFilesError, no_log_files
from krone_jobs.source_lock import holds_source_lock
from krone_jobs.templates import MinerSettings, TemplateStore, masker, template_id
from krone_jobs.timestamps import local_to_utc, nearest_year, zone_of

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

STRIPE_LINES = 256
"""Lines per stripe: small enough that even a test file of a few hundred lines spreads over the units."""
BATCH_ROWS = 32_768
QUARANTINE_BATCH = 1_024
"""Quarantine records a task holds before writing them (each keeps up to a 64 KiB raw line): a day of
millions of bad lines (a 300 MB core dump named ``.log``: 1.2M lines) used to be held whole in memory."""
NO_SESSION_KEY = "no_session_key"
"""Quarantine reason for a well-formed line that names no session (beyond logformats' reasons)."""
FUTURE_TIMESTAMP = "future_timestamp"
"""Quarantine reason for a line stamped after the day that follows its partition's day: a wrong clock (a time
zone explains hours, not days). One line stamped 2049 became sessionize's "end of the day", which then
closed every session crossing midnight as two halves, that day and, carried over as open, every day after."""
CLOCK_SLACK = timedelta(days=1)
"""How far past the end of its partition's day a line may be stamped (Thunderbird's UTC clock runs 8 h
ahead of its partition days)."""
TEMPLATE_FLOOD = "template_flood"
"""Quarantine reason for a line whose text fits no template on a day that would open more than
``max_new_templates`` new ones (see :func:`mine_texts`)."""

LINE_FIELDS = ("line_no", "timestamp", "level", "component", "node", "content", "label", "encoding",
               "session_keys")
QUARANTINE_FIELDS = ("line_no", "reason", "message", "raw", "truncated")
REPORT_DDL = ("group int, kind string, masked string, midx int, first_file int, first_line bigint, n bigint, "
              "detail string")
"""Pass-1 results: ``dict`` rows (one per masked text of a group, with its first file and line), ``raw``,
``quarantined``, ``long_session_keys``, ``raw_bytes`` and ``bad_bytes`` counts, and ``fold`` rows (``detail``:
one stripe run's stamps in an hour the clocks went back over, see :func:`repeated_hours`)."""


class ReconciliationError(RuntimeError):
    """Raw lines != parsed + quarantined: a line was lost or doubled (a bug, never bad input)."""


@dataclass(frozen=True)
class ParseMetrics:
    """Counts of one parse run (also what the ``parsed`` quality gate checks)."""

    source: str
    dt: str
    format: str
    files: int
    partitions: int
    ignored_files: int
    """Files in the raw partition not named as log files (``RAW_SUFFIXES``): skipped, and logged by name."""
    raw_lines: int
    parsed: int
    quarantined: int
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    masked_texts: int = 0
    templates: int = 0
    new_templates: int = 0
    unmatched: int = 0
    """Masked texts the final state did not match (given their own text as template); expected 0."""
    flooded_texts: int = 0
    """Distinct masked texts that fit no template on a day that would open more than ``max_new_templates``
    (:func:`mine_texts`); their lines are quarantined as ``template_flood``."""
    long_session_keys: int = 0
    """Parsed lines with a session key longer than ``MAX_SESSION_KEY_CHARS``, kept under a shortened key
    (:func:`~krone_jobs.logformats.bounded_session_key`)."""
    raw_bytes: int = 0
    """Bytes of the lines read, line ends included (an oversized line counts its whole size, less its line end)."""
    quarantined_bytes: int = 0
    """Bytes of the lines quarantined in parsing, continuation lines left out (``template_flood`` lines, found
    later, are counted in lines only). The gate bounds the share of quarantined *lines*, and an oversized line
    of any size is one line: this says how much of the day they were. Not gated: one 10 MB garbage line among
    good ones is no reason to stop a night, but a file with no line end at all (a JSON array written on one
    line) shows here, and ``krone night`` prints the share."""
    duplicate_files: int = 0
    """Log files whose content another file of the day, or of the day before, holds whole (equal, or a prefix
    of it: a duplicate or partial delivery): skipped, logged by name (:mod:`krone_jobs.raw_duplicates`); ``files`` and ``raw_lines``
    count only the files read."""
    duplicate_lines: int = 0
    """Lines of the skipped duplicate files."""
    continued_files: int = 0
    """Log files that begin with a file of the day before, whole (a log never rotated, shipped whole every day):
    read after the complete lines that file holds, which were parsed with that day."""
    continued_lines: int = 0
    """Lines of the continued files not read again; ``raw_lines`` counts only the lines after them."""
    repeated_hour_lines: int = 0
    """Lines stamped in the second run of an hour the clocks went back over (a format with a ``timezone``),
    placed there by their file's order (:func:`repeated_hours`)."""
    seconds: float = 0.0
    """Parsing and writing; the quality gate's time is ``gate_seconds``."""
    gate_seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    """Seconds per step: pass1 (parse, mask), mine (driver), pass2 (ids, write)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------ schemas
def parsed_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([
        ("file", pa.string()), ("line_no", pa.int64()), ("timestamp", pa.timestamp("us")), ("level", pa.string()),
        ("component", pa.string()), ("node", pa.string()), ("content", pa.string()), ("label", pa.string()),
        ("encoding", pa.string()), ("session_keys", pa.list_(pa.string())), ("template_id", pa.string()),
    ])


def quarantine_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("file", pa.string()), ("line_no", pa.int64()), ("reason", pa.string()),
                      ("message", pa.string()), ("raw", pa.binary()), ("truncated", pa.bool_())])


def _staging_schema() -> pa.Schema:
    """Parsed rows before their template id is known: the group's masked-text index instead."""
    import pyarrow as pa

    return parsed_schema().remove(parsed_schema().get_field_index("template_id")).append(pa.field("midx", pa.int32()))


# ------------------------------------------------------------------------------------------ pass 1
def _node_key(line: ParsedLine) -> tuple[str, ...]:
    """Node-window formats: the node for now; the window needs the node's lines in time order."""
    return (line.node,) if line.node and line.timestamp is not None else ()


def session_keys(rule: SessionKeyRule) -> Callable[[ParsedLine], tuple[str, ...]]:
    """The rule's keys for one line, as pass 1 computes them.

    Node windows are cut at sessionize, where a node's lines are in time order, so here a line's key is its
    node. For an unchanged :class:`IdPatternSessionKey` with at most one group, ``findall`` returns exactly
    what its ``keys`` collects with ``finditer`` at half the cost (tested to agree).
    """
    if isinstance(rule, NodeWindowSessionKey):
        return _node_key
    if isinstance(rule, IdPatternSessionKey) and type(rule).keys is IdPatternSessionKey.keys and rule.regex.groups <= 1:
        findall = rule.regex.findall
        return lambda line: tuple(dict.fromkeys(findall(line.content)))
    return rule.keys


def _stripe(unit: dict[str, Any], max_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of a unit's stripe of its file; raises ``LogReadError`` where the file is damaged
    or unreadable."""
    part, parts, skip = unit["part"], unit["parts"], unit["skip"]
    for line_no, raw in iter_lines(os.fsdecode(unit["path"]), max_bytes=max_bytes, start=(unit["start"], skip)):
        if line_no > skip and ((line_no - 1) // STRIPE_LINES) % parts == part:
            yield line_no, raw


class _GroupParser:
    """Pass 1 for one group of units (stripes of files, in file order): parse, key, quarantine and mask them,
    with one dictionary of masked texts for the group (see the module docstring)."""

    def __init__(self, group: dict[str, Any], fmt: LineFormat, miner: MinerSettings, max_bytes: int,
                 day: date_cls) -> None:
        self.group = group
        self.day = day
        self.zone = zone_of(fmt.timezone) if fmt.timezone is not None else None
        self.latest = datetime(day.year, day.month, day.day) + timedelta(days=1) + CLOCK_SLACK
        if self.zone is not None:
            self.latest = local_to_utc(self.latest, self.zone)[0]
        self.folds: dict[tuple[int, str, int], dict[str, Any]] = {}  # (file, local date, stripe run) -> stamps
        self.fmt = fmt
        self.keys = session_keys(fmt.session.make())
        self.mask = masker(miner)
        self.max_bytes = max_bytes
        self.raw_lines = 0
        self.raw_bytes = 0
        self.bad_bytes = 0  # of quarantined lines, continuation lines left out
        self.long_keys = 0
        self.quarantined: list[tuple[Any, ...]] = []  # not yet written
        self.n_quarantined = 0
        self.quarantine_path: Path | None = None
        self.quarantine_writer: Any = None
        self.index: dict[str, int] = {}
        self.first: list[tuple[int, int]] = []
        self.counts: list[int] = []

    def _lines(self) -> Iterator[tuple[dict[str, Any], int, Any]]:
        """(unit, line number, raw line) of the group's stripes; a damaged .gz or a file the system will not read
        ends its stripe with one quarantine record (stripe 0 only)."""
        for unit in self.group["units"]:
            try:
                for line_no, raw in _stripe(unit, self.max_bytes):
                    yield unit, line_no, raw
            except LogReadError as exc:
                if unit["part"] == 0:
                    self.raw_lines += 1
                    self._quarantine((unit["file"], exc.lines_read + 1, exc.reason, _text(str(exc)), b"", True))

    def _quarantine(self, record: tuple[Any, ...]) -> None:
        self.quarantined.append(record)
        if len(self.quarantined) >= QUARANTINE_BATCH:
            self._flush_quarantine()

    def _flush_quarantine(self) -> None:
        import pyarrow.parquet as pq

        if not self.quarantined:
            return
        schema = quarantine_schema()
        if self.quarantine_writer is None:
            self.quarantine_writer = pq.ParquetWriter(self.quarantine_path, schema)
        self.quarantine_writer.write_batch(_record_batch(schema, ("file", *QUARANTINE_FIELDS), self.quarantined))
        self.n_quarantined += len(self.quarantined)
        self.quarantined = []

    def _rows(self) -> Iterator[list[tuple[Any, ...]]]:
        """Batches of parsed rows (``LINE_FIELDS`` + masked-text index)."""
        rows: list[tuple[Any, ...]] = []
        fmt, keys, mask, max_bytes, latest, zone = self.fmt, self.keys, self.mask, self.max_bytes, self.latest, self.zone
        day = self.day
        yearless = fmt.yearless
        index, first, counts, quarantine = self.index, self.first, self.counts, self._quarantine
        for unit, line_no, raw in self._lines():
            file = unit["file"]
            size = raw.size if isinstance(raw, OversizedLine) else len(raw)
            self.raw_lines += 1
            self.raw_bytes += size
            parsed = parse_line(raw, fmt, max_bytes=max_bytes)
            if not isinstance(parsed, ParsedLine):
                quarantine((file, line_no, str(parsed.reason), parsed.message, parsed.raw, parsed.truncated))
                self.bad_bytes += size if parsed.reason != QuarantineReason.CONTINUATION else 0
                continue
            if yearless and parsed.timestamp is not None:
                parsed = parsed._replace(timestamp=nearest_year(parsed.timestamp, day))
            if zone is not None and parsed.timestamp is not None and not parsed.offset:
                utc, later = local_to_utc(parsed.timestamp, zone)
                if later:
                    self._note_fold(unit["file_index"], line_no, parsed.timestamp, utc, later)
                parsed = parsed._replace(timestamp=utc)
            if parsed.timestamp is not None and parsed.timestamp >= latest:
                quarantine((file, line_no, FUTURE_TIMESTAMP, f"stamped {parsed.timestamp.isoformat()}, after "
                            f"{latest.isoformat()}: a wrong clock", raw, False))
                self.bad_bytes += size
                continue
            found = keys(parsed)
            if not found:
                quarantine((file, line_no, NO_SESSION_KEY, f"no session key for format {fmt.name!r}", raw, False))
                self.bad_bytes += size
                continue
            if max(map(len, found)) > MAX_SESSION_KEY_CHARS:
                found = tuple(dict.fromkeys(map(bounded_session_key, found)))
                self.long_keys += 1
            masked = mask(parsed.content)
            midx = index.get(masked)
            if midx is None:
                midx = index[masked] = len(counts)
                first.append((unit["file_index"], line_no))
                counts.append(0)
            counts[midx] += 1
            rows.append((file, line_no, parsed.timestamp, parsed.level, parsed.component, parsed.node,
                         parsed.content, parsed.label, parsed.encoding, list(found), midx))
            if len(rows) >= BATCH_ROWS:
                yield rows
                rows = []
        if rows:
            yield rows

    def _note_fold(self, file_index: int, line_no: int, local: datetime, utc: datetime, later: timedelta) -> None:
        """Keep what :func:`repeated_hours` needs of a stamp in an hour the clocks went back over, per stripe run
        of :data:`STRIPE_LINES` lines: its first line and stamp, the latest stamp, the first line stamped more
        than half the change before an earlier one of the run, and the UTC range (read as the first run)."""
        key = (file_index, local.date().isoformat(), (line_no - 1) // STRIPE_LINES)
        run = self.folds.get(key)
        if run is None:
            self.folds[key] = {"first_line": line_no, "first": local, "max": local, "jump": None, "lo": utc, "hi": utc,
                               "later": later}
            return
        if run["jump"] is None and local < run["max"] - later / 2:
            run["jump"] = line_no
        run.update(max=max(run["max"], local), lo=min(run["lo"], utc), hi=max(run["hi"], utc))

    def run(self, staging: Path) -> pa.RecordBatch:
        """Write the group's staging files; return its dictionary, counts and fold runs (``REPORT_DDL``)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        group = self.group["group"]
        schema = _staging_schema()
        self.quarantine_path = staging / f"quarantine-{group:05d}.parquet"
        try:
            with pq.ParquetWriter(staging / f"lines-{group:05d}.parquet", schema) as writer:
                for rows in self._rows():
                    writer.write_batch(_record_batch(schema, ("file", *LINE_FIELDS, "midx"), rows))
            self._flush_quarantine()
        finally:
            if self.quarantine_writer is not None:
                self.quarantine_writer.close()
        nd = len(self.counts)
        totals = {"raw": self.raw_lines, "quarantined": self.n_quarantined, "long_session_keys": self.long_keys,
                  "raw_bytes": self.raw_bytes, "bad_bytes": self.bad_bytes}
        folds = [json.dumps({"file_index": f, "date": d, **{k: v.isoformat() if isinstance(v, datetime) else v
                                                             for k, v in run.items() if k != "later"},
                             "later_s": run["later"].total_seconds()})
                 for (f, d, _), run in sorted(self.folds.items())]
        extra = len(totals) + len(folds)
        return pa.RecordBatch.from_pydict(
            {"group": [group] * (nd + extra), "kind": ["dict"] * nd + list(totals) + ["fold"] * len(folds),
             "masked": [*self.index] + [None] * extra, "midx": [*range(nd)] + [None] * extra,
             "first_file": [f for f, _ in self.first] + [None] * extra,
             "first_line": [n for _, n in self.first] + [None] * extra,
             "n": [*self.counts, *totals.values()] + [None] * len(folds),
             "detail": [None] * (nd + len(totals)) + folds},
            schema=pa.schema([("group", pa.int32()), ("kind", pa.string()), ("masked", pa.string()),
                              ("midx", pa.int32()), ("first_file", pa.int32()), ("first_line", pa.int64()),
                              ("n", pa.int64()), ("detail", pa.string())]),
        )


def _record_batch(schema: pa.Schema, names: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> pa.RecordBatch:
    import pyarrow as pa

    columns = dict(zip(names, zip(*rows)))
    return pa.RecordBatch.from_arrays([pa.array(columns[f.name], f.type) for f in schema], schema=schema)


def _write_quarantine(records: Sequence[tuple[Any, ...]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = quarantine_schema()
    pq.write_table(pa.Table.from_batches([_record_batch(schema, ("file", *QUARANTINE_FIELDS), records)]), path)


def group_units(units: Sequence[dict[str, Any]], sizes: Sequence[int], groups: int) -> list[list[dict[str, Any]]]:
    """Cut ``units`` (in order) into at most ``groups`` runs of about equal estimated bytes (``sizes``).

    One Spark task per group, not per unit: a day of thousands of small files (a log shipper's file per host
    and hour) made a task and an output file per file stripe (2,000 files of 10 lines: 4,000 tasks a pass,
    45x slower than the same lines in one file, and 4,000 tiny Parquet files for every later stage)."""
    total = sum(sizes) + len(sizes)  # + 1 a unit: empty files still spread
    out: list[list[dict[str, Any]]] = []
    done = 0
    for unit, size in zip(units, sizes):
        if not out or (done >= total * len(out) / groups and len(out) < groups):
            out.append([])
        out[-1].append(unit)
        done += size + 1
    return out


def _text(name: str) -> str:
    """``name`` as valid UTF-8 text: bytes of a file name that are not UTF-8 (held as surrogates) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # unreadable: pass 1 says so
        return 0


def _one_per_task(spark: SparkSession, rows: list[dict[str, Any]], schema: str) -> DataFrame:
    """A frame of ``rows`` with exactly one row per partition (each row is one task's work)."""
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, max(len(rows), 1)), schema)


def _pass1(fmt: LineFormat, miner: dict[str, Any], max_bytes: int, staging: str,
           date: str) -> Callable[..., Iterator[pa.RecordBatch]]:
    """The format itself travels to the executors (a user format's file need not be readable there)."""
    day = date_cls.fromisoformat(date)

    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        settings_ = MinerSettings.from_dict(miner)
        for batch in batches:
            for group in batch.to_pylist():
                yield _GroupParser(group, fmt, settings_, max_bytes, day).run(Path(staging))

    return run


# ------------------------------------------------------------------------------------------ pass 2
UNITS_DDL = "units array<struct<file_index:int,path:binary,file:string,part:int,parts:int,skip:bigint,start:bigint>>"
"""A unit's ``path`` travels as the file system's bytes: a name that is not UTF-8 (``bad\\xff.log``) came back
from Spark as a string with U+FFFD in it, a file that did not exist, and its lines were lost as one
``unreadable`` record. ``file``, the name written in every row, is that name made valid UTF-8 (U+FFFD).
``skip``: the lines read with the day before (a continued file's), not read again; ``start``: the byte where they
end, where a plain file is entered (a ``.gz`` is read past them)."""
PASS2_DDL = f"group int, {UNITS_DDL}, template_ids array<string>, folds string"
"""Pass-2 work: a group, its template id per masked-text index (null: the text's lines are quarantined) and the
repeated hours of the day's files (JSON, :func:`repeated_hours`)."""


def repeated_hours(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Where each file's stamps enter the second run of an hour the clocks went back over.

    A stamp of such an hour (02:30 on the night summer time ends in Europe) names two instants an hour apart,
    and pass 1 took the first (:func:`~krone_jobs.timestamps.local_to_utc`): read so, the second run's lines
    fell among the first run's, and every session alive across the change had its steps interleaved. A log
    is written in time order, so the second run starts where the file's stamps go back, within that hour, by
    more than half the change (seconds of disorder between threads are not a change of clock). ``runs`` are
    pass 1's per stripe run (``fold`` rows); per file and local date with such a step back: the first line of
    the second run (``line``), the UTC range the hour's stamps were read into (``lo``, ``hi``) and the change
    (``later_s``). Pass 2 moves the file's lines from ``line`` on whose stamps lie in that range by the
    change. A file that starts inside the second run shows no step back: its lines keep the first reading."""
    by_file: dict[tuple[int, str], list[Mapping[str, Any]]] = {}
    for run in runs:
        by_file.setdefault((run["file_index"], run["date"]), []).append(run)
    out = []
    for (file_index, date), found in sorted(by_file.items()):
        found = sorted(found, key=lambda r: r["first_line"])
        half = timedelta(seconds=found[0]["later_s"] / 2)
        top: datetime | None = None
        line = None
        for run in found:
            first = datetime.fromisoformat(run["first"])
            if top is not None and first < top - half:
                line = run["first_line"]
                break
            if run["jump"] is not None:
                line = run["jump"]
                break
            top = max(top or first, datetime.fromisoformat(run["max"]))
        if line is not None:
            out.append({"file_index": file_index, "date": date, "line": line, "lo": min(r["lo"] for r in found),
                        "hi": max(r["hi"] for r in found), "later_s": found[0]["later_s"]})
    return out


def _second_runs(part: pa.RecordBatch, folds: Sequence[Mapping[str, Any]]) -> tuple[pa.RecordBatch, int]:
    """``part`` with the stamps of second-run lines (:func:`repeated_hours`) moved by the change, and their count."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ts = part.column("timestamp")
    kind = ts.type
    moved = 0
    for fold in folds:
        hit = pc.and_(pc.and_(pc.equal(part.column("file"), fold["file"]),
                              pc.greater_equal(part.column("line_no"), fold["line"])),
                      pc.and_(pc.greater_equal(ts, pa.scalar(datetime.fromisoformat(fold["lo"]), kind)),
                              pc.less_equal(ts, pa.scalar(datetime.fromisoformat(fold["hi"]), kind))))
        hit = pc.fill_null(hit, False)
        n = pc.sum(hit).as_py() or 0
        if n:
            later = pa.scalar(timedelta(seconds=fold["later_s"]), pa.duration("us"))
            ts = pc.if_else(hit, pc.add(ts, later).cast(kind), ts)
            moved += n
    if not moved:
        return part, 0
    i = part.schema.get_field_index("timestamp")
    return pa.RecordBatch.from_arrays([ts if j == i else part.column(j) for j in range(part.num_columns)],
                                      schema=part.schema), moved


def _pass2(staging: str, out: str, max_bytes: int, flood_message: str) -> Callable[..., Iterator[pa.RecordBatch]]:
    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        schema = parsed_schema()
        for batch in batches:
            for group in batch.to_pylist():
                tids = pa.array(group["template_ids"], pa.string())
                folds = json.loads(group["folds"])
                rows, moved, flooded = 0, 0, []
                source = pq.ParquetFile(Path(staging) / f"lines-{group['group']:05d}.parquet")
                with pq.ParquetWriter(Path(out) / f"part-{group['group']:05d}.parquet", schema) as writer:
                    for part in source.iter_batches(batch_size=BATCH_ROWS):
                        if folds:
                            part, n_moved = _second_runs(part, folds)
                            moved += n_moved
                        ids = tids.take(part.column("midx"))
                        part = pa.RecordBatch.from_arrays(
                            [part.column(n) if n != "template_id" else ids for n in schema.names], schema=schema)
                        if ids.null_count:
                            hit = part.filter(pc.is_null(ids))
                            flooded += zip(hit.column("file").to_pylist(), hit.column("line_no").to_pylist())
                            part = part.filter(pc.is_valid(ids))
                        writer.write_batch(part)
                        rows += part.num_rows
                if flooded:
                    records = _flooded_records(group["units"], flooded, max_bytes, flood_message)
                    _write_quarantine(records, Path(staging) / f"quarantine-{group['group']:05d}-flood.parquet")
                yield pa.RecordBatch.from_pydict(
                    {"group": [group["group"]], "rows": [rows], "moved": [moved]},
                    schema=pa.schema([("group", pa.int32()), ("rows", pa.int64()), ("moved", pa.int64())]))

    return run


def _flooded_records(units: Sequence[dict[str, Any]], lines: Sequence[tuple[str, int]], max_bytes: int,
                     message: str) -> list[tuple[Any, ...]]:
    """Quarantine records of ``template_flood`` lines (file, line number), with their raw bytes read again from
    their files (they were read whole in pass 1, so each read stops at the last of them, before any damage)."""
    wanted: dict[str, set[int]] = {}
    for file, line_no in lines:
        wanted.setdefault(file, set()).add(line_no)
    raw: dict[tuple[str, int], bytes] = {}
    for unit in units:
        part, parts = unit["part"], unit["parts"]
        mine = {n for n in wanted.get(unit["file"], ()) if ((n - 1) // STRIPE_LINES) % parts == part}  # as _stripe
        if not mine:
            continue
        last = max(mine)
        try:
            for line_no, line in _stripe(unit, max_bytes):
                if line_no in mine:
                    raw[unit["file"], line_no] = line
                if line_no >= last:
                    break
        except LogReadError:  # the file went away since pass 1: the records keep file and line number
            pass
    return [(file, n, TEMPLATE_FLOOD, message, raw.get((file, n), b""), (file, n) not in raw)
            for file, n in sorted(lines)]


# ------------------------------------------------------------------------------------------ mining
def mine_texts(store: TemplateStore, texts: Iterable[str], max_new: int | None = None,
               lines: Mapping[str, int] | None = None) -> tuple[TemplateStore, dict[str, str | None], list[str]]:
    """Mine every masked text once, in the order given, then match each against the final state.

    A day may open ``max_new`` templates. A day of unique text the masks miss (free text, a flood of garbage)
    would otherwise open a template per line, and Drain's search for a similar template grows with the
    templates under one prefix, so mining turned quadratic (20,000 such texts: 40 s; 50,000: ~10 min). Once
    the budget is spent, a text is mined only into a template it fits (:meth:`~TemplateStore.mine_known`).
    Where that happens and ``lines`` (lines per text) is given, the day is mined again from the same start
    with one more rule: a text of a single line may not open a template at all. So the flood's own lines,
    unique by nature, open nothing (a flood every day does not grow the state), and the budget goes to texts
    that recur, which real events do. A refused text that the final state matches (a later text generalised
    a template) gets its id; one it does not is *flooded*.

    Returns (the final store: ``store`` itself unless the day was mined again; masked text -> template id,
    ``None`` where the final state matches nothing (not expected); the flooded texts, not in the mapping).
    """
    texts = list(texts)
    budget = store.opened + max_new if max_new is not None else None
    initial = store.to_json() if budget is not None and lines is not None else None
    refused = _mine(store, texts, budget)
    if refused and initial is not None:
        store = TemplateStore.from_json(initial)
        refused = _mine(store, texts, budget, lambda text: lines[text] > 1)  # type: ignore[index]
    ids: dict[str, str | None] = {}
    flooded: list[str] = []
    for text in texts:
        found = store.match(text, full_search=text not in refused)
        if found is None and text in refused:
            flooded.append(text)
        else:
            ids[text] = found.template_id if found else None
    return store, ids, flooded


def _mine(store: TemplateStore, texts: Sequence[str], budget: int | None,
          may_open: Callable[[str], bool] = lambda text: True) -> set[str]:
    """Mine ``texts`` in order: a text may open a template while fewer than ``budget`` were ever opened and
    ``may_open`` allows it, else it only joins one it fits. Returns the texts that fit none (not mined)."""
    refused: set[str] = set()
    for text in texts:
        if budget is None or (store.opened < budget and may_open(text)):
            store.mine(text)
        elif store.mine_known(text) is None:
            refused.add(text)
    return refused


def _with_line_counts(store: TemplateStore, seed: str | None, day_counts: Counter[str]) -> str:
    """State JSON whose cluster sizes are seed sizes + the day's lines per template (first cluster per text)."""
    state = json.loads(store.to_json())
    seed_sizes = {c["cluster_id"]: c["size"] for c in json.loads(seed)["clusters"]} if seed else {}
    for cluster in state["clusters"]:
        tid = template_id(" ".join(cluster["tokens"]))
        cluster["size"] = seed_sizes.get(cluster["cluster_id"], 0) + day_counts.pop(tid, 0)
    return json.dumps(state, ensure_ascii=False, separators=(",", ":"))


# ------------------------------------------------------------------------------------------ the job
_NOT_A_RECORD = frozenset({QuarantineReason.NO_FORMAT_MATCH, QuarantineReason.BINARY, QuarantineReason.BAD_ENCODING})
ORPHAN_MESSAGE = "a continuation line under a line that is not a log record: nothing to continue"


def orphan_continuations(rows: Iterable[tuple[str, int, str]]) -> set[tuple[str, int]]:
    """``(file, line_no)`` of the ``continuation`` lines among quarantined ``rows`` whose record has no first
    line: the nearest earlier line that is neither a continuation nor empty did not match the format at all
    (garbage), so the pattern must not hide them from the quarantine ratio. A line not quarantined is an
    event; a run at the very start of a file is given the benefit of the doubt (a rotated file)."""
    by_file: dict[str, dict[int, str]] = {}
    for file, line_no, reason in rows:
        by_file.setdefault(file, {})[line_no] = reason
    orphans: set[tuple[str, int]] = set()
    for file, lines in by_file.items():
        has_record, previous = True, 0
        for line_no in sorted(lines):
            if line_no != previous + 1:  # an event line lies in between
                has_record = True
            reason = lines[line_no]
            if reason == QuarantineReason.CONTINUATION:
                if not has_record:
                    orphans.add((file, line_no))
            elif reason != QuarantineReason.EMPTY:
                has_record = reason not in _NOT_A_RECORD
            previous = line_no
    return orphans


def _counts(column: Any) -> dict[str, int]:
    """Occurrences of each value of an Arrow string column."""
    return {v["values"].as_py(): v["counts"].as_py() for v in column.value_counts()}


def _finish_quarantine(staging: Path, out: Path) -> Counter[str]:
    """Move the units' quarantine files into ``out`` (an empty file if none); return counts per reason.

    Units see stripes of a file, so whether a continuation line has a record to continue is decided here,
    over all of them (:func:`orphan_continuations`); orphans become ``no_format_match``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out.mkdir(parents=True)
    reasons: Counter[str] = Counter()
    found = sorted(staging.glob("quarantine-*.parquet"))
    keys = {path: pq.read_table(path, columns=["file", "line_no", "reason"]) for path in found}
    continuation = str(QuarantineReason.CONTINUATION)
    # only files with continuation lines can have orphans: a million binary lines elsewhere stay in Arrow
    continued = {f for t in keys.values() for f in pc.filter(t["file"], pc.equal(t["reason"], continuation)).unique()
                 .to_pylist()}
    scope = pa.array(sorted(continued), pa.string())
    orphans = orphan_continuations(
        row for t in keys.values() for row in zip(*(t.filter(pc.is_in(t["file"], scope))[c].to_pylist()
                                                    for c in ("file", "line_no", "reason")))
    ) if continued else set()
    for path, key in keys.items():
        target = out / re.sub(r"^quarantine-", "part-", path.name)
        hit: list[bool] = []
        if orphans:
            hit = [(f, n) in orphans for f, n in zip(key["file"].to_pylist(), key["line_no"].to_pylist())]
        if any(hit):
            table = pq.read_table(path)
            mask = pa.array(hit)
            for name, value in (("reason", str(QuarantineReason.NO_FORMAT_MATCH)), ("message", ORPHAN_MESSAGE)):
                i = table.schema.get_field_index(name)
                table = table.set_column(i, table.schema.field(i), pc.if_else(mask, value, table[name]))
            pq.write_table(table, target)
            path.unlink()
            reasons.update(_counts(table["reason"]))
        else:
            reasons.update(_counts(key["reason"]))
            os.rename(path, target)
    if not found:
        pq.write_table(quarantine_schema().empty_table(), out / "part-00000.parquet")
    return reasons


@holds_source_lock("parse")
def run_parse(
    source: str,
    date: str,
    fmt_name: str,
    *,
    data_root: str | Path | None = None,
    spark: SparkSession | None = None,
    partitions: int | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_quarantine_ratio: float = 0.05,
    max_new_templates: int | None = None,
    gate: bool = True,
) -> ParseMetrics:
    """Parse one day of one source; overwrite its ``parsed/`` and ``quarantine/`` partitions and day state.

    ``partitions``: stripes per file (default: Spark's default parallelism); ``max_quarantine_ratio`` is
    the quality gate's bound on quarantined / raw lines; ``max_new_templates`` how many templates the day
    may open (default ``KRONE_MAX_NEW_TEMPLATES``; on a day that would open more, lines of unique text are
    quarantined as ``template_flood``, see :func:`mine_texts`); ``gate=False`` skips the gate (for tests of other
    behaviour; the reconciliation check always runs). Raises :class:`ReconciliationError` if raw lines
    != parsed + quarantined, and the gate's ``QualityGateError`` if the ``parsed`` suite fails (outputs
    stay for inspection; the day's miner state is not saved, so later stages do not run on it).
    """
    import pyarrow.parquet as pq

    from krone_jobs.spark import get_spark

    t0 = time.perf_counter()
    check_source(source)
    check_date(date)
    max_new = max_new_templates if max_new_templates is not None else settings().max_new_templates
    if max_new < 1:
        raise ValueError(f"max_new_templates must be at least 1, not {max_new}")
    fmt = get_format(fmt_name)
    fmt_name = fmt.name
    root = Path(data_root) if data_root is not None else settings().data_root
    spark = spark or get_spark()
    parts = partitions or spark.sparkContext.defaultParallelism
    files = raw_files(root, source, date)
    marked = (raw_dir(root, source, date) / settings().raw_marker).is_file()
    if not files and (not marked or ignored_raw_files(root, source, date)):
        raise NoLogFilesError(f"{source} {date}: {no_log_files(root, source, date)}")
    yesterday = (date_cls.fromisoformat(date) - timedelta(days=1)).isoformat()
    deliveries = check_deliveries(files, read_before=raw_files(root, source, yesterday))
    duplicates = deliveries.duplicates
    if duplicates:
        log.warning("%s %s: skipped %d file(s) whose content another file holds (a duplicate or "
                    "partial delivery): %s", source, date, len(duplicates),
                    ", ".join(f"{d.path.relative_to(root).as_posix()} (in {d.original.relative_to(root).as_posix()})"
                              for d in duplicates[:10]))
        skipped = {d.path for d in duplicates}
        files = [p for p in files if p not in skipped]
    continued = {c.path: c for c in deliveries.continued}
    if continued:
        log.info("%s %s: %d file(s) begin with a file of %s whole (a log never rotated, shipped whole every "
                 "day): read after its lines: %s", source, date, len(continued), yesterday,
                 ", ".join(f"{c.path.relative_to(root).as_posix()} after line {c.lines:,} "
                           f"({c.previous.relative_to(root).as_posix()})" for c in deliveries.continued[:10]))
    ignored = ignored_raw_files(root, source, date)
    if ignored:
        log.warning("%s %s: skipped %d file(s) not named *%s: %s", source, date, len(ignored),
                    "|*".join(RAW_SUFFIXES), ", ".join(p.relative_to(root).as_posix() for p in ignored[:10]))
    seed_path = latest_before(templates_dir(root, source), date)
    built_from = inputs(root, files=[seed_path], raw=raw_files(root, source, date),
                        seed=(templates_dir(root, source), seed_path))
    seed = seed_path.read_text(encoding="utf-8") if seed_path else None
    store = parse_state(seed, seed_path) if seed_path else TemplateStore(fmt.miner)
    parsed_dir = partition_dir(root, "parsed", source, date)
    quarantine_dir = partition_dir(root, "quarantine", source, date)
    units = [{"file_index": i, "path": os.fsencode(path.resolve()), "file": _text(path.relative_to(root).as_posix()),
              "part": part, "parts": parts, "skip": c.lines if (c := continued.get(path)) else 0,
              "start": c.offset if c else 0} for i, path in enumerate(files) for part in range(parts)]
    sizes = [_size(path) // parts for path in files for _ in range(parts)]
    groups = [{"group": g, "units": us} for g, us in enumerate(group_units(units, sizes, parts))]

    staging, parsed_out, quarantine_out = temp_dir_for(parsed_dir), temp_dir_for(parsed_dir), temp_dir_for(quarantine_dir)
    try:
        staging.mkdir(parents=True)
        parsed_out.mkdir()
        group_df = _one_per_task(spark, groups, f"group int, {UNITS_DDL}")
        steps = {"setup": time.perf_counter() - t0}
        reports = group_df.mapInArrow(
            _pass1(fmt, asdict(store.settings), max_line_bytes, str(staging), date), REPORT_DDL).collect()
        steps["pass1"] = time.perf_counter() - t0 - sum(steps.values())

        # one miner: distinct masked texts in order of first occurrence (file, line)
        first: dict[str, tuple[int, int]] = {}
        counts: Counter[str] = Counter()
        by_group: dict[int, dict[int, str]] = {g["group"]: {} for g in groups}
        totals: Counter[str] = Counter()
        fold_runs = []
        for r in reports:
            if r["kind"] == "dict":
                at = (r["first_file"], r["first_line"])
                first[r["masked"]] = min(first.get(r["masked"], at), at)
                counts[r["masked"]] += r["n"]
                by_group[r["group"]][r["midx"]] = r["masked"]
            elif r["kind"] == "fold":
                fold_runs.append(json.loads(r["detail"]))
            else:
                totals[r["kind"]] += r["n"]
        folds = [{**f, "file": units[f["file_index"] * parts]["file"]} for f in repeated_hours(fold_runs)]
        for f in folds:
            log.info("%s %s: %s enters the second run of the repeated hour of %s at line %d", source, date,
                     f["file"], f["date"], f["line"])
        store, ids, flooded = mine_texts(store, sorted(first, key=first.__getitem__), max_new, counts)
        mapping = {text: tid or template_id(" ".join(text.split())) for text, tid in ids.items()}
        if flooded:
            log.warning("%s %s: %d distinct texts (%d lines) fit no template on a day that would open more than %d: "
                        "quarantined as %s", source, date, len(flooded), sum(counts[t] for t in flooded), max_new,
                        TEMPLATE_FLOOD)

        steps["mine"] = time.perf_counter() - t0 - sum(steps.values())
        second = [{**g, "template_ids": [mapping.get(m) for _, m in sorted(by_group[g["group"]].items())],
                   "folds": json.dumps(folds)} for g in groups]
        flood_message = (f"fits no template on a day that would open more than {max_new} (KRONE_MAX_NEW_TEMPLATES):"
                         " unique text the masks miss")
        written = _one_per_task(spark, second, PASS2_DDL).mapInArrow(
            _pass2(str(staging), str(parsed_out), max_line_bytes, flood_message), "group int, rows bigint, moved bigint").collect()
        if not units:
            pq.write_table(parsed_schema().empty_table(), parsed_out / "part-00000.parquet")
        reasons = _finish_quarantine(staging, quarantine_out)
        swap_in(parsed_out, parsed_dir, built_from)
        swap_in(quarantine_out, quarantine_dir, built_from)
        steps["pass2"] = time.perf_counter() - t0 - sum(steps.values())
    finally:
        for folder in (staging, parsed_out, quarantine_out):
            shutil.rmtree(folder, ignore_errors=True)

    n_parsed = sum(r["rows"] for r in written)
    n_quarantined = sum(reasons.values())
    raw_lines = totals["raw"]
    if raw_lines != n_parsed + n_quarantined or n_parsed != sum(counts[t] for t in mapping):
        raise ReconciliationError(f"{source} {date}: raw lines {raw_lines} != parsed {n_parsed} + "
                                  f"quarantined {n_quarantined}")
    seconds = time.perf_counter() - t0
    if gate:
        from krone_jobs.quality import QualityGateError

        try:
            quality_gate(read_partition(spark, root, "parsed", source, date), "parsed", root, source, date,
                         max_quarantine_ratio=max_quarantine_ratio,
                         counts={"raw": raw_lines, "parsed": n_parsed, "quarantined": n_quarantined,
                                 "continuation": reasons.get(str(QuarantineReason.CONTINUATION), 0)})
        except QualityGateError as exc:  # say why lines were quarantined: the one line an operator reads
            if reasons:
                why = ", ".join(f"{reason} {n:,}" for reason, n in reasons.most_common())
                exc.args = (f"{exc.args[0]} Quarantined by reason: {why}.", *exc.args[1:])
            raise
    day_counts: Counter[str] = Counter()
    for text, tid in mapping.items():
        day_counts[tid] += counts[text]
    atomic_write_text(templates_path(root, source, date), _with_line_counts(store, seed, day_counts))
    record_source_format(root, source, fmt_name, asdict(fmt.session), fmt.timezone)
    seed_ids = {t.template_id for t in TemplateStore.from_json(seed).templates()} if seed else set()
    live = store.templates()
    return ParseMetrics(
        source=source, dt=date, format=fmt_name, files=len(files), partitions=parts, ignored_files=len(ignored),
        duplicate_files=len(duplicates), duplicate_lines=sum(d.lines for d in duplicates),
        continued_files=len(continued), continued_lines=sum(c.lines for c in continued.values()),
        repeated_hour_lines=sum(r["moved"] for r in written),
        raw_lines=raw_lines, parsed=n_parsed, quarantined=n_quarantined,
        quarantine_reasons=dict(sorted(reasons.items())),
        masked_texts=len(first), templates=len(live), new_templates=sum(t.template_id not in seed_ids for t in live),
        unmatched=sum(tid is None for tid in ids.values()), flooded_texts=len(flooded),
        long_session_keys=totals["long_session_keys"],
        raw_bytes=totals["raw_bytes"], quarantined_bytes=totals["bad_bytes"],
        seconds=round(seconds, 3),
        gate_seconds=round(time.perf_counter() - t0 - seconds, 3), steps={k: round(v, 3) for k, v in steps.items()},
    )


def quality_gate(frame: DataFrame, suite: str, root: Path, source: str, dt: str, **kwargs: Any) -> None:
    """Run the Great Expectations suite ``suite`` (:mod:`krone_jobs.quality`) on a written partition.

    The suite checks the contract's columns; columns we add beyond it (``label``/``encoding`` in parsed,
    ``lines`` in sessions) are left out of the checked frame. Raises ``QualityGateError`` on failure.
    """
    from krone_jobs.quality import PARSED_COLUMNS as PARSED_CONTRACT
    from krone_jobs.quality import SESSION_COLUMNS, gate

    contract = {"parsed": PARSED_CONTRACT, "sessions": SESSION_COLUMNS}[suite]
    gate(frame.select(*contract), suite, result_dir=root / "quality" / suite / f"source={source}" / f"dt={dt}",
         run_name=f"{suite}-{source}-{dt}", **kwargs)
