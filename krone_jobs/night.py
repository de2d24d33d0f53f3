"""``krone night``: one source's nightly chain for a day or a range of days, in date order, without Airflow.

For each day it runs what a ``krone_parse_<source>`` DAG runs (parse and its gate, sessionize and its gate,
hierarchy, KRONE Seqs) and, when ``krone-<source>`` has a champion, what ``krone_score`` runs (score, night
report): the same :mod:`krone_jobs.pipeline` functions, so run_metrics, reports and the verdict cache are
exactly those of the DAGs. Days run in order because sessionize carries a day's open sessions into the
next one, holding the source's lock (:mod:`krone_jobs.source_lock`) from the first to the last, so that a
second run of the source waits for this one whole instead of interleaving with it day by day. The first
failing day stops the run (the next day would read its carry-over), and as every stage overwrites its own
partition, running the range again resumes cleanly. With ``KRONE_REPARSE_LATE``, a range whose week before
has stale days (a log file delivered after its day was parsed) starts at the earliest of them. A score that
fails for good (``pipeline.permanent_failures``: the reports gate, a damaged sessions file) does not stop it:
no later day reads a day's score, so, as under Airflow, it holds up no other day; it is said, recorded for the
catch-up (:mod:`krone_jobs.score_failures`) and in the day's result (``score_failed``), and ``krone night``
exits 1.
When it scores, it ends by naming the earlier days that have KRONE Seqs but no score run
(``pipeline.backlog``: days parsed before the first model, a score that failed), which ``krone score
--unscored`` takes up; ``krone_score`` scores them on its own. For a backfill before the first training, or
on a machine where Airflow is not (yet) deployed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any


def day_range(start: str, end: str | None) -> list[str]:
    """Every day from ``start`` to ``end`` (inclusive; ``None``: ``start`` only), as YYYY-MM-DD."""
    first = date.fromisoformat(start)
    last = date.fromisoformat(end) if end else first
    if last < first:
        raise ValueError(f"--end {end} is before --date {start}")
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def run_night(
    source: str, fmt: str, start: str, end: str | None = None, *, data_root: str | Path | None = None,
    score: bool = True, say: Callable[[str], None] = print, **parse_options: Any,
) -> list[dict[str, Any]]:
    """Parse (and score, if asked and a champion exists) every day of the range; one line per step.
    ``parse_options`` go to the parse job (``max_quarantine_ratio``, ``partitions``)."""
    from krone_jobs import pipeline
    from krone_jobs.config import settings
    from krone_jobs.source_lock import source_lock

    days = day_range(start, end)
    scoring = score and pipeline.has_champion(source)
    if score and not scoring:
        say(f"no champion for krone-{source} yet: parsing only (then `krone train --source {source} --end "
            f"{days[-1]}`)")
    root = Path(data_root) if data_root is not None else settings().data_root
    with source_lock(root, source, f"night {days[0]}" + (f"..{days[-1]}" if len(days) > 1 else "")):
        if settings().reparse_late and (first := pipeline.late_rerun_from(source, days[0], fmt, data_root=data_root)):
            say(f"{source}: days from {first} are stale (a log file delivered after they were parsed?): parsing them "
                "again first (KRONE_REPARSE_LATE)")
            days = day_range(first, days[-1])
        results = [_night_day(source, dt, fmt, data_root=data_root, scoring=scoring, say=say, **parse_options)
                   for dt in days]
    if scoring and (earlier := pipeline.backlog(source, before=days[0], data_root=data_root)):
        say(f"{len(earlier)} earlier day(s) of {source} have KRONE Seqs but no score run ({earlier[0]} .. "
            f"{earlier[-1]}): `krone score --source {source} --unscored` scores them (krone_score takes them up "
            "on its next run of this source)")
    return results


def _night_day(source: str, dt: str, fmt: str, *, data_root: str | Path | None, scoring: bool,
               say: Callable[[str], None], **parse_options: Any) -> dict[str, Any]:
    """One day of :func:`run_night`: its parse stages, and its score and report when ``scoring``."""
    from krone_jobs import pipeline
    from krone_jobs.report import delivery_note, parse_figures, quarantine_note

    ready = pipeline.raw_ready(source, dt, fmt, data_root=data_root)
    if not ready["ready"] and ready["files"]:  # no files at all: the parse stage says what to do
        say(f"{source} {dt}: parsed before its logs are all there ({ready['reason']}); a file delivered "
            "later makes the day stale (krone status names it)")
    out: dict[str, Any] = pipeline.parse_day(source, dt, fmt, data_root=data_root, **parse_options)
    p, s, k = (out[step]["metrics"] for step in ("parse", "sessionize", "kseqs"))
    figures = parse_figures(p)
    aside = f"{p['quarantined']:,} quarantined{quarantine_note(figures)}"
    if flood := p.get("quarantine_reasons", {}).get("template_flood", 0):
        aside += (f"; {flood:,} of them unique text on a day that would open more than KRONE_MAX_NEW_TEMPLATES "
                  "templates (template_flood)")
    if p["long_session_keys"]:
        aside += f"; {p['long_session_keys']:,} with a session key shortened"
    aside += delivery_note(figures)
    cut, split = s["cut_sessions"], s["split_sessions"]
    still = f"{s['open_sessions']:,} open" + (f", {cut:,} cut at the maximum session span" if cut else "")
    still += f", {split:,} split into pieces of the maximum session size" if split else ""
    say(f"{source} {dt}: {p['raw_lines']:,} lines ({aside}), {p['new_templates']:,} new "
        f"templates, {s['sessions']:,} sessions closed ({still}), {k['chunks']:,} KRONE Seqs")
    r = out["retention"]["metrics"]
    if r["removed"] or r["failed"]:
        say(f"  retention: {r['removed']:,} entries before {r['oldest_kept']} removed "
            f"({r['bytes_freed'] / 2**20:,.1f} MiB)" + (f"; {r['failed']:,} could not be: {r['errors'][0]}"
                                                         if r["failed"] else ""))
    if scoring:
        try:
            out["score"] = pipeline.score_day(source, dt, data_root=data_root)
        except pipeline.permanent_failures() as exc:  # the next days' parse does not read a day's score
            out["score_failed"] = f"{type(exc).__name__}: {exc}"
            say(f"  {source} {dt}: the score failed for good, the range goes on: {out['score_failed']}")
        else:
            out["report"] = pipeline.night_report(source, dt, data_root=data_root)
            say(f"  {out['report']['summary'].splitlines()[0]}")
    return out
