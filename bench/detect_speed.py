"""Detection throughput of the Local-Context detector on the KRONE demo test sets.

Repeats the test sessions to at least ``--sessions`` (default 200,000) and measures, in one process:

* ``reference``: a straightforward object-per-chunk implementation (string KRONE Seq objects from
  ``decompose`` checked against string-key sets), the shape of the authors' code, as the same-run baseline;
* ``no cache``: our detector with the verdict cache disabled (every session cut and judged);
* ``cold``: a fresh cache (first occurrence of each distinct session misses, repeats hit);
* ``warm``: the same sessions again with the cache filled.

Prints sessions/s, the ratio to the reference, and peak RSS. Usage::

    .venv/bin/python bench/detect_speed.py [--dataset hdfs-demo] [--sessions 200000] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable, Sequence

from krone_jobs.datasets import load_demo, split
from krone_jobs.detectors.local_context import LocalContextDetector
from krone_jobs.evaluate import load_hierarchy
from krone_jobs.hierarchy.kseqs import decompose
from krone_jobs.hierarchy.model import Hierarchy


def reference_detector(train: Sequence[Sequence[str]], hierarchy: Hierarchy) -> Callable[[Sequence[str]], bool]:
    """Knowledge base on string keys, one KroneSeq object per chunk, no interning, no cache."""
    known: set[str] = set()
    for seq in train:
        d = decompose(seq, hierarchy)
        known.update(c.key for c in (*d.status, *d.action, d.entity))

    def is_anomalous(seq: Sequence[str]) -> bool:
        d = decompose(seq, hierarchy)
        return any(c.key not in known for c in (*d.status, *d.action, d.entity))

    return is_anomalous


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="hdfs-demo", choices=["hdfs-demo", "thunderbird-demo"])
    ap.add_argument("--hierarchy", default="official", choices=["official", "offline"])
    ap.add_argument("--sessions", type=int, default=200_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    sessions = load_demo(args.dataset)
    train, test = split(sessions, args.dataset, 80, "official")
    hierarchy = load_hierarchy(args.dataset, args.hierarchy)
    reps = -(-args.sessions // len(test))
    workload = [list(s) for s in test.sequences] * reps  # fresh lists: no identity shortcuts
    n = len(workload)

    ref = reference_detector(train.sequences, hierarchy)
    t0 = time.perf_counter()
    ref_flags = [ref(s) for s in workload[: min(n, 50_000)]]
    ref_rate = rate(len(ref_flags), time.perf_counter() - t0)

    figures: dict[str, object] = {"dataset": args.dataset, "hierarchy": args.hierarchy, "sessions": n,
                                  "distinct_sessions": len({tuple(s) for s in workload}),
                                  "reference_sessions_per_s": ref_rate}
    nocache = LocalContextDetector(hierarchy, automaton=False, cache_size=0).fit(train.sequences)
    t0 = time.perf_counter()
    nocache.predict(workload)
    figures["nocache_sessions_per_s"] = rate(n, time.perf_counter() - t0)

    det = LocalContextDetector(hierarchy, automaton=False).fit(train.sequences)
    t0 = time.perf_counter()
    cold = det.predict(workload)
    figures["cold_sessions_per_s"] = rate(n, time.perf_counter() - t0)
    t0 = time.perf_counter()
    warm = det.predict(workload)
    figures["warm_sessions_per_s"] = rate(n, time.perf_counter() - t0)
    assert (cold == warm).all() and [bool(x) for x in cold[: len(ref_flags)]] == ref_flags
    for name in ("nocache", "cold", "warm"):
        figures[f"{name}_vs_reference"] = round(figures[f"{name}_sessions_per_s"] / ref_rate, 1)  # type: ignore[operator]
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    if args.json:
        print(json.dumps(figures))
        return
    print(f"{args.dataset} ({args.hierarchy} hierarchy): {n:,} sessions, {figures['distinct_sessions']:,} distinct")
    print(f"  reference (object per chunk, no cache): {ref_rate:>12,.0f} sessions/s")
    for name, label in (("nocache", "no cache"), ("cold", "cold cache"), ("warm", "warm cache")):
        print(f"  {label:<38}: {figures[f'{name}_sessions_per_s']:>12,.0f} sessions/s "
              f"({figures[f'{name}_vs_reference']}x reference)")
    print(f"  peak RSS {figures['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
