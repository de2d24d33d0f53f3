"""Training cost of one nightly ``krone train`` on a KRONE demo set (default: HDFS, the authors' 80 % split).

Runs the real job (:func:`krone_jobs.jobs.train.train`: hierarchy, held-out split, RoutedDetector fit with the
default Nested-Aware parameters, MLflow logging, registration, gate) against a throw-away SQLite MLflow
store in a temporary folder, so the repository's ``mlflow/`` is never touched. Prints the fit seconds (the
goal is under 3 minutes on 2 cores), the whole job's seconds, peak RSS and the gate's verdict. Skips with
a message when the shared data is absent. Usage::

    .venv/bin/python bench/train_speed.py [--dataset hdfs-demo] [--train-percent 80] [--hierarchy official] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from krone_jobs.datasets import default_data_dir, load_demo, load_demo_templates, official_node_table, split


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="hdfs-demo", choices=["hdfs-demo", "thunderbird-demo"])
    ap.add_argument("--train-percent", type=int, default=80, choices=[1, 10, 80])
    ap.add_argument("--hierarchy", default="official", choices=["official", "offline"],
                    help="the authors' node table, or our offline extractor (what the pipeline uses)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    if not (default_data_dir() / "krone_demo").is_dir():
        print(f"skipped: shared data not found at {default_data_dir()} (set KRONE_SHARED_DATA)")
        return 0
    import torch

    from krone_jobs.hierarchy.official import load_node_table
    from krone_jobs.jobs.train import train

    train_part, _ = split(load_demo(args.dataset), args.dataset, args.train_percent, "official")
    templates = load_demo_templates(args.dataset)
    hierarchy = load_node_table(official_node_table(args.dataset), templates) if args.hierarchy == "official" else None
    with tempfile.TemporaryDirectory(prefix="krone-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        result = train(args.dataset, train_part.sequences, templates, hierarchy=hierarchy,
                       tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=(root / "artifacts").as_uri())
        job_seconds = time.perf_counter() - t0
    figures = {
        "dataset": args.dataset, "train_percent": args.train_percent, "hierarchy": args.hierarchy,
        "sessions": len(train_part), "fit_sessions": int(result.metrics["n_train_sessions"]),
        "train_seconds": result.metrics["train_seconds"], "job_seconds": round(job_seconds, 1),
        "heldout_fp_rate": result.gate.candidate_fp_rate, "gate_passed": result.gate.passed,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"{args.dataset} {args.train_percent}% ({args.hierarchy} hierarchy): {figures['fit_sessions']:,} of "
          f"{figures['sessions']:,} normal sessions fitted, the rest held out for the gate")
    print(f"  fit {figures['train_seconds']:.1f}s (goal < 180s), whole job {figures['job_seconds']:.1f}s "
          f"incl. MLflow logging, registration and gate")
    print(f"  held-out FP rate {figures['heldout_fp_rate']:.4f}, gate {'passed' if figures['gate_passed'] else 'refused'}")
    print(f"  peak RSS {figures['peak_rss_mb']} MB; {figures['cpus']} CPUs, {figures['torch_threads']} torch threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
