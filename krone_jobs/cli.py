"""The ``krone`` console script: one sub-command per stage; each calls the same functions the DAGs call."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError("expected on or off")
    return value == "on"


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="train and test a detector on a labelled demo set")
    p.add_argument("--dataset", required=True, choices=["hdfs-demo", "thunderbird-demo"])
    p.add_argument("--train-percent", type=int, default=80, choices=[1, 10, 80])
    p.add_argument("--hierarchy", default="official", choices=["official", "offline"])
    p.add_argument("--detector", default="local", help="local, nested, routed or a baseline (new-event, "
                   "new-countvec, pca, invariants)")
    p.add_argument("--automaton", type=_on_off, default=None, help="on|off (default: see README)")
    p.add_argument("--compat", action="store_true", help="reproduce the KRONE authors' rule exactly")
    p.add_argument("--split", default="official", choices=["official", "random", "chronological"])
    p.add_argument("--data-dir", type=Path, default=None, help="shared data root (default ../shared/data)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from krone_jobs.evaluate import EvalConfig, run_evaluation

    config = EvalConfig(
        dataset=args.dataset,
        train_percent=args.train_percent,
        hierarchy=args.hierarchy,
        detector=args.detector,
        automaton=args.automaton,
        compat=args.compat,
        split=args.split,
        data_dir=args.data_dir,
    )
    result = run_evaluation(config)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['dataset']} train={result['train_percent']}% hierarchy={result['hierarchy']} "
            f"detector={result['detector']}"
            f"{(' automaton=' + ('on' if result['automaton'] else 'off')) if 'automaton' in result else ''}"
            f"{' compat' if result['compat'] else ''}: F1 {result['f1']:.4f} P {result['precision']:.4f} "
            f"R {result['recall']:.4f} TP/FP/TN/FN {result['tp']}/{result['fp']}/{result['tn']}/{result['fn']}"
        )
        for level, fig in result.get("per_level", {}).items():
            print(f"  {level:<7} F1 {fig['f1']:.4f}  first anomalous level for {fig['first_anomalous']} sessions")
        print(f"  train {result['train_seconds']:.2f}s, detect {result['detect_seconds']:.2f}s "
              f"({result['sessions_per_s']} sessions/s)")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate sample logs and run parse -> train -> score -> report on them")
    p.add_argument("--data-root", type=Path, default=None, help="default: $KRONE_DATA_ROOT or <home>/data")
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--sessions-per-day", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=["text", "json"], default="text",
                   help="write the logs as text lines (format krone) or JSON lines (format krone-json)")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("generate", help="write generated nested-execution logs with labelled anomalies")
    p.add_argument("--data-root", type=Path, default=None, help="default: $KRONE_DATA_ROOT or <home>/data")
    p.add_argument("--source", default="synthetic")
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--sessions-per-day", type=int, default=2000)
    p.add_argument("--lines", type=int, default=None, help="total lines instead of --sessions-per-day")
    p.add_argument("--anomaly-rate", type=float, default=0.03)
    p.add_argument("--start-date", default="2026-11-01")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gzip", action="store_true")
    p.add_argument("--layout", choices=["text", "json"], default="text",
                   help="text lines (format krone) or JSON lines (format krone-json)")
    p.set_defaults(func=_cmd_generate)


def _cmd_demo(args: argparse.Namespace) -> int:
    from krone_jobs.demo import print_summary, run_demo

    print_summary(run_demo(args.data_root, days=args.days, sessions_per_day=args.sessions_per_day, seed=args.seed,
                           layout=args.layout))
    return 0


def _cmd_generate(a: argparse.Namespace) -> int:
    from krone_jobs.config import settings
    from krone_jobs.synthetic import generate

    g = generate(a.data_root or settings().data_root, days=a.days, sessions_per_day=a.sessions_per_day, lines=a.lines,
                 anomaly_rate=a.anomaly_rate, seed=a.seed, start_date=a.start_date, gzip=a.gzip, source=a.source,
                 layout=a.layout)
    print(json.dumps({"lines": g.lines, "sessions": g.sessions, "anomalies": g.anomalies, "bytes": g.bytes,
                      "lines_per_day": g.lines_per_day, "seconds": round(g.seconds, 2)}))
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from krone_jobs.jobs.train import add_train_arguments, main_train

    p = sub.add_parser("train", help="train, register and gate a KRONE model (MLflow krone-<source>)")
    add_train_arguments(p)
    p.set_defaults(func=main_train)


def _add_stages(sub: argparse._SubParsersAction) -> None:
    from krone_jobs.logformats import FORMATS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--source", required=True)
    common.add_argument("--data-root", type=Path, default=None, help="default: $KRONE_DATA_ROOT or <home>/data")
    p = sub.add_parser("parse", parents=[common], help="raw/<source>/dt=D -> parsed/ + quarantine/")
    p.add_argument("--date", required=True, help="YYYY-MM-DD")
    p.add_argument("--format", required=True, help=f"built-in: {', '.join(sorted(FORMATS))}; or a format of the "
                   "TOML file named by KRONE_FORMATS_FILE (README: Using your own logs)")
    p.add_argument("--partitions", type=int, default=None, help="stripes per file (default: Spark parallelism)")
    p.add_argument("--max-quarantine-ratio", type=float, default=0.05)
    p.add_argument("--max-new-templates", type=int, default=None,
                   help="templates the day may open; on a day that would open more, lines of unique text are "
                        "quarantined as template_flood (default: KRONE_MAX_NEW_TEMPLATES, else 2000)")
    p.set_defaults(func=_cmd_parse)
    p = sub.add_parser("sessionize", parents=[common], help="parsed/ -> sessions/ (open sessions carry over)")
    p.add_argument("--date", required=True, help="YYYY-MM-DD")
    p.add_argument("--gap-seconds", type=float, default=None, help="default: 1800 (id keys) or the format's gap")
    p.add_argument("--max-session-seconds", type=float, default=None,
                   help="a session still open at the end of the day but spanning more than this is closed there "
                        "(default: KRONE_MAX_SESSION_SECONDS, else 86400)")
    p.add_argument("--max-session-events", type=int, default=None,
                   help="a session of more events is emitted as pieces of this many "
                        "(default: KRONE_MAX_SESSION_EVENTS, else 100000)")
    p.set_defaults(func=_cmd_sessionize)
    p = sub.add_parser("hierarchy", parents=[common], help="add new templates to state/<source>/hierarchy.csv")
    p.add_argument("--date", default=None, help="use the miner state of this day (default: newest)")
    p.add_argument("--extractor", default="offline", choices=["offline", "llm"],
                   help="llm: the paper's LLM abstraction model on KRONE_LLM_* (cached per template text in "
                        "state/<source>/llm_placements.json; offline rules where it gives no valid answer)")
    p.set_defaults(func=_cmd_hierarchy)
    p = sub.add_parser("kseqs", parents=[common], help="sessions/ -> kseqs/ (distinct KRONE Seqs with counts)")
    p.add_argument("--date", required=True, help="YYYY-MM-DD")
    p.set_defaults(func=_cmd_kseqs)
    p = sub.add_parser("score", parents=[common], help="sessions/ -> anomaly_reports, kseq_cache, run_metrics "
                       "(champion model, verdict cache, routed detection)")
    day = p.add_mutually_exclusive_group(required=True)
    day.add_argument("--date", help="YYYY-MM-DD")
    day.add_argument("--unscored", action="store_true", help="every day with KRONE Seqs but no score run (or one "
                     "scored before its sessions were written anew), oldest first, each with its night report (what a "
                     "first champion catches up on; see krone status); a day that fails for good is named and the "
                     "others go on (exit 1)")
    p.add_argument("--retry-failed", action="store_true",
                   help="with --unscored: also the days set aside because their score failed for good and nothing "
                        "they are scored from changed since (after mending what `krone status` names)")
    p.add_argument("--engine", default="auto", choices=["auto", "spark", "local"],
                   help="where the per-session walk runs (auto: this process up to 50,000 sessions, else Spark)")
    p.add_argument("--json", action="store_true", help="print the run's figures as one JSON object")
    p.set_defaults(func=_cmd_score)
    p = sub.add_parser("retention", parents=[common], help="remove the source's day partitions and dated state "
                       "older than the retention window (raw logs only with a raw window)")
    p.add_argument("--date", required=True, help="YYYY-MM-DD: the last day of the window")
    p.add_argument("--keep-days", type=int, default=None,
                   help="days kept, ending at --date (default: KRONE_RETAIN_DAYS; unset: nothing is removed)")
    p.add_argument("--keep-raw-days", type=int, default=None,
                   help="days of raw logs kept (default: KRONE_RETAIN_RAW_DAYS; unset: raw logs stay)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.set_defaults(func=_cmd_retention)
    p = sub.add_parser("night", parents=[common], help="parse -> sessionize -> hierarchy -> kseqs (-> score -> "
                       "report with a champion) for a day or a range of days, in order, without Airflow")
    p.add_argument("--date", required=True, help="YYYY-MM-DD: the (first) day")
    p.add_argument("--end", default=None, help="YYYY-MM-DD: the last day of a range (default: --date only)")
    p.add_argument("--format", required=True, help="as for `krone parse`")
    p.add_argument("--max-quarantine-ratio", type=float, default=0.05)
    p.add_argument("--no-score", action="store_true", help="parse stages only, even with a champion")
    p.set_defaults(func=_cmd_night)


def _stage(result: dict[str, Any]) -> int:
    """Print a stage's figures (as the DAG task's XCom holds them) with the run id its metrics are under."""
    print(json.dumps({**result["metrics"], "run_id": result["run_id"]}, default=str))
    return 0


def _format_error(command: str, name: str) -> bool:
    """Check a format before Spark starts: an unknown name or a bad formats file is the user's to fix."""
    from krone_jobs.logformats import get_format

    try:
        get_format(name)
    except (KeyError, ValueError, OSError) as exc:
        print(f"krone {command}: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return True
    return False


def _cmd_parse(a: argparse.Namespace) -> int:
    from krone_jobs.pipeline import parse_stage

    if _format_error("parse", a.format):
        return 2
    return _stage(parse_stage(a.source, a.date, a.format, data_root=a.data_root, partitions=a.partitions,
                              max_quarantine_ratio=a.max_quarantine_ratio, max_new_templates=a.max_new_templates))


def _cmd_sessionize(a: argparse.Namespace) -> int:
    from krone_jobs.pipeline import sessionize_stage

    return _stage(sessionize_stage(a.source, a.date, data_root=a.data_root, gap_seconds=a.gap_seconds,
                                   max_session_seconds=a.max_session_seconds,
                                   max_session_events=a.max_session_events))


def _cmd_hierarchy(a: argparse.Namespace) -> int:
    from krone_jobs.pipeline import hierarchy_stage

    extractor = None
    if a.extractor == "llm":
        from krone_jobs.config import settings
        from krone_jobs.llm.client import LLMClient
        from krone_jobs.llm.extractor import LLMHierarchyExtractor
        from krone_jobs.partitions import state_dir

        client = LLMClient.from_settings()
        if client is None:
            raise SystemExit("--extractor llm needs KRONE_LLM_BASE_URL and KRONE_LLM_MODEL")
        root = a.data_root or settings().data_root
        extractor = LLMHierarchyExtractor(client, cache_path=state_dir(root, a.source) / "llm_placements.json")
    return _stage(hierarchy_stage(a.source, a.date, data_root=a.data_root, extractor=extractor))


def _cmd_kseqs(a: argparse.Namespace) -> int:
    from krone_jobs.pipeline import kseqs_stage

    return _stage(kseqs_stage(a.source, a.date, data_root=a.data_root))


def _cmd_retention(a: argparse.Namespace) -> int:
    from krone_jobs.pipeline import retention_stage

    try:
        result = retention_stage(a.source, a.date, data_root=a.data_root, keep_days=a.keep_days,
                                 keep_raw_days=a.keep_raw_days, dry_run=a.dry_run)
    except ValueError as exc:
        print(f"krone retention: {exc}", file=sys.stderr)
        return 2
    m = result["metrics"]
    if m["keep_days"] is None:
        print("krone retention: no window (set KRONE_RETAIN_DAYS or pass --keep-days): nothing removed")
        return 0
    for path in m.pop("paths"):
        print(f"{'would remove' if a.dry_run else 'removed'} {path}")
    for error in m.pop("errors"):
        print(f"krone retention: could not remove {error}", file=sys.stderr)
    _stage(result)
    return 1 if m["failed"] else 0


def _cmd_night(a: argparse.Namespace) -> int:
    from krone_jobs import alerts
    from krone_jobs.config import settings
    from krone_jobs.night import day_range, run_night

    if _format_error("night", a.format):
        return 2
    try:
        day_range(a.date, a.end)
    except ValueError as exc:
        print(f"krone night: {exc}", file=sys.stderr)
        return 2
    try:
        policy = settings().alert_digest
        alert_to = alerts.targets()
    except ValueError as exc:  # checked first: a broken alert setting would otherwise show only after the night
        print(f"krone night: alerts: {exc}", file=sys.stderr)
        return 2
    days = f"{a.date}..{a.end}" if a.end else a.date
    try:
        results = run_night(a.source, a.format, a.date, a.end, data_root=a.data_root, score=not a.no_score,
                            max_quarantine_ratio=a.max_quarantine_ratio)
    except Exception as exc:
        if alert_to is not None:
            _alert(alerts.failure(f"krone night --source {a.source}", exc, day=days), alert_to)
        raise
    code = 1 if any("score_failed" in out for out in results) else 0
    if alert_to is not None:
        scored = [out for out in results if "report" in out or "score_failed" in out]
        note = alerts.digest([out["report"] for out in scored if "report" in out], expected=len(scored), policy=policy)
        if note is not None and not _alert(note, alert_to):
            code = 1
    return code


def _alert(alert: Any, to: Any) -> bool:
    """Send an alert of a command; one not sent is said on stderr (the command's exit status shows it)."""
    from krone_jobs.alerts import AlertNotSent, send

    try:
        send(alert, to)
    except AlertNotSent as exc:
        print(f"krone: {exc}", file=sys.stderr)
        return False
    return True


def _cmd_score(a: argparse.Namespace) -> int:
    from krone_jobs.jobs.score import run_score, summary_line
    from krone_jobs.pipeline import night_report, permanent_failures, set_aside, unscored_days

    if not a.unscored:
        m = run_score(a.source, a.date, data_root=a.data_root, engine=a.engine)
        print(json.dumps(m.to_dict()) if a.json else summary_line(m))
        return 0
    days = unscored_days(a.source, data_root=a.data_root)
    aside = {} if a.retry_failed else set_aside(a.source, days, data_root=a.data_root)
    for failure in aside.values():
        print(f"krone score: {failure.set_aside_line(a.source)}; `krone status` says why; after mending it, "
              "--retry-failed (or --date) scores it again", file=sys.stderr)
    days = [dt for dt in days if dt not in aside]
    if not days and not aside:
        print(f"krone score: every day of {a.source} with KRONE Seqs is scored, as it stands")
    failed = 0
    for dt in days:  # a day that fails for good does not hold up the days after it
        try:
            m = run_score(a.source, dt, data_root=a.data_root, engine=a.engine)
        except permanent_failures() as exc:
            print(f"krone score: {a.source} {dt}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(json.dumps(m.to_dict()) if a.json else summary_line(m))
        night_report(a.source, dt, data_root=a.data_root)
    return 1 if failed else 0


def _cmd_status(a: argparse.Namespace) -> int:
    from krone_jobs.config import settings
    from krone_jobs.status import known_sources, render, source_status

    root = a.data_root or settings().data_root
    sources = a.source or known_sources(root)
    if not sources:
        print(f"krone status: no source has raw logs or state under {root} yet (raw/<source>/dt=D/)", file=sys.stderr)
        return 1
    found = [source_status(root, s, check=a.check) for s in sources]
    print(json.dumps(found) if a.json else "\n".join(render(s) for s in found))
    return 1 if a.check and any(s["problems"] for s in found) else 0


def _cmd_seal(a: argparse.Namespace) -> int:
    from krone_jobs.config import settings
    from krone_jobs.partitions import seal_unsealed
    from krone_jobs.status import known_sources

    root = a.data_root or settings().data_root
    refused_any = False
    for source in a.source or known_sources(root):
        sealed, refused = seal_unsealed(root, source)
        print(f"{source}: {len(sealed):,} partition{'s' if len(sealed) != 1 else ''} sealed"
              + (f", {len(refused):,} not (below): write them again first" if refused else ""))
        for problem in refused:
            print(f"  not sealed: {problem}")
        refused_any = refused_any or bool(refused)
    return 1 if refused_any else 0


def _add_operations(sub: argparse._SubParsersAction) -> None:
    from krone_jobs.feedback import add_feedback_arguments
    from krone_jobs.model_registry import add_promote_arguments, main_promote
    from krone_jobs.report import add_report_arguments

    add_report_arguments(sub.add_parser("report", help="write the night report (HTML) and print its summary"))
    add_feedback_arguments(sub.add_parser("feedback", help="record an operator's verdict on a reported chunk"))
    p = sub.add_parser("status", help="per source: days parsed, days scored, days waiting for a model, champion")
    p.add_argument("--source", action="append", default=None, help="this source (repeatable; default: every one "
                   "with state under the data root)")
    p.add_argument("--data-root", type=Path, default=None, help="default: $KRONE_DATA_ROOT or <home>/data")
    p.add_argument("--json", action="store_true", help="one JSON list")
    p.add_argument("--check", action="store_true", help="also read every partition file whole, every miner state "
                   "and hierarchy file, and load the champion; exit 1 on any problem (after a disk incident or "
                   "a restore)")
    p.set_defaults(func=_cmd_status)
    p = sub.add_parser("seal", help="give the partitions written before manifests one, after reading them whole, "
                       "so that readers compare them from then on")
    p.add_argument("--source", action="append", default=None, help="this source (repeatable; default: every one "
                   "with state under the data root)")
    p.add_argument("--data-root", type=Path, default=None, help="default: $KRONE_DATA_ROOT or <home>/data")
    p.set_defaults(func=_cmd_seal)
    p = sub.add_parser("promote", help="move the champion alias to a registered version (gate, or --force)")
    add_promote_arguments(p)
    p.set_defaults(func=main_promote)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="krone", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_evaluate(sub)
    _add_demo(sub)
    _add_stages(sub)
    _add_train(sub)
    _add_operations(sub)
    return parser


def _operational_errors() -> tuple[type[BaseException], ...]:
    """Failures an operator fixes from the message alone (a failed gate, missing input, a service down):
    the console script prints them as one line with the stage named, not as a traceback."""
    from krone_jobs.model_registry import NoChampion
    from krone_jobs.pipeline import permanent_failures
    from krone_jobs.warehouse import WarehouseUnavailable

    return (*permanent_failures(), WarehouseUnavailable, NoChampion, FileNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command. An operational failure prints ``krone <command>: <what and where>`` on stderr
    (with the validation result file of a failed gate) and returns 1; ``KRONE_TRACEBACK=1`` re-raises it."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as exc:
        if os.environ.get("KRONE_TRACEBACK") or not isinstance(exc, _operational_errors()):
            raise
        print(f"krone {args.command}: {exc}", file=sys.stderr)
        result_path = getattr(getattr(exc, "result", None), "result_path", None)
        if result_path is not None:
            print(f"  validation result: {result_path}", file=sys.stderr)
        return 1


def run() -> None:
    """The console script: :func:`main`, then exit without interpreter finalisation.

    With torch and duckdb-engine in one process, finalisation makes DuckDB's nanobind bindings print
    dozens of harmless "leaked instance" lines after the command's real output (or after a traceback, burying
    it). Exit handlers (Spark, MLflow, logging) still run first; only the module teardown that prints them is
    skipped."""
    try:
        code = main()
    except SystemExit as stop:  # --help, argparse's usage errors, and a stage's SystemExit("krone ...: why")
        code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)  # what the interpreter would print at its exit
    except BaseException as failure:  # an unexpected failure: its traceback, then the same quiet exit
        traceback.print_exc()
        code = 130 if isinstance(failure, KeyboardInterrupt) else 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
