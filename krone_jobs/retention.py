"""Retention: a source's day partitions older than a window are removed, so a nightly pipeline's disk stays bounded.

Off unless configured (``KRONE_RETAIN_DAYS``; ``krone retention --keep-days``): nothing is ever deleted by
default. With ``keep_days = N``, a run for day ``D`` keeps the days ``D - N + 1 .. D`` (and any later day) and
removes, for its source only:

* the stage partitions ``parsed/``, ``quarantine/``, ``sessions/``, ``kseqs/`` (``<stage>/source=S/dt=...``),
  the quality results ``quality/<suite>/source=S/dt=...`` and the night reports ``reports/S/dt=...``;
* the dated state ``state/S/{templates,open,hierarchy}/dt=...`` *except the newest entry before the window*:
  the oldest kept day is rerun from the miner state, open sessions and hierarchy of the day before it, so a
  rerun of any kept day gives what it gave (``tests/test_retention.py`` reruns it and compares);
* raw logs ``raw/S/dt=...`` only with a raw window of their own (``KRONE_RETAIN_RAW_DAYS``): they are the
  input everything else can be rebuilt from, and log shippers often manage them;
* staging a killed job left beside those entries (``_tmp_...``, ``_old_...``: a task that hit its timeout,
  the OOM killer) that nothing touched for :data:`LEFTOVER_AGE_S`, whatever its day. Readers skip these names,
  so they were never data, only disk that no run would free.

Windows shorter than 2 days are refused: sessionize carries open sessions from the day before, and the
parse stage reads the day before's raw files to find a log that is never rotated. The warehouse (reports,
cache, metrics) and MLflow keep their history; their retention is the database's and the registry's.

Only entries named ``dt=YYYY-MM-DD`` in those folders are touched, never by following a link: a partition that
is a symbolic link loses the link, not what it points to. An entry that cannot be removed (permissions, a busy
mount) is counted in ``failed`` with its reason and the rest are removed: retention is housekeeping, and it
never stops a night (the DAG task fails after recording, without holding up the next day).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from krone_jobs.partitions import STAGES, check_date, check_source, dated_files, stage_dir, state_dir
from krone_jobs.source_lock import source_lock

STATE_FOLDERS = ("templates", "open", "hierarchy")
MIN_DAYS = 2
LEFTOVER_PREFIXES = ("_tmp_", "_old_")  # what partitions.temp_dir_for, swap_in and atomic_write_text name
LEFTOVER_AGE_S = 86_400.0
"""Staging untouched for this long is a killed job's: a job still writing touches it within minutes, and a task
times out after 6 hours."""


@dataclass(frozen=True, slots=True)
class Removal:
    """One dated entry to remove: what it is (``kind``), where, and how many bytes it holds."""

    kind: str
    dt: str
    path: Path
    bytes: int


@dataclass
class RetentionMetrics:
    """What one retention run did, for ``run_metrics`` (numbers) and the task's XCom (the paths too)."""

    source: str
    dt: str
    keep_days: int | None
    keep_raw_days: int | None
    dry_run: bool = False
    removed: int = 0
    bytes_freed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    oldest_kept: str | None = None
    paths: list[str] = field(default_factory=list)
    """What was removed (with ``dry_run``: what would be), oldest first."""
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    """Entries the system would not let go (``path: reason``); the others are removed all the same."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _window_start(dt: str, keep_days: int, what: str) -> str:
    if keep_days < MIN_DAYS:
        raise ValueError(f"{what} must be at least {MIN_DAYS} days (the day before is read), not {keep_days}")
    return (date.fromisoformat(dt) - timedelta(days=keep_days - 1)).isoformat()


def _size(path: Path) -> int:
    """Bytes under ``path`` (a link counts as nothing: it is removed, not what it points to; a file that went
    away meanwhile counts as nothing too)."""
    if path.is_symlink():
        return 0
    files = [path] if not path.is_dir() else [Path(folder) / f for folder, _, names in os.walk(path) for f in names]
    total = 0
    for file in files:
        with contextlib.suppress(OSError):
            total += file.lstat().st_size
    return total


def _older(folder: Path, start: str, kind: str, *, keep_newest: bool = False) -> list[Removal]:
    """Entries of ``folder`` before ``start``; with ``keep_newest``, the newest of them stays."""
    old = [(d, p) for d, p in dated_files(folder).items() if d < start]
    if keep_newest:
        old = old[:-1]
    return [Removal(kind, d, p, _size(p)) for d, p in old]


def _leftovers(folder: Path, now: float) -> list[Removal]:
    """Killed jobs' staging in ``folder`` that nothing touched for :data:`LEFTOVER_AGE_S` (newest time inside)."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(LEFTOVER_PREFIXES) and not path.is_symlink():
            inside = [Path(d) / n for d, dirs, files in os.walk(path) for n in dirs + files] if path.is_dir() else []
            with contextlib.suppress(OSError):
                if max(p.lstat().st_mtime for p in [path, *inside]) < now - LEFTOVER_AGE_S:
                    found.append(Removal("leftover", "", path, _size(path)))
    return found


def plan_retention(root: Path, source: str, dt: str, keep_days: int, keep_raw_days: int | None = None) -> list[Removal]:
    """What a retention run for ``source`` on day ``dt`` removes (see the module docstring), oldest first."""
    check_source(source)
    check_date(dt)
    start = _window_start(dt, keep_days, "the retention window")
    quality = root / "quality"
    suites = sorted(p.name for p in quality.iterdir() if p.is_dir() and not p.is_symlink()) if quality.is_dir() else []
    folders = [(stage_dir(root, stage, source), stage, False) for stage in STAGES]
    folders += [(stage_dir(quality, suite, source), f"quality/{suite}", False) for suite in suites]
    folders += [(root / "reports" / source, "reports", False)]
    folders += [(state_dir(root, source) / name, f"state/{name}", True) for name in STATE_FOLDERS]
    found = [r for folder, kind, keep_newest in folders for r in _older(folder, start, kind, keep_newest=keep_newest)]
    if keep_raw_days is not None:
        found += _older(root / "raw" / source, _window_start(dt, keep_raw_days, "the raw retention window"), "raw")
    now = time.time()
    found += [r for folder in [*(f for f, _, _ in folders), state_dir(root, source)] for r in _leftovers(folder, now)]
    return sorted(found, key=lambda r: (r.dt, r.kind))


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def run_retention(source: str, dt: str, *, data_root: Path, keep_days: int | None,
                  keep_raw_days: int | None = None, dry_run: bool = False) -> RetentionMetrics:
    """Remove what :func:`plan_retention` names (nothing with ``dry_run``, or when ``keep_days`` is None),
    holding the source's lock (a dry run does not wait for it)."""
    t0 = time.perf_counter()
    metrics = RetentionMetrics(source, dt, keep_days, keep_raw_days, dry_run)
    if keep_days is None:
        return metrics
    with contextlib.nullcontext() if dry_run else source_lock(data_root, source, f"retention {dt}"):
        for r in plan_retention(data_root, source, dt, keep_days, keep_raw_days):
            if not dry_run:
                try:
                    _remove(r.path)
                except OSError as exc:  # housekeeping: one stuck entry must not stop the rest, nor the night
                    metrics.failed += 1
                    metrics.errors.append(f"{r.path}: {exc.strerror or exc}")
                    continue
            metrics.removed += 1
            metrics.bytes_freed += r.bytes
            metrics.by_kind[r.kind] = metrics.by_kind.get(r.kind, 0) + 1
            metrics.paths.append(str(r.path))
    metrics.oldest_kept = _window_start(dt, keep_days, "the retention window")
    metrics.seconds = time.perf_counter() - t0
    return metrics
