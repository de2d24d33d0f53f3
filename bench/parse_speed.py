"""Parse stage vs plain one-process Drain3 on the same rendered HDFS day, at 1x and 10x input.

Baseline: ``TemplateStore().mine`` over ``iter_lines`` + ``parse_line`` in one process (what a script
without Spark would do). Ours: :func:`krone_jobs.jobs.parse.run_parse` on Spark ``local[2]`` (parse,
session keys, quarantine, templates, Parquet written), timed without and with the quality gate; Spark's
start-up and a warm-up run on a 5,000-line day (JVM, Python workers, GX context) are reported on their own. Each side runs in its own process so peak memory is its own (ours: the
whole process tree: driver, JVM, Python workers). Input is rendered with
``/work/shared/tools/render_demo_logs.py --system hdfs --days 2 --scale K`` into ``--work`` (never the
repo); day 1 of scale 1 has ~194k lines, of scale 10 ~1.94M. The machine may be shared: the load average
is printed with every figure, and ``--reps`` alternates baseline and ours to even it out.

    .venv/bin/python bench/parse_speed.py --scales 1 10 --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

RENDER = Path("/work/shared/tools/render_demo_logs.py")
DAY = "2008-11-09"


def _rss_tree() -> int:
    """Resident bytes of this process and all its descendants."""
    import psutil

    total = 0
    for p in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class PeakSampler(threading.Thread):
    """Samples the process tree's RSS every ``interval`` seconds; ``peak`` is the largest sum seen."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, _rss_tree())
            self._done.wait(self.interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, _rss_tree())


def baseline(path: Path) -> dict[str, Any]:
    """One process: read, parse, mine every line with Drain3 (no output written)."""
    from krone_jobs.logfiles import iter_lines
    from krone_jobs.logformats import ParsedLine, get_format, parse_line
    from krone_jobs.templates import TemplateStore

    fmt = get_format("hdfs")
    sampler = PeakSampler()
    sampler.start()
    t0 = time.perf_counter()
    store = TemplateStore()
    lines = 0
    for _, raw in iter_lines(path):
        lines += 1
        parsed = parse_line(raw, fmt)
        if isinstance(parsed, ParsedLine):
            store.mine(parsed.content)
    seconds = time.perf_counter() - t0
    return {"lines": lines, "seconds": seconds, "templates": len(store.templates()), "peak_rss": sampler.stop()}


def stage(root: Path) -> dict[str, Any]:
    """``run_parse`` on Spark local[2]; Spark start-up timed separately."""
    from krone_jobs.jobs.parse import run_parse
    from krone_jobs.spark import get_spark

    sampler = PeakSampler()
    sampler.start()
    t0 = time.perf_counter()
    spark = get_spark("parse-bench")
    startup = time.perf_counter() - t0
    warm = run_parse("warmup", DAY, "hdfs", data_root=root, spark=spark)
    m = run_parse("hdfs", DAY, "hdfs", data_root=root, spark=spark)
    spark.stop()
    return {"lines": m.raw_lines, "seconds": m.seconds, "gate_seconds": m.gate_seconds, "steps": m.steps,
            "templates": m.templates, "startup_seconds": startup, "warmup_seconds": warm.seconds + warm.gate_seconds,
            "peak_rss": sampler.stop()}


def _render(work: Path, scale: int) -> Path:
    out = work / f"render-x{scale}"
    day = out / "hdfs" / f"dt={DAY}" / "hdfs.log"
    if not day.exists():
        subprocess.run([sys.executable, str(RENDER), "--system", "hdfs", "--days", "2", "--seed", "0",
                        "--scale", str(scale), "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    return day


def _root(work: Path, scale: int, day: Path) -> Path:
    root = work / f"root-x{scale}"
    link = root / "raw" / "hdfs" / f"dt={DAY}" / "hdfs.log"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(day)
    warmup = root / "raw" / "warmup" / f"dt={DAY}" / "hdfs.log"
    if not warmup.exists():  # a small day parsed first, so JVM, worker and GX start-up are not in the figure
        warmup.parent.mkdir(parents=True, exist_ok=True)
        with open(day, "rb") as src, open(warmup, "wb") as dst:
            dst.writelines(line for _, line in zip(range(5000), src))
    return root


def _child(mode: str, arg: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, __file__, f"--{mode}", str(arg)], check=True, capture_output=True,
                         text=True, env=env).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["load"] = round(os.getloadavg()[0], 2)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("/tmp/krone-parse-bench"))
    p.add_argument("--json", action="store_true")
    p.add_argument("--baseline", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--stage", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.baseline or a.stage:
        print(json.dumps(baseline(a.baseline) if a.baseline else stage(a.stage)))
        return
    rows = []
    for scale in a.scales:
        day = _render(a.work, scale)
        root = _root(a.work, scale, day)
        for rep in range(a.reps):
            base = _child("baseline", day)
            ours = _child("stage", root)
            rows.append({"scale": scale, "rep": rep, "baseline": base, "ours": ours})
            b_rate = base["lines"] / base["seconds"]
            o_rate = ours["lines"] / ours["seconds"]
            g_rate = ours["lines"] / (ours["seconds"] + ours["gate_seconds"])
            print(f"x{scale} rep {rep}: {base['lines']:,} lines | one-process Drain {b_rate:,.0f} lines/s "
                  f"({base['seconds']:.1f} s, peak {base['peak_rss'] / 2**20:,.0f} MiB, load {base['load']}) | "
                  f"parse stage {o_rate:,.0f} lines/s ({ours['seconds']:.1f} s; {ours['steps']}), "
                  f"with quality gate {g_rate:,.0f} lines/s (+{ours['gate_seconds']:.1f} s), "
                  f"Spark start {ours['startup_seconds']:.1f} s + warm-up {ours['warmup_seconds']:.1f} s, peak {ours['peak_rss'] / 2**20:,.0f} MiB "
                  f"(driver+JVM+workers), load {ours['load']} | ratio {o_rate / b_rate:.2f}x "
                  f"({g_rate / b_rate:.2f}x with gate); templates {base['templates']} vs {ours['templates']}",
                  flush=True)
    if a.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
