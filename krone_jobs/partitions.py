"""Data layout under the data root and atomic, idempotent partition writes.

Layout::

    raw/<source>/dt=D/*.log[.gz]                  input (read-only to the jobs; also .jsonl, .ndjson)
    <stage>/source=S/dt=D/part-NNNNN.parquet      stage output: parsed, quarantine, sessions, kseqs
    state/<source>/...                            per-source state (miner JSON, hierarchy CSV, open sessions)

Stage files hold no ``source``/``dt`` columns: they come from the path, so ``spark.read.parquet(root/stage)``
sees them as partition columns, and :func:`read_partition` adds them when one partition is read directly.

A job writes its whole partition into a hidden sibling folder (``_tmp...``: Spark and pandas readers skip
names starting with ``_``), then swaps it in with two renames: a reader never sees a half-written
partition (only, for the instant between the renames, none), and a rerun replaces the partition instead
of adding to it. Part files are renamed to
``part-NNNNN.parquet`` in task order and Spark's ``.crc`` side files dropped, so a rerun on the same input
and configuration leaves the same file names and the same rows. Each partition is sealed with a manifest of
its files (:mod:`krone_jobs.manifests`), and readers refuse one changed since (:class:`PartitionMismatch`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from krone_jobs.manifests import MANIFEST, differences, manifest_text

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

STAGES = ("parsed", "quarantine", "sessions", "kseqs")
"""The stages that write day partitions ``<stage>/source=S/dt=D``."""
RAW_SUFFIXES = (".log", ".log.gz", ".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")
"""What a raw partition's log files are called; other files there are listed by :func:`ignored_raw_files`."""
_DT = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})(?:\.\w+)?$")
_PART = re.compile(r"^part-(\d+)")


def check_date(dt: str) -> str:
    """``YYYY-MM-DD`` or ValueError: partition names are built from it, so nothing else may get through."""
    if date.fromisoformat(dt).isoformat() != dt:
        raise ValueError(f"expected a date as YYYY-MM-DD, got {dt!r}")
    return dt


def check_source(source: str) -> str:
    """A source name safe to use as a folder name and a partition value."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", source):
        raise ValueError(f"source must be letters, digits, '_', '.', '-': {source!r}")
    return source


def raw_dir(root: Path, source: str, dt: str) -> Path:
    return root / "raw" / source / f"dt={dt}"


def _partition_files(root: Path, source: str, dt: str) -> list[Path]:
    """Every file under the raw partition, sub-folders included (``hour=13/`` as log shippers write them),
    sorted by path; hidden and ``_``-prefixed names (``.staging/``, ``_SUCCESS``) are not data. A link to a
    file that is gone counts as a file: reading it fails, and the parse stage says so (``unreadable``)."""
    folder = raw_dir(root, source, dt)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*")
                  if (p.is_file() or (p.is_symlink() and not p.exists()))
                  and not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts))


def raw_files(root: Path, source: str, dt: str) -> list[Path]:
    """The partition's raw log files, sorted by path (a missing folder is an empty partition)."""
    return [p for p in _partition_files(root, source, dt) if p.name.endswith(RAW_SUFFIXES)]


def ignored_raw_files(root: Path, source: str, dt: str) -> list[Path]:
    """Files of the raw partition that are not log files by name, so a parse run can say it skipped them
    instead of reading an empty day."""
    return [p for p in _partition_files(root, source, dt) if not p.name.endswith(RAW_SUFFIXES)]


def stage_dir(root: Path, stage: str, source: str) -> Path:
    """Where a stage keeps a source's day partitions (``dt=D`` folders)."""
    return root / stage / f"source={source}"


def partition_dir(root: Path, stage: str, source: str, dt: str) -> Path:
    return stage_dir(root, stage, source) / f"dt={dt}"


def state_dir(root: Path, source: str) -> Path:
    return root / "state" / source


def dated_files(folder: Path) -> dict[str, Path]:
    """``dt=D`` entries (files like ``dt=D.json`` or folders) of a state folder, keyed by date."""
    if not folder.is_dir():
        return {}
    found = {m.group(1): p for p in folder.iterdir() if (m := _DT.match(p.name))}
    return dict(sorted(found.items()))


def day_partitions(root: Path, source: str) -> list[tuple[str, Path]]:
    """(day, folder) of every Parquet partition of ``source``: the stages' (:data:`STAGES`) and the open
    sessions' (``state/S/open/dt=D``), stage by stage, days in order."""
    folders = [(dt, p) for stage in STAGES for dt, p in dated_files(stage_dir(root, stage, source)).items()]
    return folders + list(dated_files(state_dir(root, source) / "open").items())


def latest_before(folder: Path, dt: str, *, inclusive: bool = False) -> Path | None:
    """The newest ``dt=`` entry strictly before ``dt`` (or at ``dt`` with ``inclusive``)."""
    hits = [p for d, p in dated_files(folder).items() if d < dt or inclusive and d == dt]
    return hits[-1] if hits else None


class SourceRecordError(ValueError):
    """``state/<source>/source.json`` cannot be read (damaged, or edited by hand into something else)."""


def _source_record(root: Path, source: str) -> dict[str, Any]:
    path = state_dir(root, source) / "source.json"
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: parse the source first (or pass its format)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or not isinstance(record.get("format"), str):
            raise ValueError("not an object with a format")
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SourceRecordError(f"{path} is not a readable source record ({exc}): each parse run writes it, so "
                                f"run `krone parse --source {source} --date <its last day> --format <its format>` "
                                "again, or restore it from a backup") from exc
    return record


def source_format(root: Path, source: str) -> str:
    """The log format the source was last parsed with (recorded by the parse job), so later stages know
    whether sessions are id-keyed or node windows without being told again."""
    return str(_source_record(root, source)["format"])


def source_session(root: Path, source: str) -> dict[str, Any] | None:
    """The session rule the source was last parsed with, as ``SessionSpec`` fields (None in a record
    written before rules were recorded). Recorded so sessionizing a format from ``KRONE_FORMATS_FILE``
    needs neither the file nor the variable."""
    session = _source_record(root, source).get("session")
    return dict(session) if session is not None else None


def source_timezone(root: Path, source: str) -> str | None:
    """The zone of the stamps the source was last parsed with (``None``: taken as they are; so is a record
    written before zones were recorded). Sessionize ends the day at midnight there."""
    zone = _source_record(root, source).get("timezone")
    return str(zone) if zone is not None else None


def record_source_format(root: Path, source: str, fmt_name: str, session: dict[str, Any],
                         timezone: str | None = None) -> None:
    record = {"format": fmt_name, "session": session, "timezone": timezone}
    atomic_write_text(state_dir(root, source) / "source.json", json.dumps(record, sort_keys=True) + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small state file so readers see the old or the new content, never a torn one: the new content
    reaches the disk (fsync) before it replaces the old, so a power cut cannot leave an empty file behind,
    and a write that fails (a full disk) leaves no temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"_tmp_{path.name}_{uuid.uuid4().hex}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def temp_dir_for(target: Path) -> Path:
    """A hidden, unique sibling of ``target`` for staging its replacement."""
    return target.parent / f"_tmp_{target.name}_{uuid.uuid4().hex}"


def seal(staged: Path, target: Path, inputs: dict[str, Any] | None = None) -> None:
    """Write the manifest of ``staged``, about to become (or being) ``target``: a reader sees none or all of it."""
    atomic_write_text(staged / MANIFEST, manifest_text(staged, target, inputs))


def swap_in(staged: Path, target: Path, inputs: dict[str, Any] | None = None) -> None:
    """Replace ``target`` by ``staged`` (two renames; the old copy is removed last), sealed with its manifest
    first (:mod:`krone_jobs.manifests`; ``inputs``: what it was built from, :func:`krone_jobs.lineage.inputs`)."""
    seal(staged, target, inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.parent / f"_old_{target.name}_{uuid.uuid4().hex}"
    if target.exists():
        os.rename(target, old)
    os.rename(staged, target)
    shutil.rmtree(old, ignore_errors=True)


def _normalise_parts(folder: Path) -> None:
    """Drop ``.crc``/marker files and name part files ``part-NNNNN.parquet`` by Spark task number."""
    for p in folder.iterdir():
        if p.name.startswith((".", "_")):
            p.unlink()
    parts = sorted(folder.glob("part-*"), key=lambda p: (int(_PART.match(p.name).group(1)), p.name))  # type: ignore[union-attr]
    for i, p in enumerate(parts):
        p.rename(folder / f"part-{i:05d}.parquet")


def write_partition(frame: DataFrame, target: Path, *, sort_by: Sequence[str], files: int | None = None,
                    inputs: dict[str, Any] | None = None) -> None:
    """Overwrite ``target`` with ``frame``, rows sorted by ``sort_by`` inside each file (see :func:`swap_in` for
    ``inputs``).

    ``files`` fixes the file count (hash-partitioned on ``sort_by``); ``None`` keeps the frame's own
    partitioning (no shuffle), which is deterministic for a given input and configuration.
    """
    staged = temp_dir_for(target)
    if files is not None:
        frame = frame.repartition(files, *sort_by)
    try:
        frame.sortWithinPartitions(*sort_by).write.mode("overwrite").parquet(str(staged))
        _normalise_parts(staged)
        swap_in(staged, target, inputs)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


class PartitionUnreadable(RuntimeError):
    """A Parquet file of a stage partition (or of the open-session state) cannot be read: a truncated copy,
    a damaged disk, a restore that stopped half-way. Jobs write partitions atomically, so this is never one of
    their own half-written files; the message names the file and the stage run that writes it again."""


_WRITTEN_BY = {"parsed": "parse", "quarantine": "parse", "sessions": "sessionize", "kseqs": "kseqs",
               "open": "sessionize", "templates": "parse"}


def rewrite_hint(path: Path) -> str:
    """How to write ``path`` again from its input: a stage partition ``<stage>/source=S/dt=D`` or a dated state
    entry ``state/S/<kind>/dt=D[.json]`` (open sessions, miner state)."""
    dated, parent = _DT.match(path.name), path.parent
    if parent.name.startswith("source="):
        written, source = parent.parent.name, parent.name.removeprefix("source=")
    else:
        written, source = parent.name, parent.parent.name
    command = _WRITTEN_BY.get(written) if dated else None
    if dated is None or command is None:
        return "remove it, or restore it from a backup"
    day = dated.group(1)
    extra = " --format <the source's format>" if command == "parse" else ""
    return (f"run `krone {command} --source {source} --date {day}{extra}` again to write it anew from its input "
            f"(then the stages after it), or restore it from a backup")


class PartitionMismatch(PartitionUnreadable):
    """A partition is not what the run that wrote it wrote (its manifest says so): a file missing, added,
    resized or, to ``krone status --check``, rewritten; or the folder of another day. Each file may read
    fine, so without this a partial restore would be scored as a smaller day."""


def _mismatch(folder: Path, found: list[str]) -> str:
    return f"{folder} is not the partition that was written: {'; '.join(found)}: {rewrite_hint(folder)}"


def check_written(folder: Path) -> None:
    """:class:`PartitionMismatch` if ``folder``'s files are not the ones its manifest lists (names and sizes:
    a ``stat`` per file); nothing where it matches or has no manifest."""
    if found := differences(folder):
        raise PartitionMismatch(_mismatch(folder, found))


def _unreadable(folder: Path, path: Path, error: Exception) -> PartitionUnreadable:
    return PartitionUnreadable(f"{path} is not a readable Parquet file ({type(error).__name__}: {error}): "
                               f"{rewrite_hint(folder)}")


def _footer_rows(folder: Path, path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (OSError, ValueError) as error:  # ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise _unreadable(folder, path, error) from error


def count_rows(folder: Path) -> int:
    """Rows in a partition's Parquet files, from their footers (no Spark job, no data read); a file whose
    footer cannot be read raises :class:`PartitionUnreadable`, a partition changed since it was written
    :class:`PartitionMismatch`."""
    check_written(folder)
    return sum(_footer_rows(folder, path) for path in sorted(folder.glob("*.parquet")))


def damaged_files(folder: Path) -> tuple[int, list[str]]:
    """(Parquet files in ``folder``, what is wrong with each that cannot be read whole, and with the partition
    where it differs from its manifest, content hashes included). Every page is read and decompressed, in
    batches: a damaged page behind an intact footer is found too."""
    import pyarrow.parquet as pq

    paths = sorted(folder.glob("*.parquet"))
    problems, damaged = [], set()
    for path in paths:
        try:
            for _ in pq.ParquetFile(path).iter_batches(batch_size=65_536):
                pass
        except (OSError, ValueError) as error:
            problems.append(str(_unreadable(folder, path, error)))
            damaged.add(path.name)
    if found := differences(folder, content=True, damaged=damaged):
        problems.insert(0, _mismatch(folder, found))
    return len(paths), problems


def seal_unsealed(root: Path, source: str) -> tuple[list[str], list[str]]:
    """Seal, in place, the partitions of ``source`` that have no manifest (written before manifests) and read
    whole, so that readers compare them from then on; (partitions sealed, what is wrong with those that do
    not read whole: they are left unsealed, for the run that writes them again)."""
    sealed, refused = [], []
    for _, folder in day_partitions(root, source):
        if (folder / MANIFEST).exists():
            continue
        if damaged := damaged_files(folder)[1]:
            refused += damaged
            continue
        seal(folder, folder)
        sealed.append(folder.relative_to(root).as_posix())
    return sealed, refused


def raise_if_damaged(error: Exception, *folders: Path) -> None:
    """Spark work that read the partitions in ``folders`` failed with ``error``: if one of their files cannot
    be read whole (a damaged page behind an intact footer, which Spark meets only mid-job), raise
    :class:`PartitionUnreadable` naming it and the run that writes it again, instead of Spark's page of Java
    trace. The files are read only then; otherwise this returns and the caller re-raises ``error``."""
    for folder in folders:
        if folder.is_dir() and (damaged := damaged_files(folder)[1]):
            more = f" ({len(damaged) - 1} more file(s) of the partition too)" if len(damaged) > 1 else ""
            raise PartitionUnreadable(damaged[0] + more) from error


def read_table(folder: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """A partition's rows as one Arrow table (``columns`` only, when given), or :class:`PartitionUnreadable`
    naming the damaged file (:class:`PartitionMismatch`: a partition changed since it was written)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_written(folder)
    tables = []
    for path in sorted(folder.glob("*.parquet")):
        try:
            tables.append(pq.read_table(path, columns=columns))
        except (OSError, ValueError) as error:
            raise _unreadable(folder, path, error) from error
    if not tables:
        return pq.read_table(folder, columns=columns)  # an empty folder: what pyarrow itself makes of it
    return pa.concat_tables(tables, promote_options="default")


def read_partition(spark: SparkSession, root: Path, stage: str, source: str, dt: str) -> DataFrame:
    """One stage partition with ``source`` and ``dt`` added as columns (as a whole-table read has them);
    :class:`PartitionUnreadable` if a file's footer is damaged or the partition changed since it was written."""
    from pyspark.sql import functions as F

    path = partition_dir(root, stage, source, dt)
    if not path.is_dir():
        raise FileNotFoundError(f"no {stage} partition for source={source} dt={dt} at {path}")
    count_rows(path)  # every footer readable: a damaged file is named here, not deep in a Spark stack trace
    return spark.read.parquet(str(path)).withColumn("source", F.lit(source)).withColumn("dt", F.lit(dt))
