"""The registered model served on its own: sessions/s and per-request latency, template ids vs messages.

A champion is trained as ``krone train`` trains one (Drain template ids, offline hierarchy, Nested-Aware
model, miner state shipped in the model) on the generator's normal jobs, logged to a throw-away MLflow
store and loaded back through ``models:/krone-serve@champion``, as ``mlflow models serve`` loads it. Test
jobs (3 % anomalous, some with templates the model never saw) are then sent to ``predict``:

* in batches: ``template_ids`` (what ``krone score`` sends) against ``messages`` (the lines' contents, matched
  with the trained miner state; unmatched ones placed and judged in context), first call (cold verdict
  cache, new templates placed) and a second call (warm);
* one session per request, as an online caller would: median and 99th-percentile latency.

In-process calls, so the figures leave out HTTP and JSON (``mlflow models serve`` adds those per request).

    .venv/bin/python bench/serve_speed.py [--train 3000] [--test 20000] [--single 500]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=3000, help="normal training jobs")
    p.add_argument("--test", type=int, default=20000, help="test jobs per batch call")
    p.add_argument("--single", type=int, default=500, help="one-session requests for the latency figures")
    args = p.parse_args()

    import mlflow
    import pandas as pd

    from krone_jobs.detectors.router import RoutedDetector
    from krone_jobs.hierarchy.extractor import build_hierarchy
    from krone_jobs.hierarchy.offline import OfflineExtractor
    from krone_jobs.logformats import KRONE
    from krone_jobs.model_registry import (
        CHAMPION, connect, ensure_experiment, load_champion, log_krone_model, register, sessions_frame,
    )
    from krone_jobs.synthetic import generate_sessions
    from krone_jobs.templates import TemplateStore

    home = Path(tempfile.mkdtemp(prefix="krone-serve-bench-"))
    os.environ["KRONE_MLFLOW_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    os.environ["KRONE_MLFLOW_ARTIFACTS"] = (home / "artifacts").as_uri()

    t0 = time.perf_counter()
    store = TemplateStore(KRONE.miner)
    train = [s.contents for s in generate_sessions(args.train, seed=0, anomaly_rate=0.0)]
    for messages in train:
        for message in messages:
            store.mine(message)
    hierarchy = build_hierarchy({t.template_id: t.template for t in store.templates()}, OfflineExtractor())
    ids = [[store.match(m).template_id for m in messages] for messages in train]  # type: ignore[union-attr]
    detector = RoutedDetector(hierarchy).fit(ids)
    client = connect()
    with mlflow.start_run(experiment_id=ensure_experiment(client, "serve")) as run:
        log_krone_model(detector, miner_state=store.to_json())
        version = register(run.info.run_id, "serve")
    client.set_registered_model_alias("krone-serve", CHAMPION, version)
    t1 = time.perf_counter()
    model = load_champion("serve")
    t2 = time.perf_counter()
    print(f"trained on {len(train):,} jobs ({len(hierarchy)} templates) in {t1 - t0:.1f}s; "
          f"loaded models:/krone-serve@champion in {t2 - t1:.2f}s", flush=True)

    test = generate_sessions(args.test, seed=1, anomaly_rate=0.03)
    texts = [s.contents for s in test]
    n_messages = sum(map(len, texts))
    known = [[m.template_id if (m := store.match(x)) else "unknown" for x in t] for t in texts]
    by_ids = sessions_frame(known)
    by_messages = pd.DataFrame({"messages": texts})
    for name, frame in (("template_ids", by_ids), ("messages", by_messages)):
        for cache in ("cold", "warm"):
            model = load_champion("serve") if cache == "cold" else model
            t = time.perf_counter()
            out = model.predict(frame)
            dt = time.perf_counter() - t
            print(f"batch {name:<12} {cache}: {len(frame):,} sessions ({n_messages:,} messages) in {dt:.2f}s = "
                  f"{len(frame) / dt:,.0f} sessions/s, {n_messages / dt:,.0f} messages/s; "
                  f"{int(out['anomalous'].sum())} anomalous", flush=True)

    model = load_champion("serve")
    latencies = []
    for t in texts[: args.single]:
        start = time.perf_counter()
        model.predict(pd.DataFrame({"messages": [t]}))
        latencies.append(time.perf_counter() - start)
    ms = np.asarray(latencies) * 1000
    print(f"one session per request (messages, {len(ms)} requests, fresh model): "
          f"median {np.median(ms):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms", flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
