"""Timestamps of log lines: the parsers a line format names, the year of a stamp without one, and local time.

Stamps are naive ``datetime`` values on the log's own clock; a stamp with a UTC offset becomes naive UTC
(in :func:`krone_jobs.logformats.parse_line`). A ``strptime`` pattern without a year is parsed in
:data:`YEARLESS_YEAR` and moved to the year nearest its partition's day (:func:`nearest_year`); a format with
a ``timezone`` has its stamps turned into naive UTC (:func:`local_to_utc`).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache, partial
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

TimestampParser = Callable[[str], datetime]
EPOCH = datetime(1970, 1, 1)


def _strptime(fmt: str, text: str) -> datetime:
    return datetime.strptime(text, fmt)


YEARLESS_YEAR = 2000
"""The year a stamp without one is parsed in: a leap year, so ``Feb 29`` parses (in strptime's default,
1900, every Feb 29 line was quarantined as ``bad_timestamp``, failing a leap day's gate)."""
_YEAR_DIRECTIVE = re.compile(r"%[YyGcxD]")


@dataclass(frozen=True, slots=True)
class YearlessStrptime:
    """A ``strptime`` pattern without a year directive, parsed in :data:`YEARLESS_YEAR`. In strptime's own
    default, 1900, every stamp sat 126 years before its partition's day, so sessionize closed every session at
    the end of the day, one crossing midnight as two halves; the parse stage puts the year right
    (:func:`nearest_year`)."""

    pattern: str

    def __call__(self, text: str) -> datetime:
        return datetime.strptime(f"{YEARLESS_YEAR} {text}", f"%Y {self.pattern}")


def nearest_year(ts: datetime, day: date) -> datetime:
    """``ts`` moved to the year (``day``'s, the one before or after) that puts its date nearest ``day``: a
    ``Dec 31`` line in the ``Jan 1`` partition belongs to the year before. A ``Feb 29`` stamp fits only a
    leap year; with none of the three at hand it goes to the next one (the future-timestamp check then says
    that the clock is wrong)."""
    return ts.replace(year=_nearest_year(ts.month, ts.day, day))


@lru_cache(maxsize=4096)
def _nearest_year(month: int, dom: int, day: date) -> int:
    """The year for one month and day of month (cached: a day's lines share a few dates; 2.6 us a line before)."""
    years = [y for y in (day.year - 1, day.year, day.year + 1) if (month, dom) != (2, 29) or calendar.isleap(y)]
    if not years:
        return next(y for y in range(day.year + 2, day.year + 9) if calendar.isleap(y))
    return min(years, key=lambda y: abs(date(y, month, dom) - day))


@lru_cache(maxsize=64)
def zone_of(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ``ValueError`` if there is none of that name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r} (an IANA name such as 'Europe/Berlin' or 'UTC')") from exc


def local_to_utc(ts: datetime, zone: ZoneInfo) -> tuple[datetime, timedelta]:
    """Naive wall-clock ``ts`` in ``zone`` as naive UTC, and how much later the instant is if ``ts`` is the
    *second* run of an hour the clocks went back over (``timedelta(0)``: the time occurs once). Such a stamp
    is taken as the first run here; only the order of a file's lines tells the runs apart (the parse stage
    does that). A time the clocks skipped (spring forward) is taken with the offset before the change, as
    a clock left unchanged would have written it."""
    offset, later = _offsets(ts.replace(second=0, microsecond=0), zone)
    return ts - offset, later


def day_end_utc(day: str, zone: str | None) -> datetime:
    """Midnight after ``day`` on the log's clock (in ``zone``, an IANA name, when the format has one), as naive
    UTC: where its sessions are cut, and from when its log files are waited for."""
    midnight = datetime.fromisoformat(day) + timedelta(days=1)
    return local_to_utc(midnight, zone_of(zone))[0] if zone is not None else midnight


@lru_cache(maxsize=4096)
def _offsets(minute: datetime, zone: ZoneInfo) -> tuple[timedelta, timedelta]:
    """UTC offset of the first reading of a wall-clock minute, and how much later its second reading is (cached:
    a day's lines share a few thousand minutes, and clocks change on whole minutes; 3.4 us a line before)."""
    first = minute.replace(tzinfo=zone, fold=0).utcoffset()
    second = minute.replace(tzinfo=zone, fold=1).utcoffset()
    assert first is not None and second is not None
    return first, max(first - second, timedelta(0))


def hdfs_ts(text: str) -> datetime:
    """``yymmdd HHMMSS`` with strptime's ``%y`` pivot (69-99 -> 19xx); hand-rolled for speed."""
    yy = int(text[0:2])
    return datetime(yy + (1900 if yy >= 69 else 2000), int(text[2:4]), int(text[4:6]),
                    int(text[7:9]), int(text[9:11]), int(text[11:13]))


def bgl_ts(text: str) -> datetime:
    """``YYYY-MM-DD-HH.MM.SS.ffffff`` rewritten to ISO (the regex fixes the shape) for the C parser."""
    return datetime.fromisoformat(f"{text[:10]} {text[11:13]}:{text[14:16]}:{text[17:]}")


def epoch_ts(text: str) -> datetime:
    """Unix seconds (whole or fractional) as naive UTC (no local-timezone lookup, unlike ``fromtimestamp``)."""
    try:
        return EPOCH + timedelta(seconds=int(text))
    except ValueError:
        return EPOCH + timedelta(seconds=float(text))


def epoch_ms_ts(text: str) -> datetime:
    """Unix milliseconds as naive UTC."""
    return EPOCH + timedelta(milliseconds=float(text))


TIMESTAMP_KEYWORDS: dict[str, TimestampParser] = {
    "epoch": epoch_ts, "epoch_ms": epoch_ms_ts, "iso8601": datetime.fromisoformat}
"""Timestamp formats by name, besides ``strptime`` patterns: Unix seconds, Unix milliseconds and ISO 8601
(``2026-11-20T13:04:05.123Z``). A stamp with a UTC offset becomes naive UTC (see :func:`parse_line`)."""


def timestamp_parser(spec: str | TimestampParser | None) -> TimestampParser | None:
    """A parser for ``spec``: a keyword of :data:`TIMESTAMP_KEYWORDS`, a ``strptime`` pattern or a callable."""
    if spec is None or callable(spec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"timestamp format {spec!r}: give a strptime pattern, one of {sorted(TIMESTAMP_KEYWORDS)} "
                        "or a callable")
    if spec in TIMESTAMP_KEYWORDS:
        return TIMESTAMP_KEYWORDS[spec]
    if not _YEAR_DIRECTIVE.search(spec.replace("%%", "")):
        return YearlessStrptime(spec)
    return partial(_strptime, spec)
