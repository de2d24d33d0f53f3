"""``krone status``: where each source stands, for an operator without the Airflow UI (``krone night`` users) or
before a backfill: which days are parsed (and which raw days are not yet, with whether their logs are all
there: :mod:`krone_jobs.raw_readiness`), which are scored, which wait for a model, which model is champion;
which partitions are not what their run wrote (:mod:`krone_jobs.manifests`), which are stale and which days
were scored from sessions written anew since (:mod:`krone_jobs.lineage`), which days' score failed for good
and are set aside by the catch-up (:mod:`krone_jobs.score_failures`), with the run that mends each; and which
run holds the source's lock now (:mod:`krone_jobs.source_lock`), whose days may look unfinished meanwhile.

Every part is read where it lives (partitions on disk, ``run_metrics`` in the warehouse, the registry in MLflow)
and fails soft: a warehouse or tracking server that does not answer is reported as such, the rest still shows.

``--check`` also reads every file a night would read (:func:`check_files`) and loads the champion, so that after
a disk incident or a restore every damaged file is named at once, not one failed night at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from krone_jobs.lineage import scored_from_older, stale_partitions
from krone_jobs.manifests import MANIFEST
from krone_jobs.partitions import (
    PartitionMismatch,
    PartitionUnreadable,
    SourceRecordError,
    check_written,
    count_rows,
    damaged_files,
    dated_files,
    day_partitions,
    source_format,
    source_timezone,
    stage_dir,
    state_dir,
)
from krone_jobs.raw_readiness import raw_readiness
from krone_jobs.score_failures import ScoreFailure, recorded, set_aside
from krone_jobs.source_lock import running

UNSCORED_SHOWN = 5
STALE_SHOWN = 10


def known_sources(root: Path) -> list[str]:
    """Sources the pipeline has state for (``state/<source>/``) or raw logs of (``raw/<source>/``: one whose first
    parse failed, or that no run took up yet), sorted."""
    found = {p.name for name in ("state", "raw") if (root / name).is_dir() for p in (root / name).iterdir()
             if p.is_dir() and not p.name.startswith((".", "_"))}
    return sorted(found)


def source_status(root: Path, source: str, *, warehouse_url: str | None = None,
                  tracking_uri: str | None = None, check: bool = False) -> dict[str, Any]:
    """One source's figures (see the module docstring); ``None`` where a store did not answer, with the reason
    under ``problems``. With ``check``, every file is read too (``checked_files``, ``damaged_files``, what is
    wrong with them under ``problems``) and the champion is loaded."""
    parsed = list(dated_files(stage_dir(root, "kseqs", source)))
    status: dict[str, Any] = {"source": source, "format": None, "timezone": None, "days_parsed": len(parsed),
                              "first_day": parsed[0] if parsed else None, "last_day": parsed[-1] if parsed else None,
                              "open_sessions_after_last_day": None,
                              "days_scored": None, "last_scored": None, "unscored": None, "scored_from_older": None,
                              "unparsed": [], "champion": None, "score_failures": [],
                              "stale": [], "rerun_from": None, "running": None, "problems": []}
    try:
        status["format"], status["timezone"] = source_format(root, source), source_timezone(root, source)
    except FileNotFoundError as exc:
        if parsed:  # a source never parsed has no record yet: its raw days are listed below
            status["problems"].append(str(exc))
    except SourceRecordError as exc:
        status["problems"].append(str(exc))
    status["running"] = running(root, source)  # a run in progress: what it is writing may look unfinished
    if not check:  # --check compares every partition with its manifest, hashes included
        status["problems"] += _not_as_written(root, source)
    try:
        status["open_sessions_after_last_day"] = _open_sessions(root, source, parsed)
    except PartitionUnreadable as exc:
        if str(exc) not in status["problems"]:
            status["problems"].append(str(exc))
    status["unparsed"] = _unparsed(root, source, parsed, status["timezone"])
    _stale(status, root, source)
    failures = _scored(status, root, source, parsed, warehouse_url)
    _champion(status, source, tracking_uri, load=check)
    _failed(status, root, source, {dt: f for dt, f in failures.items() if dt in parsed})  # not removed since
    if check:
        status["checked_files"], damaged, status["partitions_without_manifest"] = check_files(root, source)
        status["damaged_files"] = len(damaged)
        status["problems"] += [p for p in damaged if p not in status["problems"]]  # an open state's is there
    return status


def check_files(root: Path, source: str) -> tuple[int, list[str], int]:
    """(Files read, what is wrong with those that could not be, partitions without a manifest): every Parquet
    file of the source's partitions and open sessions, read whole and each partition compared with its
    manifest (:mod:`krone_jobs.manifests`, content hashes included), every miner state, the hierarchy and its
    dated copies."""
    from krone_jobs.hierarchy.model import Hierarchy, HierarchyError
    from krone_jobs.miner_state import read_state, templates_dir
    from krone_jobs.templates import TemplateStateError

    folders = [folder for _, folder in day_partitions(root, source)]
    read, problems = 0, []
    unsealed = sum(not (folder / MANIFEST).exists() for folder in folders)
    for folder in folders:
        files, damaged = damaged_files(folder)
        read, problems = read + files, problems + damaged
    state = state_dir(root, source)
    hierarchies = [state / "hierarchy.csv", *dated_files(state / "hierarchy").values()]
    loads: list[tuple[Any, type[Exception], Path]] = [
        *((read_state, TemplateStateError, p) for p in dated_files(templates_dir(root, source)).values()),
        *((Hierarchy.load_csv, HierarchyError, p) for p in hierarchies if p.is_file())]
    for load, error, path in loads:
        read += 1
        try:
            load(path)
        except error as exc:
            problems.append(str(exc))
    return read, problems, unsealed


def _not_as_written(root: Path, source: str) -> list[str]:
    """Partitions whose files are not the ones their manifest lists (names and sizes: a ``stat`` per file)."""
    found = []
    for _, folder in day_partitions(root, source):
        try:
            check_written(folder)
        except PartitionMismatch as exc:
            found.append(str(exc))
    return found


def _stale(status: dict[str, Any], root: Path, source: str) -> None:
    """Partitions whose inputs changed since they were written (:mod:`krone_jobs.lineage`): listed, and as
    problems, with the run that brings them up to date (from the earliest such day to the last parsed one)."""
    stale = stale_partitions(root, source)
    status["stale"] = [str(s) for s in stale]
    if stale:
        first, last = stale[0].dt, max(status["last_day"] or "", stale[-1].dt)
        status["rerun_from"] = first
        status["problems"].append(
            f"{len(stale)} partition{'s are' if len(stale) > 1 else ' is'} stale (their inputs changed since they "
            f"were written: a late log file, a day run again): run `krone night --source {source} --format "
            f"{status['format'] or '<format>'} --date {first} --end {last}` (or clear the krone_parse_{source} "
            f"runs from {first} on): each day builds on the one before")


def _unparsed(root: Path, source: str, parsed: list[str], zone: str | None) -> list[dict[str, Any]]:
    """Raw days delivered and not parsed (none before the first parsed day: retention's, or before the
    pipeline's start), each with whether its logs are all there (:mod:`krone_jobs.raw_readiness`): what the next
    night takes up, or a day whose parse failed."""
    done = set(parsed)
    days = [dt for dt in dated_files(root / "raw" / source) if dt not in done and (not parsed or dt > parsed[0])]
    return [{"dt": dt, **raw_readiness(root, source, dt, zone=zone).to_dict()} for dt in days]


def _open_sessions(root: Path, source: str, parsed: list[str]) -> int | None:
    """Events of sessions still open after the last parsed day (carried into the next one)."""
    folder = state_dir(root, source) / "open" / f"dt={parsed[-1]}" if parsed else None
    if folder is None or not folder.is_dir():
        return None
    return count_rows(folder)


def _scored(status: dict[str, Any], root: Path, source: str, parsed: list[str],
            url: str | None) -> dict[str, ScoreFailure]:
    """Days scored, unscored and scored from older sessions; returns the recorded score failures."""
    from krone_jobs.warehouse import Warehouse, WarehouseUnavailable

    try:
        with Warehouse(url) as wh:
            wh.ensure_schema()  # a warehouse no stage wrote to yet has no run_metrics table
            scored = sorted(wh.stage_days(source, "score"))
            content = wh.stage_metric(source, "score", "sessions_content")
            failures = recorded(wh, source)
    except WarehouseUnavailable as exc:
        status["problems"].append(f"warehouse: {exc}")
        return {}
    status["days_scored"], status["last_scored"] = len(scored), scored[-1] if scored else None
    done = set(scored)
    status["unscored"] = [dt for dt in parsed if dt not in done]
    status["scored_from_older"] = scored_from_older(content, root, source)
    return failures


def _failed(status: dict[str, Any], root: Path, source: str, failures: dict[str, ScoreFailure]) -> None:
    """Days whose last score run failed for good (:mod:`krone_jobs.score_failures`); those the catch-up sets
    aside (nothing they are scored from changed since) are problems, with what to run after mending them."""
    from krone_jobs.report import printable  # a gate's message may quote log text: no terminal control characters

    aside = set_aside(failures, root, source, failures, status["champion"])
    status["score_failures"] = [{**f.to_dict(), "set_aside": f.dt in aside} for f in failures.values()]
    for f in aside.values():
        line = printable(f.message.strip().splitlines()[0]) if f.message.strip() else ""
        said = any(line and line in p for p in status["problems"])  # a damaged partition is named above
        status["problems"].append(
            f"the score of {f.dt} failed for good ({f.attempts} time(s), last {f.failed_at}): {f.error}: "
            f"{'as above' if said else _shortened(line)}. The catch-up sets it aside until its sessions, hierarchy "
            f"or champion change; after mending it: `krone score --source {source} --date {f.dt}`")


def _champion(status: dict[str, Any], source: str, tracking_uri: str | None, *, load: bool = False) -> None:
    from krone_jobs import model_registry as registry

    try:
        status["champion"] = registry.champion_version(registry.connect(tracking_uri), source)
        if load and status["champion"] is not None:
            registry.load_version(source, status["champion"])
    except registry.ModelUnloadable as exc:
        status["problems"].append(f"the champion {exc}")
    except Exception as exc:  # noqa: BLE001 - any failure of the tracking server is reported, not raised
        status["problems"].append(f"MLflow: {type(exc).__name__}: {exc}")


def render(status: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    s = status
    days = f"{_days(s['days_parsed'])} parsed" + (f" ({s['first_day']} .. {s['last_day']})" if s["days_parsed"] else "")
    lines = [f"{s['source']}: format {s['format'] or '?'}" + (f", timezone {s['timezone']}" if s["timezone"] else "")
             + f"; {days}"]
    if s["running"]:
        lines.append(f"  in progress: {s['running']}")
    if s["open_sessions_after_last_day"] is not None:
        lines.append(f"  {s['open_sessions_after_last_day']:,} events of open sessions carried past {s['last_day']}")
    if unparsed := s["unparsed"]:
        lines.append(f"  {_days(len(unparsed))} of raw logs not parsed yet:")
        lines += [f"    {u['dt']}: {'ready' if u['ready'] else 'not ready'}: {_shortened(u['reason'])}"
                  for u in unparsed[:UNSCORED_SHOWN]]
        if len(unparsed) > UNSCORED_SHOWN:
            lines.append(f"    ... {len(unparsed) - UNSCORED_SHOWN} more (--json lists them all)")
    if s["unscored"] is not None and s["days_parsed"]:
        waiting = s["unscored"]
        shown = ", ".join(waiting[:UNSCORED_SHOWN]) + (" ..." if len(waiting) > UNSCORED_SHOWN else "")
        lines.append(f"  {_days(s['days_scored'])} scored (last {s['last_scored'] or '-'}); "
                     + (f"{_days(len(waiting))} parsed but not scored: {shown}" if waiting else "every parsed day scored"))
    if again := s["scored_from_older"]:
        shown = ", ".join(again[:UNSCORED_SHOWN]) + (" ..." if len(again) > UNSCORED_SHOWN else "")
        lines.append(f"  {_days(len(again))} scored from sessions written anew since (scored again by the next "
                     f"catch-up, or `krone score --source {s['source']} --unscored`): {shown}")
    if again := [f["dt"] for f in s["score_failures"] if not f["set_aside"]]:
        lines.append(f"  score failed for good, but what it reads changed since (the next catch-up tries again): "
                     f"{', '.join(again[:UNSCORED_SHOWN])}"
                     + (" ..." if len(again) > UNSCORED_SHOWN else ""))
    lines.append(f"  champion: krone-{s['source']} v{s['champion']}" if s["champion"] else
                 f"  champion: none yet (`krone train --source {s['source']} --end <day>`)")
    if "checked_files" in s:
        lines.append(f"  checked {s['checked_files']:,} files: " + (
            f"{s['damaged_files']} damaged or not as written (below)" if s["damaged_files"] else "every one readable"))
        if unsealed := s["partitions_without_manifest"]:
            lines.append(f"  {unsealed:,} partition{'s' if unsealed != 1 else ''} without a manifest (written before "
                         "manifests, by hand, or copied without it): read, not compared with what was written "
                         f"(`krone seal --source {s['source']}` gives them one)")
    lines += [f"  stale: {p}" for p in s["stale"][:STALE_SHOWN]]
    if len(s["stale"]) > STALE_SHOWN:
        lines.append(f"  stale: ... {len(s['stale']) - STALE_SHOWN} more (--json lists them all)")
    lines += [f"  problem: {p}" for p in s["problems"]]
    return "\n".join(lines)


def _shortened(line: str, most: int = 300) -> str:
    return line if len(line) <= most else line[:most] + " ..."


def _days(n: int) -> str:
    return f"{n:,} day" + ("" if n == 1 else "s")
