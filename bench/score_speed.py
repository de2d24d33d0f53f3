"""Scoring throughput on the rendered HDFS day partitions: cold cache, then warm cache, per day.

The authors' 20k HDFS demo sessions rendered back to raw daily logs (``/work/shared/data/rendered/hdfs``,
or a ``--scale K`` copy rendered with ``/work/shared/tools/render_demo_logs.py``) go through parse ->
sessionize -> hierarchy as a night would; a champion is trained on the normal sessions
of the first two days (``train_partitions`` with the rendered labels); then every day is scored twice with :func:`run_score`:
first with an empty verdict cache (every unseen chunk goes to the Nested-Aware model), then again (warm:
the walk decides every session from the knowledge base and the cache), in the driver process (``auto``
for days this size) and once more on Spark. It prints sessions/s over
the whole run (model load and Spark job included) and over the per-session phases (walk + route), per day
and overall, with the phase breakdown, and the peak RSS of the driver process.

    .venv/bin/python bench/score_speed.py [--scale 1] [--work /tmp/krone-score-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from rendered_e2e import _link_raw  # bench/ is on sys.path when this file runs

from krone_jobs.datasets import default_data_dir

SOURCE = "hdfs"
RUNS = (("cold", "auto"), ("warm", "auto"), ("warm", "spark"))
"""(cache, engine) per pass over the days: ``auto`` walks a day this size in the driver process."""


def _rendered(scale: int, work: Path) -> Path:
    if scale == 1:
        return default_data_dir() / "rendered" / "hdfs"
    out = work / f"rendered-x{scale}"
    if not (out / "hdfs" / "labels.csv").is_file():
        tool = default_data_dir().parent / "tools" / "render_demo_logs.py"
        subprocess.run([sys.executable, str(tool), "--system", "hdfs", "--scale", str(scale), "--gzip",
                        "--out", str(out)], check=True)
    return out / "hdfs"


def _prepare(rendered: Path, root: Path, spark: object) -> list[str]:
    from krone_jobs.jobs.hierarchy_job import run_hierarchy
    from krone_jobs.jobs.parse import run_parse
    from krone_jobs.jobs.sessionize import run_sessionize
    from krone_jobs.partitions import partition_dir

    days = _link_raw(rendered, root, SOURCE)
    if not all(partition_dir(root, "sessions", SOURCE, d).is_dir() for d in days):
        t0 = time.perf_counter()
        for d in days:
            run_parse(SOURCE, d, "hdfs", data_root=root, spark=spark)
            run_sessionize(SOURCE, d, data_root=root, spark=spark)
        run_hierarchy(SOURCE, data_root=root)
        print(f"parse + sessionize + hierarchy of {len(days)} days: {time.perf_counter() - t0:.1f}s", flush=True)
    return days


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("/tmp/krone-score-bench"))
    a = p.parse_args(argv)
    root = a.work / f"x{a.scale}"
    os.environ["KRONE_MLFLOW_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["KRONE_MLFLOW_ARTIFACTS"] = (root / "mlflow-artifacts").as_uri()
    os.environ["KRONE_WAREHOUSE_URL"] = f"duckdb:///{root / 'warehouse.duckdb'}"
    for var in ("KRONE_LLM_BASE_URL", "KRONE_LLM_MODEL"):
        os.environ.pop(var, None)
    (root / "warehouse.duckdb").unlink(missing_ok=True)

    from krone_jobs.jobs.score import run_score
    from krone_jobs.jobs.train import train_partitions
    from krone_jobs.spark import get_spark

    spark = get_spark("score-bench")
    rendered = _rendered(a.scale, a.work)
    days = [d for d in _prepare(rendered, root, spark)]
    t0 = time.perf_counter()
    trained = train_partitions(SOURCE, days[1], days=2, data_root=root, labels=rendered / "labels.csv",
                               fp_bound=1.0)
    print(f"train on {trained.metrics.get('n_train_sessions', 0):.0f} normal sessions: "
          f"{time.perf_counter() - t0:.1f}s (model v{trained.model_version})", flush=True)
    rows = []
    for label, engine in RUNS:
        for d in days:
            m = run_score(SOURCE, d, data_root=root, spark=spark, engine=engine)
            if not m.sessions:
                continue
            per_session = m.phase_seconds["walk"] + m.phase_seconds["route"]
            rows.append({"cache": label, "engine": engine, "dt": d, "sessions": m.sessions, "anomalies": m.anomalies,
                         "routed": m.routed_sessions, "cache_hits": m.cache_hits, "seconds": m.seconds,
                         "phases": m.phase_seconds, "sessions_per_s": round(m.sessions / m.seconds),
                         "sessions_per_s_walk_route": round(m.sessions / per_session)})
            r = rows[-1]
            print(f"{label}/{engine} {d}: {m.sessions:,} sessions, {m.anomalies} anomalous, {m.routed_sessions:,} routed, "
                  f"{m.cache_hits:,} cache hits | {m.seconds:.2f}s = {r['sessions_per_s']:,} sessions/s whole run, "
                  f"{r['sessions_per_s_walk_route']:,}/s walk+route | phases {m.phase_seconds}", flush=True)
    for label, engine in RUNS:
        sel = [r for r in rows if r["cache"] == label and r["engine"] == engine]
        n = sum(r["sessions"] for r in sel)
        total = sum(r["seconds"] for r in sel)
        per = sum(r["phases"]["walk"] + r["phases"]["route"] for r in sel)
        print(f"{label} cache, {engine} walk: {n:,} sessions in {total:.1f}s = {n / total:,.0f} sessions/s whole runs; "
              f"walk+route {n / per:,.0f} sessions/s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (the driver; Spark's JVM and Python workers not included): {peak:,.0f} MiB")
    print(json.dumps({"scale": a.scale, "days": rows, "peak_rss_mib": round(peak)}))
    spark.stop()


if __name__ == "__main__":
    main()
