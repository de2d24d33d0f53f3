"""Classical baselines (``krone_jobs.detectors.baselines.BASELINES``) on the KRONE demo sets, the authors'
official splits (train = normal sessions only), in one process: F1/P/R, confusion counts and seconds.

Usage::

    .venv/bin/python bench/baselines.py [--datasets hdfs-demo thunderbird-demo] [--train-percents 80 10 1]
                                        [--detectors new-event new-countvec pca invariants] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from krone_jobs.datasets import DEMOS, load_demo, split
from krone_jobs.detectors.baselines import BASELINES
from krone_jobs.evaluate import confusion


def run(datasets: list[str], train_percents: list[int], detectors: list[str]) -> list[dict[str, Any]]:
    rows = []
    for dataset in datasets:
        sessions = load_demo(dataset)
        for tp in train_percents:
            train, test = split(sessions, dataset, tp, "official")
            for name in detectors:
                t0 = time.perf_counter()
                detector = BASELINES[name]().fit(train.sequences)
                train_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                y_pred = detector.predict(test.sequences)
                detect_s = time.perf_counter() - t0
                rows.append({
                    "detector": name,
                    "dataset": dataset,
                    "train_percent": tp,
                    "n_train": len(train),
                    "n_test": len(test),
                    **confusion(test.labels, y_pred),
                    "train_seconds": round(train_s, 3),
                    "detect_seconds": round(detect_s, 3),
                })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(DEMOS), choices=list(DEMOS))
    ap.add_argument("--train-percents", type=int, nargs="+", default=[80, 10, 1])
    ap.add_argument("--detectors", nargs="+", default=list(BASELINES), choices=list(BASELINES))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    rows = run(args.datasets, args.train_percents, args.detectors)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'detector':<14}{'dataset':<18}{'train%':>6}{'F1':>8}{'P':>8}{'R':>8}{'TP':>6}{'FP':>7}{'TN':>7}{'FN':>6}"
          f"{'train s':>9}{'detect s':>9}")
    for r in rows:
        print(f"{r['detector']:<14}{r['dataset']:<18}{r['train_percent']:>6}{r['f1']:>8.4f}{r['precision']:>8.4f}"
              f"{r['recall']:>8.4f}{r['tp']:>6}{r['fp']:>7}{r['tn']:>7}{r['fn']:>6}{r['train_seconds']:>9.2f}"
              f"{r['detect_seconds']:>9.2f}")


if __name__ == "__main__":
    main()
