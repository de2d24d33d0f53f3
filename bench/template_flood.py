"""A flood of unique text the masks miss: Drain's plain leaf search vs the indexed one, and the parse stage.

1. **Drain alone** (one process): mine then match N unique texts of random words (no digits, so nothing is
   masked), once spread over many prefix-tree leaves (random first words) and once under one prefix
   (``user said ...``), with Drain's own ``fast_match`` (baseline) and with
   :class:`~krone_jobs.drain_search.IndexedLeafSearch`; the same on real lines (the 20,000 raw HDFS lines,
   a rendered Thunderbird day) to show that real logs lose nothing. Figures: seconds and template
   comparisons (``get_seq_distance`` calls); both sides must end with identical miner states. Then the
   seconds to load the state left (``TemplateStore.from_json``) against Drain's own filing of its clusters.
2. **Parse stage** (Spark ``local[2]``): the 20,000 real HDFS lines alone (baseline) and with N garbage
   lines of each shape mixed in, under the default day budget ``KRONE_MAX_NEW_TEMPLATES``: seconds per step,
   new templates, lines quarantined as ``template_flood``.

Real data comes from ``/work/shared/data`` (``--shared``); generated data into ``--work`` (never the repo).

    .venv/bin/python bench/template_flood.py --texts 10000 --lines 200000
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HDFS_DAY = "2008-11-09"


def garbage(n: int, shape: str, seed: int = 7) -> Iterator[str]:
    """Unique lines of random letter words; ``one_prefix`` puts them all under one leaf of Drain's tree."""
    rng = random.Random(seed)
    for _ in range(n):
        words = " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
                         for _ in range(10 if shape == "one_prefix" else rng.randint(4, 14)))
        yield ("user said " + words) if shape == "one_prefix" else words


def drain_run(texts: list[str], *, plain: bool) -> dict[str, Any]:
    from krone_jobs.templates import MinerSettings, TemplateStore

    store = TemplateStore(MinerSettings())
    drain = store._miner.drain
    if plain:
        drain.fast_match = store._search.plain
    distance, calls = drain.get_seq_distance, [0]

    def counted(*args: Any) -> Any:
        calls[0] += 1
        return distance(*args)

    drain.get_seq_distance = counted
    t = time.perf_counter()
    for text in texts:
        store.mine(text)
    for text in texts:
        store.match(text)
    return {"seconds": round(time.perf_counter() - t, 2), "comparisons": calls[0],
            "templates": len(store.templates()), "state": store.to_json()}


def load_seconds(state: str) -> tuple[float, float]:
    """Seconds to load a miner state: ``TemplateStore.from_json``, and Drain's own filing of the same clusters
    one by one (``add_seq_to_prefix_tree``, what ``from_json`` did before: quadratic in a leaf's size)."""
    from krone_jobs.templates import TemplateStore

    t = time.perf_counter()
    restored = TemplateStore.from_json(state)
    ours = time.perf_counter() - t
    drain = TemplateStore(restored.settings)._miner.drain
    t = time.perf_counter()
    for cluster in sorted(restored._miner.drain.clusters, key=lambda c: c.cluster_id):
        drain.id_to_cluster[cluster.cluster_id] = cluster
        drain.add_seq_to_prefix_tree(drain.root_node, cluster)
    return ours, time.perf_counter() - t


def drain_alone(sets: dict[str, list[str]]) -> None:
    print("1. Drain alone: mine + match every text once (plain = Drain's fast_match); loading the state it left")
    for name, texts in sets.items():
        plain, indexed = drain_run(texts, plain=True), drain_run(texts, plain=False)
        state = indexed.pop("state")
        same = plain.pop("state") == state
        load, filing = load_seconds(state)
        print(f"  {name:34s} {len(texts):>7,} texts  plain {plain['seconds']:>7.2f} s "
              f"{plain['comparisons']:>12,} cmp | indexed {indexed['seconds']:>6.2f} s {indexed['comparisons']:>10,} cmp"
              f" | {plain['seconds'] / max(indexed['seconds'], 1e-3):5.1f}x, {plain['templates']:,} templates,"
              f" same state: {same} | load {load:.2f} s (Drain's filing {filing:.2f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=10_000, help="unique texts for the Drain-alone runs")
    ap.add_argument("--lines", type=int, default=200_000, help="garbage lines added to the parse-stage day")
    ap.add_argument("--shared", type=Path, default=Path("/work/shared/data"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/krone-bench-flood"))
    a = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    hdfs = (a.shared / "hdfs" / "HDFS_first20k.log").read_text(encoding="utf-8").splitlines()
    tb_day = sorted((a.shared / "rendered" / "thunderbird").glob("dt=*/*.log.gz"))[0]
    with gzip.open(tb_day, "rt", encoding="utf-8", errors="replace") as f:
        tb = [line.split(": ", 1)[-1] for line in f]
    sets = {"unique, spread": list(garbage(a.texts, "spread")),
            "unique, one prefix": list(garbage(a.texts, "one_prefix")),
            "real: HDFS 20k lines (content)": [line.split(": ", 1)[-1] for line in hdfs],
            f"real: Thunderbird {tb_day.parent.name}": tb}
    drain_alone(sets)
    parse_day(a.work, hdfs, a.lines)


def parse_day(work: Path, hdfs: list[str], n: int) -> None:
    from krone_jobs.config import settings
    from krone_jobs.jobs.parse import TEMPLATE_FLOOD, run_parse
    from krone_jobs.spark import get_spark

    spark = get_spark()
    print(f"2. Parse stage, Spark local[2], day budget {settings().max_new_templates:,} new templates")
    for shape in ("none", "spread", "one_prefix"):
        root = work / shape
        shutil.rmtree(root, ignore_errors=True)
        folder = root / "raw" / "hdfs" / f"dt={HDFS_DAY}"
        folder.mkdir(parents=True)
        rng, lines = random.Random(3), list(hdfs)
        if shape != "none":
            for i, text in enumerate(garbage(n, shape)):
                lines.insert(rng.randrange(len(lines) + 1),
                             f"081109 20{i % 60:02d}18 143 INFO dfs.DataNode$PacketResponder: {text} blk_{i}")
        (folder / "day.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
        m = run_parse("hdfs", HDFS_DAY, "hdfs", data_root=root, spark=spark, gate=False)
        print(f"  {shape:10s} {m.raw_lines:>8,} lines {m.seconds:>7.2f} s {json.dumps(m.steps)} "
              f"new templates {m.new_templates:,}, {TEMPLATE_FLOOD} {m.quarantine_reasons.get(TEMPLATE_FLOOD, 0):,} "
              f"lines, parsed {m.parsed:,}")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
