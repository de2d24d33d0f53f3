"""Whether a day's raw logs are all there, so that a nightly run does not parse a day still being delivered.

A scheduled run for day D starts as D ends, but log shippers deliver the last hours' files minutes to hours
later. A day parsed before they land is parsed short: sessions running at its end look cut off, its miner
state lacks the day's templates, and when the files arrive that day and every day after it are stale
(:mod:`krone_jobs.lineage`) until someone reruns them all. So the ``raw_ready`` sensor of
``krone_parse_<source>`` waits until this check says the day is ready:

* its **marker** (``KRONE_RAW_MARKER``, default ``_SUCCESS``: the Hadoop/Spark convention that many shippers and
  object-store sinks follow) is in the raw partition: the shipper says the day is complete, with log files or
  without (a source that logged nothing that day);
* or, unless ``KRONE_RAW_WAIT_FOR_MARKER`` is set, the partition holds a log file and the day ended
  ``KRONE_RAW_GRACE_MINUTES`` ago (default 60) on the log's clock: midnight in the format's ``timezone``, so a
  source in New York is waited for until 06:00 UTC in winter, not 01:00.

A day with neither a log file nor a marker is never ready: the sensor fails the day when it times out (at
once, for a day due longer ago than it waits: a catch-up over days nobody delivered), and the later days wait
for it (``depends_on_past``), where a parse would have read an empty day and closed every session still
running. The parse stage refuses such a day too (:class:`NoLogFilesError`), from the command
line as well: a raw folder named wrong or a shipper that delivered nothing must not pass as a quiet day.

The check only lists the partition (``raw_files``: a ``stat`` per file); it reads no log.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from krone_jobs.config import settings
from krone_jobs.partitions import RAW_SUFFIXES, ignored_raw_files, raw_dir, raw_files
from krone_jobs.timestamps import day_end_utc


class NoLogFilesError(FileNotFoundError):
    """A raw partition without a log file to parse: none delivered (no marker either), or only files not
    named as log files. An empty day would hide a naming mistake or a shipper that did not deliver."""


@dataclass(frozen=True)
class RawReadiness:
    """The verdict on one day's raw partition, with the reason a person reads in the sensor's log."""

    ready: bool
    files: int
    marker: bool
    reason: str
    due: str
    """When the grace after the day's end is over (ISO 8601, UTC): a day still not ready long after it will not
    become ready by itself, so the sensor gives up on it at once instead of waiting its whole timeout."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def raw_readiness(root: Path, source: str, dt: str, *, zone: str | None = None,
                  now: datetime | None = None) -> RawReadiness:
    """Whether ``raw/<source>/dt=<dt>`` is ready to parse (see the module docstring); ``zone`` is the line
    format's timezone (None: its stamps are UTC), ``now`` an aware time (default: now)."""
    config = settings()
    marker_name = config.raw_marker
    folder = raw_dir(root, source, dt)
    where = folder.relative_to(root).as_posix()
    files = len(raw_files(root, source, dt))
    marker = (folder / marker_name).is_file()
    end = day_end_utc(dt, zone).replace(tzinfo=timezone.utc)
    due = end + timedelta(minutes=config.raw_grace_minutes)
    now = now or datetime.now(timezone.utc)

    def verdict(ready: bool, reason: str) -> RawReadiness:
        return RawReadiness(ready, files, marker, f"{where}: {reason}", due.isoformat())

    if marker:
        return verdict(True, f"the marker {marker_name} is there ({files} log file(s))")
    if config.raw_wait_for_marker:
        return verdict(False, f"waiting for the marker {marker_name} (KRONE_RAW_WAIT_FOR_MARKER), {files} log file(s) "
                              "so far")
    if not files:
        return verdict(False, no_log_files(root, source, dt))
    if now < due:
        return verdict(False, f"{files} log file(s); the day {'ended' if now >= end else 'ends'} at "
                              f"{end:%Y-%m-%d %H:%M} UTC and late files are waited for until {due:%Y-%m-%d %H:%M} UTC "
                              f"(KRONE_RAW_GRACE_MINUTES), or until the marker {marker_name}")
    return verdict(True, f"{files} log file(s), {_span(now - end)} after the day ended")


def no_log_files(root: Path, source: str, dt: str) -> str:
    """What is wrong with a raw partition that holds no log file, and what to do about it."""
    folder = raw_dir(root, source, dt)
    if ignored := ignored_raw_files(root, source, dt):
        return (f"the raw partition holds {len(ignored)} file(s) and none is named *{'|*'.join(RAW_SUFFIXES)}: "
                + ", ".join(p.relative_to(root).as_posix() for p in ignored[:10]))
    where = "its folder is empty" if folder.is_dir() else f"there is no folder {folder} (data root: KRONE_DATA_ROOT)"
    return (f"no log file was delivered ({where}). Put the day's logs there; if {source} logged nothing on {dt}, "
            f"put the marker there (touch {folder / settings().raw_marker}) to parse it as an empty day")


def _span(span: timedelta) -> str:
    minutes = span.total_seconds() / 60
    return (f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h" if minutes < 2880
            else f"{minutes / 1440:,.0f} days")
