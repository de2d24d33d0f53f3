"""JSON lines vs text lines: the same generated jobs through ``parse_line`` and through the parse stage.

The generator writes one day of ``--jobs`` jobs in both layouts (``krone`` text and ``krone-json`` JSON
lines, :func:`krone_jobs.synthetic.json_line`). Printed for each layout: ``parse_line`` lines/s on one core
(best of three passes over the day in memory) and the parse stage (:func:`run_parse` on Spark ``local[2]``:
parse, session keys, templates, Parquet, quality gate) lines/s, warm (after one run of each layout), with
the JSON / text ratio measured in the same run. Both layouts must give the same templates, which is
checked. Input goes under ``--work`` (never the repo).

    .venv/bin/python bench/json_parse_speed.py [--jobs 12000] [--reps 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

DAY = "2026-11-01"


def _parse_line_rate(lines: list[bytes], fmt_name: str) -> float:
    from krone_jobs.logformats import get_format, parse_line

    fmt = get_format(fmt_name)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for raw in lines:
            parse_line(raw, fmt)
        best = min(best, time.perf_counter() - t0)
    return len(lines) / best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=12_000, help="jobs in the day (about 27 lines each)")
    p.add_argument("--reps", type=int, default=2, help="timed stage runs per layout, alternating")
    p.add_argument("--work", type=Path, default=Path("/tmp/krone-json-parse-speed"))
    a = p.parse_args(argv)
    from krone_jobs.jobs.parse import run_parse
    from krone_jobs.miner_state import latest_templates
    from krone_jobs.spark import get_spark
    from krone_jobs.synthetic import LAYOUT_FORMATS, generate

    shutil.rmtree(a.work, ignore_errors=True)
    for layout in LAYOUT_FORMATS:
        generate(a.work, days=1, sessions_per_day=a.jobs, start_date=DAY, source=layout, layout=layout)
    files = {layout: a.work / "raw" / layout / f"dt={DAY}" / f"{layout}.log" for layout in LAYOUT_FORMATS}
    lines = {layout: path.read_bytes().splitlines() for layout, path in files.items()}
    n = len(lines["text"])
    per_core = {layout: _parse_line_rate(lines[layout], fmt) for layout, fmt in LAYOUT_FORMATS.items()}
    print(f"{n:,} lines a layout ({os.path.getsize(files['text']) / n:.0f} B/line text, "
          f"{os.path.getsize(files['json']) / n:.0f} B/line JSON)")
    print(f"parse_line, one core: text {per_core['text']:,.0f} lines/s, JSON {per_core['json']:,.0f} lines/s "
          f"(JSON / text {per_core['json'] / per_core['text']:.2f})")

    spark = get_spark("json-parse-speed")
    try:
        for layout, fmt in LAYOUT_FORMATS.items():  # warm-up: JVM, Python workers, GX context
            run_parse(layout, DAY, fmt, data_root=a.work, spark=spark)
        stage: dict[str, list[float]] = {layout: [] for layout in LAYOUT_FORMATS}
        for _ in range(a.reps):
            for layout, fmt in LAYOUT_FORMATS.items():
                t0 = time.perf_counter()
                m = run_parse(layout, DAY, fmt, data_root=a.work, spark=spark)
                stage[layout].append(m.raw_lines / (time.perf_counter() - t0))
                assert m.raw_lines == n and m.quarantined == 0, m
    finally:
        spark.stop()
    stores = {layout: latest_templates(a.work, layout) for layout in LAYOUT_FORMATS}
    templates = {layout: sorted(t.template for t in store.templates()) for layout, store in stores.items() if store}
    assert templates["json"] == templates["text"], "the two layouts must give the same templates"
    best = {layout: max(rates) for layout, rates in stage.items()}
    print(f"parse stage, local[2], warm (best of {a.reps}): text {best['text']:,.0f} lines/s, JSON "
          f"{best['json']:,.0f} lines/s (JSON / text {best['json'] / best['text']:.2f}); "
          f"{len(templates['text'])} templates, the same for both")


if __name__ == "__main__":
    main()
