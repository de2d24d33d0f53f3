"""The whole night on real logs: raw text -> parse stages -> champion -> routed scoring -> warehouse, vs labels.

``rendered_e2e.py`` checks the parse stages with the Local-Context detector on the authors' split; this
bench checks what an operator gets. The rendered HDFS and Thunderbird logs (``../shared/data/rendered``:
5 daily ``.gz`` files each, one more empty day closes the sessions still open) go through the same
functions as ``krone night`` and the DAGs, in a temporary home (MLflow store, DuckDB warehouse):

1. ``run_night`` over the first ``--train-days`` days (parse stages only: no champion yet);
2. ``pipeline.train_window`` on those days, labelled anomalies left out (``--labels`` as an operator
   would pass them), gated and promoted to ``champion`` as in ``krone_train``;
3. ``run_night`` over the remaining days: parse stages, then routed scoring with the champion and the
   night report, reports and verdict cache in the warehouse.

The sessions closed on the scored days are then joined with the rendered labels: precision / recall / F1
of the ``anomaly_reports`` table, anomalies per level, lines/s of the parse stages and
sessions/s of scoring (whole stage runs, model load and Spark jobs included), peak RSS. The classical
baselines of ``krone_jobs/detectors/baselines.py`` are fitted on the same training sessions and judged on
the same scored sessions, in the same run, for scale.

No LLM by default (offline figures). ``--llm scripted`` puts the scripted OpenAI-protocol endpoint of
``llm_fraction.py`` (the tests' server on 127.0.0.1, answering ``Abnormal`` when the chunk's steps name an
error) behind ``KRONE_LLM_*`` with the default budget, so the figures show how many calls a real night
makes and that they go through the real client, prompts and budget; its verdicts carry no knowledge.

    .venv/bin/python bench/night_e2e.py [--systems hdfs thunderbird] [--train-days 3] [--llm off|scripted]
                                        [--work /tmp/krone-night-e2e]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from rendered_e2e import _link_raw, by_our_id  # bench/ is on sys.path when this file runs

from krone_jobs.datasets import default_data_dir

FORMATS = {"hdfs": "hdfs", "thunderbird": "thunderbird"}


def _sessions(root: Path, system: str, days: list[str]) -> Any:
    import pandas as pd

    from krone_jobs.partitions import partition_dir

    return pd.concat([pd.read_parquet(partition_dir(root, "sessions", system, d)) for d in days], ignore_index=True)


def run_system(system: str, work: Path, train_days: int, llm_url: str | None = None) -> dict[str, Any]:
    from krone_jobs import pipeline
    from krone_jobs.detectors.baselines import BASELINES
    from krone_jobs.evaluate import confusion
    from krone_jobs.miner_state import latest_templates
    from krone_jobs.night import run_night
    from krone_jobs.warehouse import Warehouse

    rendered = default_data_dir() / "rendered" / system
    home = work / system
    shutil.rmtree(home, ignore_errors=True)
    os.environ["KRONE_HOME"] = str(home)
    for var in ("KRONE_DATA_ROOT", "KRONE_MLFLOW_URI", "KRONE_MLFLOW_ARTIFACTS", "KRONE_WAREHOUSE_URL",
                "KRONE_LLM_BASE_URL", "KRONE_LLM_MODEL"):
        os.environ.pop(var, None)
    if llm_url is not None:
        os.environ.update(KRONE_LLM_BASE_URL=llm_url, KRONE_LLM_MODEL="scripted", KRONE_LLM_API_KEY="bench")
    root = home / "data"
    days = _link_raw(rendered, root, system)
    train, scored = days[:train_days], days[train_days:]
    label = by_our_id(rendered, system, "label")
    labels_csv = home / "labels.csv"  # what an operator passes to `krone train --labels`
    with open(labels_csv, "w", newline="") as fh:
        csv.writer(fh).writerows([("session_id", "label"), *label.items()])

    quiet = lambda line: None  # noqa: E731  (the figures are printed below)
    t0 = time.perf_counter()
    parsed = run_night(system, FORMATS[system], train[0], train[-1], say=quiet)
    parse_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    trained = pipeline.train_window(system, train[-1], days=len(train), labels=labels_csv)
    train_s = time.perf_counter() - t0
    if not trained["summary"].get("promoted"):
        raise SystemExit(f"{system}: the candidate was not promoted: {trained['summary'].get('gate')}")
    t0 = time.perf_counter()
    nights = run_night(system, FORMATS[system], scored[0], scored[-1], say=quiet)
    night_s = time.perf_counter() - t0

    train_sessions = _sessions(root, system, train)
    test_sessions = _sessions(root, system, scored)
    with Warehouse() as wh:
        flagged = wh.reported_sessions(system, scored[0], scored[-1])
    y = np.asarray([label.get(s, -1) for s in test_sessions["session_id"]], dtype=np.int8)
    known = y >= 0
    pred = np.asarray([s in flagged for s in test_sessions["session_id"]], dtype=np.int8)

    store = latest_templates(root, system)  # superseded ids resolved, as training does
    resolve = store.resolve if store is not None else str
    normal_train = [tuple(map(resolve, ids)) for s, ids in zip(train_sessions["session_id"],
                                                               train_sessions["template_ids"]) if label.get(s, 0) == 0]
    test_seqs = [tuple(map(resolve, ids)) for ids in test_sessions["template_ids"]]
    baselines = {}
    for name, make in BASELINES.items():
        guess = np.asarray(make().fit(normal_train).predict(test_seqs), dtype=np.int8)
        baselines[name] = confusion(y[known], guess[known])

    metrics = [n["parse"]["metrics"] for n in (*parsed, *nights)]
    raw_lines = sum(m["raw_lines"] for m in metrics)
    scores = [n["score"]["metrics"] for n in nights]
    per_level = {level: sum(m["per_level"].get(level, 0) for m in scores) for level in ("status", "action", "entity")}
    score_s = sum(m["seconds"] for m in scores)
    return {
        "system": system, "train_days": train, "scored_days": scored, "raw_lines": raw_lines,
        "quarantined": sum(m["quarantined"] for m in metrics),
        "train_sessions": len(train_sessions), "normal_train_sessions": len(normal_train),
        "model_version": trained["summary"].get("model_version"),
        "scored_sessions": len(test_sessions), "unlabelled_sessions": int((~known).sum()),
        "routed": confusion(y[known], pred[known]), "anomalies_per_level": per_level, "baselines": baselines,
        **{k: sum(m.get(k, 0) for m in scores) for k in ("llm_calls", "llm_requests", "llm_budget_refusals")},
        "parse_lines_per_s": round(raw_lines / (parse_s + night_s - score_s)),
        "score_sessions_per_s": round(sum(m["sessions"] for m in scores) / score_s) if score_s else None,
        "seconds": {"parse_train_days": round(parse_s, 1), "train": round(train_s, 1),
                    "parse_and_score_days": round(night_s, 1), "score_stages": round(score_s, 1)},
    }


def _summary(system: str, r: dict[str, Any]) -> str:
    m = r["routed"]
    best = max(r["baselines"].items(), key=lambda kv: kv[1]["f1"])
    return (f"{system}: trained on {r['train_days'][0]}..{r['train_days'][-1]} ({r['normal_train_sessions']:,} "
            f"normal sessions, model v{r['model_version']}), scored {r['scored_days'][0]}..{r['scored_days'][-1]}: "
            f"{r['scored_sessions']:,} sessions ({r['unlabelled_sessions']} unlabelled) | routed F1 {m['f1']:.4f} "
            f"P {m['precision']:.4f} R {m['recall']:.4f} (TP {m['tp']}, FP {m['fp']}, FN {m['fn']}), "
            f"{r['llm_calls']} LLM calls ({100 * r['llm_calls'] / max(r['scored_sessions'], 1):.2f} % of "
            f"sessions; {r['llm_requests']} chunks asked about, {r['llm_budget_refusals']} refused by the budget) "
            f"| best baseline {best[0]} F1 {best[1]['f1']:.4f} | {r['raw_lines']:,} lines at "
            f"{r['parse_lines_per_s']:,} lines/s through the parse stages (and night reports), scoring "
            f"{r['score_sessions_per_s']:,} sessions/s (whole stage runs) | seconds {r['seconds']}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--systems", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    p.add_argument("--train-days", type=int, default=3, help="days of the training window (the rest are scored)")
    p.add_argument("--llm", choices=["off", "scripted"], default="off")
    p.add_argument("--work", type=Path, default=Path("/tmp/krone-night-e2e"))
    a = p.parse_args(argv)
    from krone_jobs.spark import get_spark

    server = None
    if a.llm == "scripted":
        from llm_fraction import FakeLLM, scripted_answer

        os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1,localhost"
        server = FakeLLM().start()
        server.respond(scripted_answer)
    spark = get_spark("night-e2e")  # one session for every stage of every system
    try:
        for system in a.systems:
            r = run_system(system, a.work, a.train_days, server.base_url if server is not None else None)
            print(_summary(system, r), flush=True)
            print(json.dumps(r))
    finally:
        spark.stop()
        if server is not None:
            server.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (the driver; Spark's JVM not included): {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
