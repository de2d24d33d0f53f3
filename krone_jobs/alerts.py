"""Alerts: a night's digest and a failed task, sent where the operators look (mail, chat, a pager, a webhook).

One library, Apprise, reaches about a hundred services, each addressed by a URL (``mailto://``, ``slack://``,
``msteams://``, ``pagerduty://``, ``json://`` for a plain webhook, ...). The targets come from the Airflow
connection ``krone_alerts`` (type ``apprise``: the Apprise provider's format, ``{"path": URL, "tag": ...}`` or a
list of them) or, outside Airflow, from ``KRONE_ALERT_URLS`` and an Apprise configuration file
``KRONE_ALERT_CONFIG`` (Apprise's TEXT lines ``tag[, tag]=URL`` or YAML). All hold credentials, so none lives in
code; with none, nothing is sent. A target Apprise cannot read is an error that names its position and scheme
(or the file's lines), never the URL (it may hold a password): an alert that silently goes nowhere is worse
than none.

Alerts are routed by the targets' tags (:data:`KINDS`): a target tagged ``failure`` gets the failures, one
tagged ``digest`` the digests, ``deadline`` the runs not done by their deadline (``"failure, deadline"``: both),
so that the pager hears of failures and the team chat of the night. A target with no tag of these (none, or
the provider example's ``alerts``, and every ``KRONE_ALERT_URLS`` target) gets every alert.

Every alert is built here from figures (counts, levels, detector names, the report's path). Text that comes
from logs (a KRONE Seq key, a reason, an error message) is redacted (:class:`~krone_jobs.llm.redact.Redactor`)
and cut to plain ASCII (``×`` as ``x``, a backtick as ``'``), with ``<`` and ``@`` replaced by look-alikes.
A log line can therefore neither carry a secret out nor address people (``@channel``, ``<!here>``) or inject
markup in a chat.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from krone_jobs.config import settings
from krone_jobs.llm.redact import Redactor
from krone_jobs.report import FAILED_DAYS_SHOWN, delivery_note

if TYPE_CHECKING:
    import apprise

DAYS_SHOWN = 20
"""Days a digest lists one by one; a catch-up over more says how many more."""
TEXT_CHARS = 300
"""The most characters of one piece of log-derived text (a reason, an error) an alert carries."""
STALE_KEYS = ("stale_earlier_days", "stale_later_days")
"""Report figures of days whose partitions are behind their inputs (a log delivered late, a backfill): a digest
is sent for them as for anomalies, since their reports stand on incomplete data until they are run again."""
KINDS = ("failure", "digest", "deadline")
"""What an alert is about, and the target tags that route it."""
ALWAYS = "always"
"""Apprise's tag of a target that every alert reaches, whatever it is about: given to those with no tag of
:data:`KINDS`."""

_LOOK_ALIKES = str.maketrans({"<": "\u2039", "@": "\uff20", "`": "'", "\u00d7": "x", "\u2192": "->"})
_NOT_PLAIN = re.compile(r"[^A-Za-z0-9 .,:;/#=+\-_()'\"%\[\]{}|!?>\u2039\uff20]")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Alert:
    """One message: a title, a plain-text body, what it is about (:data:`KINDS`, the tag it is routed by) and
    its level (Apprise's notify types: ``info``, ``success``, ``warning``, ``failure``; a service shows them as
    colours or icons)."""

    title: str
    body: str
    about: str
    level: str = "info"


class AlertNotSent(RuntimeError):
    """A target did not take an alert (service down, credentials refused)."""


def safe_text(value: object, limit: int = TEXT_CHARS, *, redact: bool = True) -> str:
    """``value`` fit to leave the machine in an alert: redacted (unless ``redact`` is false: for what is ours,
    such as the link to a task's log, which the redactor would take for an address and a key), on one line,
    plain characters only, at most ``limit`` characters."""
    text = _SPACE.sub(" ", Redactor()(str(value)) if redact else str(value)).strip().translate(_LOOK_ALIKES)
    text = _NOT_PLAIN.sub("?", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def targets(entries: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
            urls: str | None = None, config: str | None = None) -> apprise.Apprise | None:
    """The alert targets: the ``entries`` of a ``krone_alerts`` connection when given, else those of ``urls``
    (default ``KRONE_ALERT_URLS``) and of the Apprise configuration file ``config`` (default
    ``KRONE_ALERT_CONFIG``); ``None`` when none is named. Raises ``ValueError`` for a target Apprise cannot
    read."""
    import apprise
    from apprise.utils.parse import parse_list, parse_urls

    if isinstance(entries, Mapping):
        entries = [entries]
    found = apprise.Apprise()
    if entries is None:
        urls = urls if urls is not None else settings().alert_urls
        entries = [{"path": url} for url in parse_urls(urls or "")]
        config = config if config is not None else settings().alert_config
        for service in _configured(config) if config else []:
            found.add(service)
    for n, entry in enumerate(entries, 1):
        path = entry.get("path") if isinstance(entry, Mapping) else None
        kinds = sorted(set(parse_list(entry.get("tag"))) & set(KINDS)) if isinstance(entry, Mapping) else []
        if not isinstance(path, str) or not found.add(path, tag=kinds or ALWAYS):
            raise ValueError(f"alert target {n} of {len(entries)} ({_scheme(path)}://...) is not a URL Apprise can "
                             "send to (https://github.com/caronc/apprise/wiki lists them)")
    return found if len(found) else None


def _configured(config: str) -> list[Any]:
    """The targets of an Apprise configuration file, those without a tag of :data:`KINDS` tagged to get every
    alert. A file that cannot be read, holds no target or has entries Apprise skipped (it only logs them) is an
    error naming those entries' lines, never their text (a URL may hold a password)."""
    import logging

    import apprise

    with apprise.LogCapture(level=logging.WARNING) as said:
        loaded = apprise.AppriseConfig()
        services = loaded.services() if loaded.add(config) else []
    where = config if "://" not in config or config.startswith("file://") else f"{_scheme(config)}://..."
    problems = [line for line in said.getvalue().splitlines() if line.strip()]
    if problems or not services:
        lines = sorted({int(n) for n in re.findall(r"\bline (\d+)", "\n".join(problems))})
        what = ("cannot be read or holds no target" if not services else
                "has entries Apprise could not read" + (f" (line {', '.join(map(str, lines))})" if lines else ""))
        raise ValueError(f"the alert configuration {where} (KRONE_ALERT_CONFIG) {what}: "
                         "https://github.com/caronc/apprise/wiki/config says how to write one")
    for service in services:
        if not set(service.tags) & set(KINDS):
            service.tags.add(ALWAYS)
    return list(services)


def _scheme(path: object) -> str:
    return path.split("://", 1)[0] if isinstance(path, str) and "://" in path else "no scheme"


def send(alert: Alert, to: apprise.Apprise) -> int:
    """Send ``alert`` to the targets it is routed to; returns how many took it (0: none is meant to get it).
    Raises :class:`AlertNotSent` when any did not take it."""
    from apprise import NotifyFormat

    result = to.notify(body=alert.body, title=alert.title, notify_type=alert.level, body_format=NotifyFormat.TEXT,
                       tag=alert.about)
    if not result and not result.failed_count:  # no target is tagged for this kind of alert
        return 0
    if not result:
        raise AlertNotSent(f"alert {alert.title!r} reached {result.success_count} of {len(to)} target(s): "
                           f"{result.failed_count} failed (Apprise's log says which)")
    return int(result.success_count)


def digest(reports: Iterable[Mapping[str, Any]], *, expected: int | None = None,
           policy: str | None = None) -> Alert | None:
    """The digest of a night's reports (``pipeline.night_report`` results: ``source``, ``dt``, ``path`` and
    ``figures``), or ``None`` when ``policy`` (default ``KRONE_ALERT_DIGEST``) says there is nothing to send.
    ``expected``: how many days the run set out to report, so that those that did not (failed, skipped) are
    counted."""
    policy = policy or settings().alert_digest
    reports = sorted(reports, key=lambda r: (str(r.get("dt")), str(r.get("source"))))
    anomalous = sum(int(r["figures"].get("anomalies") or 0) for r in reports)
    failed_before = any(r["figures"].get("earlier_days_failed") for r in reports)
    stale = any(r["figures"].get(key) for r in reports for key in STALE_KEYS)
    if policy == "never" or (policy == "anomalies" and not anomalous and not failed_before and not stale):
        return None
    lines = [line for r in reports[:DAYS_SHOWN] for line in _day_lines(r)]
    if len(reports) > DAYS_SHOWN:
        lines.append(f"... and {len(reports) - DAYS_SHOWN} more day(s)")
    if expected is not None and expected > len(reports):
        lines.append(f"{expected - len(reports)} of {expected} day(s) have no report from this run (failed or "
                     "skipped: the run says which)")
    days = {(r.get("source"), r.get("dt")) for r in reports}
    what = f"{anomalous:,} anomalous session{'s' if anomalous != 1 else ''}" if anomalous else "no anomalous sessions"
    where = (f"{safe_text(reports[0].get('source'), 64)} {safe_text(reports[0].get('dt'), 10)}" if len(days) == 1
             else f"{len(days)} days")
    return Alert(title=f"krone: {what}, {where}", body="\n".join(lines) or "no day was reported", about="digest",
                 level="warning" if anomalous or failed_before or stale else "info")


def _day_lines(report: Mapping[str, Any]) -> list[str]:
    f = report["figures"]
    levels = ", ".join(f"{level} {n:,}" for level, n in (f.get("per_level") or {}).items())
    lines = [f"{safe_text(report.get('source'), 64)} {safe_text(report.get('dt'), 10)}: {_count(f.get('sessions'))} "
             f"sessions, {_count(f.get('anomalies'))} anomalous ({levels}); new templates "
             f"{_count(f.get('new_templates'))}, quarantined lines {_count(f.get('quarantined'))}; report: "
             f"{safe_text(report.get('path'))}"]
    if read := delivery_note(f).removeprefix(", "):
        lines.append(f"  read: {safe_text(read, 600)}")
    if top := f.get("top_chunks"):
        first = top[0]
        lines.append(f"  top: {safe_text(first.get('level'), 16)} {safe_text(first.get('kseq_key'), 120)} "
                     f"({safe_text(first.get('detector'), 32)}): {safe_text(first.get('reason'))}")
    if failed := f.get("earlier_days_failed"):
        shown = ", ".join(f"{safe_text(d.get('dt'), 10)} ({safe_text(d.get('error'), 120)})"
                          for d in failed[:FAILED_DAYS_SHOWN])
        lines.append(f"  earlier days whose score failed for good: {shown}"
                     + (" ..." if len(failed) > FAILED_DAYS_SHOWN else "") + " (`krone status` says what to do)")
    return lines


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int | float) else "n/a"


def failure(task: str, error: object, *, run: str | None = None, day: str | None = None,
            attempt: str | None = None, log_url: str | None = None) -> Alert:
    """The alert for a failed ``task`` (``dag.task`` or a command): its error, and where to look."""
    lines = [f"{safe_text(task, 200)} failed" + (f" for {safe_text(day, 40)}" if day else "")
             + (f" ({safe_text(attempt, 40)})" if attempt else ""),
             f"error: {safe_text(_error_text(error), 600)}"]
    lines += [f"run: {safe_text(run, 200, redact=False)}"] if run else []
    lines += [f"log: {safe_text(log_url, 500, redact=False)}"] if log_url else []
    return Alert(title=f"krone: {safe_text(task, 200)} failed" + (f", {safe_text(day, 40)}" if day else ""),
                 body="\n".join(lines), about="failure", level="failure")


def _error_text(error: object) -> str:
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return str(error) if error else "no error recorded"


def late(dag_id: str, run_id: str, *, state: str, queued: str, deadline: str, link: str) -> Alert:
    """The alert for a run still not done at its deadline: what it may be waiting for, and where to look."""
    return Alert(title=f"krone: {safe_text(dag_id, 200)} not done by its deadline",
                 body="\n".join([
                     f"{safe_text(dag_id, 200)} run {safe_text(run_id, 200, redact=False)} is {safe_text(state, 20)}, "
                     f"queued at {safe_text(queued, 40)}, due by {safe_text(deadline, 40)} (KRONE_RUN_DEADLINE_HOURS)",
                     "it may wait for late logs (raw_ready, window_ready), retry a task, or find no worker free",
                     f"run: {safe_text(link, 500, redact=False)}"]),
                 about="deadline", level="warning")
