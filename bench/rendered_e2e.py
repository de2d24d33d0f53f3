"""Raw lines -> our parse stages -> F1 (Local-Context and routed), vs the same on the authors' pre-parsed demo.

The rendered logs (``/work/shared/data/rendered/{hdfs,thunderbird}``: 5 daily ``.gz`` files re-rendered from
the KRONE demo sessions, see their README) go through :func:`run_parse`, :func:`run_sessionize`,
:func:`run_hierarchy` and :func:`run_kseqs` exactly as a nightly run would (one more, empty day closes the
sessions still open at the end of day 5); the distinct KRONE Seqs the kseqs stage wrote must be exactly those
of the sessions cut in this process with the stage's hierarchy, which the detectors then use. Each
session is mapped to the demo's ``seq_id`` through ``labels.csv`` (HDFS: the block id; Thunderbird: node
and first epoch second via ``sessions.csv``, since our node-window key is ``<node>#<first epoch>``).
Then each detector (``--detectors``: the authors' Local-Context mode and the routed detector that ``krone
night`` scores with, both as ``krone evaluate --detector`` builds them) is trained on the training ids of each
official split (``--train-percents``, 80 / 10 / 1 %) and judged on its test ids twice, with the offline
extractor's hierarchy in both:

* **ours**: our template ids, hierarchy from our mined template texts;
* **pre-parsed**: the demo's template ids, hierarchy from the authors' template texts (what
  ``krone evaluate --hierarchy offline`` does).

Where the two differ, the cause is template granularity: a rendered line is the demo's event number ``k`` of its
session, so each of our ids can be lined up with the authors' id of the same event. Two more figures say how
much of the difference each kind of split explains: **ours** again with the lines of every authors' template
the render tool filled without a real example line (``manifest.json``: ``generic`` or ``override`` values,
e.g. a pool of unrelated tokens) given back one id per authors' template, and with *every* authors' template
we split given back one id. The Local-Context mode flags every KRONE Seq unseen in training, so it is the
detector most sensitive to template granularity; the routed one judges unseen chunks in context.

    .venv/bin/python bench/rendered_e2e.py [--systems hdfs thunderbird] [--detectors local routed]
                                           [--train-percents 80 10 1] [--work /tmp/krone-rendered-e2e]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from krone_jobs.config import settings
from krone_jobs.datasets import default_data_dir, load_demo, load_demo_templates, official_split
from krone_jobs.evaluate import EvalConfig, confusion, make_detector
from krone_jobs.hierarchy.extractor import build_hierarchy
from krone_jobs.hierarchy.model import Hierarchy
from krone_jobs.hierarchy.offline import OfflineExtractor

SYSTEMS = {"hdfs": ("hdfs", "hdfs-demo"), "thunderbird": ("thunderbird", "thunderbird-demo")}
DETECTORS = ("local", "routed")
TRAIN_PERCENTS = (80, 10, 1)


def _link_raw(rendered: Path, root: Path, system: str) -> list[str]:
    """Symlink the rendered day files into ``root/raw/<system>/dt=D/``; return the days plus one empty day (its
    marker says the source logged nothing that day), which closes the sessions still open after the last."""
    days = sorted(p.name.removeprefix("dt=") for p in rendered.glob("dt=*"))
    for day in days:
        for src in (rendered / f"dt={day}").iterdir():
            link = root / "raw" / system / f"dt={day}" / src.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(src)
    empty = (date.fromisoformat(days[-1]) + timedelta(days=1)).isoformat()
    (root / "raw" / system / f"dt={empty}").mkdir(parents=True, exist_ok=True)
    (root / "raw" / system / f"dt={empty}" / settings().raw_marker).touch()
    return [*days, empty]


def by_our_id(rendered: Path, system: str, column: str) -> dict[str, int]:
    """Our session id -> an int column of ``labels.csv`` (``seq_id``, ``label``). HDFS: the block id is ours
    too; Thunderbird: ours is ``<node>#<first epoch>``, found through ``sessions.csv``."""
    with open(rendered / "labels.csv", newline="") as fh:
        value = {row["session_id"]: int(row[column]) for row in csv.DictReader(fh)}
    if system == "hdfs":
        return value
    with open(rendered / "sessions.csv", newline="") as fh:
        return {f"{row['node']}#{row['first_epoch']}": value[row["session_id"]] for row in csv.DictReader(fh)}


def _score(hierarchy: Hierarchy, train: list[tuple[str, ...]], test: list[tuple[str, ...] | None], y: np.ndarray,
           dataset: str, detector_name: str) -> dict[str, Any]:
    """Fit on ``train``, judge ``test``; a test session we did not rebuild (``None``) counts as normal."""
    config = EvalConfig(dataset, hierarchy="offline", detector=detector_name)
    detector = make_detector(config, hierarchy).fit(train)
    present = [i for i, s in enumerate(test) if s is not None]
    pred = np.zeros(len(test), dtype=np.int8)
    pred[present] = detector.predict([test[i] for i in present])
    return confusion(y, pred)


Sessions = dict[int, tuple[str, ...]]


def _collapsed(ours: Sessions, authors: Sessions, merge: set[str], templates: dict[str, str],
               authors_templates: dict[str, str]) -> tuple[Hierarchy, Sessions]:
    """Our sessions with every event whose authors' id is in ``merge`` renamed to that one id (``A<id>``);
    a session whose length differs from the demo's (not lined up) is kept as it is."""
    seqs = {}
    for i, seq in ours.items():
        theirs = authors.get(i, ())
        lined_up = len(seq) == len(theirs)
        seqs[i] = tuple(f"A{a}" if a in merge else o for o, a in zip(seq, theirs)) if lined_up else seq
    texts = {**templates, **{f"A{a}": authors_templates[a] for a in merge}}
    return build_hierarchy(texts, OfflineExtractor()), seqs


def _split_sets(rendered: Path, ours: Sessions, authors: Sessions) -> dict[str, set[str]]:
    """The authors' templates we split: those the render tool filled with synthetic values, and all of them."""
    ours_of: dict[str, set[str]] = {}
    for i, seq in ours.items():
        if len(seq) == len(authors.get(i, ())):
            for o, a in zip(seq, authors[i]):
                ours_of.setdefault(a, set()).add(o)
    split = {a for a, os in ours_of.items() if len(os) > 1}
    manifest = json.loads((rendered / "manifest.json").read_text())
    synthetic = {a for a, d in manifest.get("templates_without_real_example", {}).items()
                 if d["provenance"] in ("generic", "override")}
    return {"synthetic_values_merged": split & synthetic, "all_splits_merged": split}


def run_system(system: str, work: Path, spark: Any, detectors: tuple[str, ...] = DETECTORS,
               train_percents: tuple[int, ...] = TRAIN_PERCENTS) -> dict[str, Any]:
    from krone_jobs.hierarchy.kseqs import decompose
    from krone_jobs.jobs.hierarchy_job import load_hierarchy, run_hierarchy
    from krone_jobs.jobs.kseqs import run_kseqs
    from krone_jobs.jobs.parse import run_parse
    from krone_jobs.miner_state import latest_templates
    from krone_jobs.jobs.sessionize import run_sessionize
    from krone_jobs.partitions import partition_dir

    fmt, dataset = SYSTEMS[system]
    rendered = default_data_dir() / "rendered" / system
    root = work / system
    days = _link_raw(rendered, root, system)
    t0 = time.perf_counter()
    parse = [run_parse(system, d, fmt, data_root=root, spark=spark) for d in days]
    sess = [run_sessionize(system, d, data_root=root, spark=spark) for d in days]
    seconds = time.perf_counter() - t0
    run_hierarchy(system, data_root=root)
    kseq_metrics = [run_kseqs(system, d, data_root=root, spark=spark) for d in days]
    seconds_all = time.perf_counter() - t0

    import pandas as pd

    sessions = pd.concat([pd.read_parquet(partition_dir(root, "sessions", system, d)) for d in days])
    store = latest_templates(root, system)
    assert store is not None
    templates = {t.template_id: t.template for t in store.templates()}
    ours_h = load_hierarchy(root, system)  # the hierarchy stage's own (offline extractor)
    seq_of = by_our_id(rendered, system, "seq_id")
    ours = {seq_of[s]: tuple(t if t in ours_h else store.resolve(t) for t in ids)
            for s, ids in zip(sessions["session_id"], sessions["template_ids"]) if s in seq_of}

    demo = load_demo(dataset)
    by_id = dict(zip(demo.ids, demo.sequences))
    label = dict(zip(demo.ids, demo.labels.tolist()))
    authors_templates = load_demo_templates(dataset)
    authors_h = build_hierarchy(authors_templates, OfflineExtractor())
    splits = _split_sets(rendered, ours, by_id)
    merged = {name: _collapsed(ours, by_id, merge, templates, authors_templates) for name, merge in splits.items()}
    judged: dict[str, dict[str, Any]] = {}
    missing = 0
    for tp in train_percents:
        train_ids, test_ids = official_split(dataset, tp)
        missing += sum(i not in ours for i in [*train_ids, *test_ids])
        y = np.asarray([label[i] for i in test_ids], dtype=np.int8)
        for name in detectors:
            ours_fig = _score(ours_h, [ours[i] for i in train_ids if i in ours], [ours.get(i) for i in test_ids], y,
                              dataset, name)
            pre_fig = _score(authors_h, [by_id[i] for i in train_ids], [by_id[i] for i in test_ids], y, dataset, name)
            row = {"f1_ours": ours_fig["f1"], "f1_preparsed": pre_fig["f1"], "ours": ours_fig, "preparsed": pre_fig}
            for what, (hierarchy, seqs) in merged.items():  # ours with the split templates given back one id
                row[f"f1_{what}"] = _score(hierarchy, [seqs[i] for i in train_ids if i in seqs],
                                           [seqs.get(i) for i in test_ids], y, dataset, name)["f1"]
            judged[f"{name}@{tp}"] = row
    written = set(pd.concat([pd.read_parquet(partition_dir(root, "kseqs", system, d), columns=["level", "key"])
                             for d in days]).itertuples(index=False, name=None))
    cut_here = {(c.level, c.key) for ids in sessions["template_ids"]
                for dec in [decompose([t if t in ours_h else store.resolve(t) for t in ids], ours_h)]
                for c in (*dec.status, *dec.action, dec.entity)}
    same_length = sum(len(ours[i]) == len(by_id[i]) for i in ours if i in by_id)
    return {
        "system": system, "days": len(days), "raw_lines": sum(m.raw_lines for m in parse),
        "quarantined": sum(m.quarantined for m in parse), "templates_ours": len(store.templates()),
        "templates_authors": len(authors_templates), "sessions": int(len(sessions)),
        "sessions_mapped": len(ours), "sessions_same_length": same_length, "missing_split_ids": missing,
        "open_at_end": sess[-1].open_sessions, "parse_sessionize_seconds": round(seconds, 1),
        "all_stages_seconds": round(seconds_all, 1), "kseqs_distinct": len(written),
        "kseqs_unknown_template": sum(m.sessions_unknown_template for m in kseq_metrics),
        "kseqs_match_cut": written == cut_here,
        "authors_templates_split": len(splits["all_splits_merged"]),
        "split_synthetic_values": len(splits["synthetic_values_merged"]), "detectors": judged,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    p.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=list(DETECTORS))
    p.add_argument("--train-percents", type=int, nargs="+", default=list(TRAIN_PERCENTS), choices=TRAIN_PERCENTS)
    p.add_argument("--work", type=Path, default=Path("/tmp/krone-rendered-e2e"))
    a = p.parse_args(argv)
    from krone_jobs.spark import get_spark

    spark = get_spark("rendered-e2e")
    for system in a.systems:
        r = run_system(system, a.work, spark, tuple(a.detectors), tuple(a.train_percents))
        print(f"{system}: {r['raw_lines']:,} lines ({r['quarantined']} quarantined), {r['templates_ours']} templates "
              f"(authors: {r['templates_authors']}), {r['sessions']:,} sessions ({r['sessions_mapped']:,} mapped to "
              f"seq_id, {r['sessions_same_length']:,} with the demo's length, {r['missing_split_ids']} split ids "
              f"missing), parse+sessionize {r['parse_sessionize_seconds']} s, with hierarchy and kseqs "
              f"{r['all_stages_seconds']} s; {r['kseqs_distinct']:,} distinct KRONE Seqs written "
              f"({'the same as' if r['kseqs_match_cut'] else 'NOT the same as'} an in-process cut, "
              f"{r['kseqs_unknown_template']} sessions with an unknown template); {r['authors_templates_split']} "
              f"authors' templates split by us ({r['split_synthetic_values']} filled with synthetic values by the "
              f"render tool)", flush=True)
        for name, d in r["detectors"].items():
            diff = d["f1_ours"] - d["f1_preparsed"]
            print(f"  {name:<10} F1 ours {d['f1_ours']:.4f} vs pre-parsed {d['f1_preparsed']:.4f} (diff {diff:+.4f}, "
                  f"{'within' if abs(diff) <= 0.01 else 'NOT within'} 0.01); ours "
                  f"{d['f1_synthetic_values_merged']:.4f} with the synthetic-value splits merged back, "
                  f"{d['f1_all_splits_merged']:.4f} with all merged back", flush=True)
        print(json.dumps(r))
    spark.stop()


if __name__ == "__main__":
    main()
