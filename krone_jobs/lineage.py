"""Lineage: which inputs a partition was built from, so that one whose input changed since is called stale.

Each stage records in its partitions' manifests (:mod:`krone_jobs.manifests`) what it read, as found when it
ran: the raw log files of the day with their sizes, times and digests (parse), the miner state it was seeded
from (parse), the partitions it read by their content (sessionize: the day's parsed rows and the sessions the
day before left open; kseqs: the day's sessions). A partition is *stale* when one of those is no longer what it was:

* a log file delivered after the day was parsed (or one grown, shrunk or rewritten) was never read (one
  compressed in place does not count; one only touched or copied again, with the same content, neither);
* the day before was run again with another result, so this day was seeded or carried from what is gone;
* a day before it was parsed after it (a backfill of earlier days), so it was not seeded from that day's
  miner state;
* a partition was restored from a backup older than the ones built from it.

Inputs removed since (by retention, a log shipper) do not make anything stale: what was built from them stands.

Nothing is rebuilt on its own: ``krone status`` names the stale partitions and the run that brings them up to
date. Days build on the day before (miner state, open sessions), so that run starts at the earliest stale day.
A rerun that writes the same bytes leaves the same content ids, so it makes nothing stale. Inputs that were
written before manifests existed are not compared.

A raw file is hashed (SHA-256, 0.8 GB/s here) when the day is parsed, and again only where its size is the same and its
modification time is not (as ``git status`` does with its index): a day's scan reads no log unless one was
written since, and a rewrite that keeps the size (a shipper's corrected re-delivery) is still found. Manifests
written before the digests were recorded (sizes only) are compared by size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from krone_jobs.manifests import file_sha256, read_manifest
from krone_jobs.partitions import dated_files, day_partitions, latest_before, partition_dir, raw_files, stage_dir

LATE_WINDOW_DAYS = 7
"""How many days before its own a parse run looks at for stale partitions (``krone status`` looks at all)."""
UNSEALED = "unsealed"
"""The content id of a partition without a manifest: not compared."""


def content_id(folder: Path) -> str | None:
    """A partition's content, as one hash of its manifest's file hashes; ``None`` where there is no partition,
    :data:`UNSEALED` where it has no manifest (or one that cannot be read)."""
    if not folder.is_dir():
        return None
    try:
        manifest = read_manifest(folder)
    except ValueError:
        return UNSEALED
    if manifest is None:
        return UNSEALED
    return json_digest({name: f["sha256"] for name, f in manifest["files"].items()})


def json_digest(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys): one id for a mapping of ids."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def content_number(folder: Path) -> float | None:
    """:func:`content_id` as a number a ``run_metrics`` row can hold (its first 52 bits, exact in a double);
    ``None`` where there is no partition or no manifest."""
    found = content_id(folder)
    return None if found in (None, UNSEALED) else float(int(found[:13], 16))  # type: ignore[index]


def scored_from_older(scored: dict[str, float], root: Path, source: str) -> list[str]:
    """Days whose score run (``scored``: the :func:`content_number` of the sessions it read, by day) read
    sessions that have been written anew since: its reports are of rows that are gone. A day whose sessions are
    gone (retention) or were never sealed is not."""
    return sorted(dt for dt, number in scored.items()
                  if (now := content_number(partition_dir(root, "sessions", source, dt))) is not None and now != number)


def _file_id(path: Path) -> str | None:
    return file_sha256(path) if path.is_file() else None


def inputs(root: Path, *, partitions: Iterable[Path] = (), files: Iterable[Path | None] = (),
           raw: Iterable[Path] | None = None, seed: tuple[Path, Path | None] | None = None) -> dict[str, Any]:
    """What a stage read, for its manifest: ``partitions`` by content id, state ``files`` by SHA-256 (``None``:
    there was none), and for the parse stage the day's ``raw`` log files by size, modification time and digest
    (the whole list: a file delivered later is then one it did not read) and its ``seed``: (the miner states'
    folder, the newest state before the day it was seeded from, or ``None``), so that a state written later for
    a day in between (a backfill of earlier days) is one it was not seeded from. Paths are kept relative to
    ``root``, so a moved data root keeps its lineage."""
    read: dict[str, Any] = {"partitions": {_rel(root, p): content_id(p) for p in partitions},
                            "files": {_rel(root, p): _file_id(p) for p in files if p is not None}}
    if raw is not None:
        read["raw"] = {_rel(root, p): _fingerprint(p) for p in raw}
    if seed is not None:
        folder, used = seed
        read["seed"] = {"folder": _rel(root, folder), "file": _rel(root, used) if used is not None else None}
    return read


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _fingerprint(path: Path) -> dict[str, Any] | None:
    """A raw file as the parse found it: size, modification time (ns) and digest (``None`` where it cannot be
    read: the parse names it); ``None`` where it is gone (a link to a rotated-away file)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _readable_sha256(path)}


def _readable_sha256(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


def _raw_change(path: Path, recorded: Any) -> str | None:
    """How the raw file ``path`` differs from the ``recorded`` fingerprint (or bare size, as manifests
    recorded before digests hold): ``"resized"``, ``"rewritten"`` (same size, other bytes) or ``None``."""
    try:
        stat = path.stat()
    except OSError:
        return None
    size = recorded.get("size") if isinstance(recorded, dict) else recorded
    if size != stat.st_size:
        return "resized"
    if not isinstance(recorded, dict) or recorded.get("sha256") is None or recorded.get("mtime_ns") == stat.st_mtime_ns:
        return None
    now = _readable_sha256(path)
    return "rewritten" if now is not None and now != recorded["sha256"] else None


def _changed(what: str, recorded: str | None, now: str | None) -> str | None:
    """Why an input that was ``recorded`` and is ``now`` makes a partition stale, or ``None``. An input removed
    since does not (retention removes a day's inputs with or before it; nothing newer is left to build from)."""
    if now is None or UNSEALED in (recorded, now) or recorded == now:
        return None
    return f"{what} was written after it" if recorded is None else f"{what} was written anew after it"


def _raw_changes(root: Path, recorded: dict[str, Any], raw: Iterable[Path]) -> list[str]:
    """Raw files delivered, resized or rewritten since the parse. Files removed since are not: raw logs are
    removed on purpose (retention, log shippers) without changing what was parsed from them; nor is ``X.gz``
    where ``X`` was read and is gone (compressed in place)."""
    now = {_rel(root, p): p for p in raw}
    compressed = {f"{name}.gz" for name in recorded.keys() - now.keys()}
    added = sorted(now.keys() - recorded.keys() - compressed)
    changed = {k: _raw_change(now[k], recorded[k]) for k in sorted(recorded.keys() & now.keys())}
    found = []
    for paths, how in ((added, "delivered after it was parsed"),
                       ([k for k, c in changed.items() if c == "resized"], "changed size after it was parsed"),
                       ([k for k, c in changed.items() if c == "rewritten"],
                        "rewritten after it was parsed (same size, other content)")):
        if paths:
            shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
            found.append(f"{len(paths)} raw file{'s' if len(paths) > 1 else ''} {how}: {shown}")
    return found


def stale_reasons(root: Path, folder: Path, source: str, dt: str) -> list[str]:
    """Why the partition ``folder`` (of ``source``, day ``dt``) no longer matches its inputs; empty where it
    does, or where its manifest records none."""
    recorded = _recorded_inputs(folder)
    if recorded is None:
        return []
    changes = [_changed(rel, was, content_id(root / rel))
               for rel, was in sorted(recorded.get("partitions", {}).items())]
    changes += [_changed(rel, was, _file_id(root / rel)) for rel, was in sorted(recorded.get("files", {}).items())]
    found = [c for c in changes if c is not None]
    if isinstance(recorded.get("raw"), dict):
        found += _raw_changes(root, recorded["raw"], raw_files(root, source, dt))
    if isinstance(recorded.get("seed"), dict):
        found += _seed_changes(root, recorded["seed"], dt)
    return found


def _recorded_inputs(folder: Path) -> dict[str, Any] | None:
    """The inputs a partition's manifest records; ``None`` without them (a damaged manifest is the readers' and
    ``--check``'s to name)."""
    try:
        manifest = read_manifest(folder)
    except ValueError:
        return None
    recorded = (manifest or {}).get("inputs")
    return recorded if isinstance(recorded, dict) else None


def _seed_changes(root: Path, seed: dict[str, Any], dt: str) -> list[str]:
    """A miner state newer than the one the day was seeded from, but still before the day: a day in between
    (or before the first) parsed afterwards. A seed removed since (retention) does not count."""
    newest = latest_before(root / seed["folder"], dt)
    now = _rel(root, newest) if newest is not None else None
    if now is None or now == seed.get("file") or (seed.get("file") or "") > now:
        return []
    was = f"seeded from {seed['file']}" if seed.get("file") else "parsed with no miner state before it"
    return [f"it was {was}, and {now} was written after it (a day before it parsed later)"]


@dataclass(frozen=True)
class Stale:
    """A partition whose inputs changed since it was written, and how."""

    dt: str
    partition: str
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.partition} is stale: {'; '.join(self.reasons)}"


def stale_partitions(root: Path, source: str, *, since: str = "", before: str = "9999-12-31") -> list[Stale]:
    """Every partition of ``source`` (stages and open sessions) of the days ``since <= dt < before`` whose inputs
    changed since it was written, by day."""
    found = [Stale(dt, _rel(root, folder), tuple(reasons)) for dt, folder in day_partitions(root, source)
             if since <= dt < before and (reasons := stale_reasons(root, folder, source, dt))]
    return sorted(found, key=lambda s: (s.dt, s.partition))


def stale_before(root: Path, source: str, dt: str) -> list[Stale]:
    """The stale partitions of the :data:`LATE_WINDOW_DAYS` days before ``dt``: what a parse run of ``dt`` looks
    at, so that a log file delivered for a day already parsed is said the next night, in Airflow too."""
    since = (date.fromisoformat(dt) - timedelta(days=LATE_WINDOW_DAYS)).isoformat()
    return stale_partitions(root, source, since=since, before=dt)


def parsed_before(root: Path, source: str, dt: str) -> list[Stale]:
    """The parsed partitions of days after ``dt`` that were parsed before a day up to ``dt`` was (a backfill of
    earlier days): not seeded from its miner state, they are stale from there on."""
    found = []
    for day, folder in dated_files(stage_dir(root, "parsed", source)).items():
        recorded = _recorded_inputs(folder) if day > dt else None
        if recorded is not None and isinstance(recorded.get("seed"), dict):
            if reasons := _seed_changes(root, recorded["seed"], day):
                found.append(Stale(day, _rel(root, folder), tuple(reasons)))
    return found
