from __future__ import annotations

from datetime import date, datetime, timedelta

from krone_jobs.timestamps import YearlessStrptime, local_to_utc, nearest_year, timestamp_parser, zone_of


def test_a_pattern_without_a_year_parses_in_a_leap_year_and_moves_to_its_day() -> None:
    for pattern, yearless in (("%d/%m/%y %H:%M", False), ("%Y%j", False), ("%c", False), ("%%Y %d %H", True)):
        assert isinstance(timestamp_parser(pattern), YearlessStrptime) is yearless, pattern
    moved = {  # (stamp, partition day) -> year: the nearest to the day
        ("12-31 23:59", date(2028, 1, 1)): 2027, ("01-01 00:01", date(2027, 12, 31)): 2028,
        ("06-15 12:00", date(2026, 6, 15)): 2026, ("02-29 08:00", date(2028, 2, 29)): 2028,
        ("02-29 08:00", date(2026, 6, 1)): 2028, ("02-29 08:00", date(2098, 6, 1)): 2104,  # 2100 is no leap year
    }
    for (text, day), year in moved.items():
        assert nearest_year(datetime.strptime(f"2000-{text}", "%Y-%m-%d %H:%M"), day).year == year, (text, day)


def test_local_stamps_are_read_as_utc_and_a_repeated_hour_says_how_much_later_its_second_run_is() -> None:
    """Berlin: summer time ends on 2026-10-25 at 03:00 (02:00-03:00 runs twice) and starts on 2026-03-29 at 02:00
    (02:00-03:00 is skipped: read with the offset before, as an unchanged clock writes it)."""
    berlin = zone_of("Europe/Berlin")
    cases = {"2026-10-25 01:59:59": ("2026-10-24 23:59:59", 0), "2026-10-25 02:30:00": ("2026-10-25 00:30:00", 3600),
             "2026-10-25 03:00:00": ("2026-10-25 02:00:00", 0), "2026-03-29 02:30:00": ("2026-03-29 01:30:00", 0),
             "2026-03-29 03:00:00": ("2026-03-29 01:00:00", 0), "2026-07-01 12:00:00": ("2026-07-01 10:00:00", 0)}
    for local, (utc, later) in cases.items():
        assert local_to_utc(datetime.fromisoformat(local), berlin) == (datetime.fromisoformat(utc),
                                                                        timedelta(seconds=later)), local
