"""Hierarchy and KRONE Seq jobs on the generated two-day pipeline (end to end: parse -> ... -> kseqs)."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from krone_jobs.hierarchy.kseqs import decompose
from krone_jobs.hierarchy.model import Hierarchy, HierarchyError
from krone_jobs.jobs.hierarchy_job import hierarchy_path, load_hierarchy, run_hierarchy
from krone_jobs.miner_state import latest_templates
from krone_jobs.partitions import partition_dir, state_dir

SOURCE = "syn"
DAYS = ("2026-11-01", "2026-11-02")


def test_kseqs_are_the_distinct_chunks_of_the_days_sessions(pipeline: Any) -> None:
    hierarchy = Hierarchy.load_csv(hierarchy_path(pipeline.root, SOURCE))
    for day in DAYS:
        m = pipeline.kseqs[day]
        assert m.sessions_unknown_template == 0 and m.sessions == pipeline.sessionize[day].sessions
        sessions = pd.read_parquet(partition_dir(pipeline.root, "sessions", SOURCE, day))
        kseqs = pd.read_parquet(partition_dir(pipeline.root, "kseqs", SOURCE, day))
        expected: Counter[tuple[str, str, str]] = Counter()
        examples: dict[tuple[str, str, str], str] = {}
        for sid, tids in zip(sessions["session_id"], sessions["template_ids"]):
            d = decompose(list(tids), hierarchy)
            for c in (*d.status, *d.action, d.entity):
                expected[(c.level, c.key, c.cache_key)] += 1
                examples[(c.level, c.key, c.cache_key)] = min(sid, examples.get((c.level, c.key, c.cache_key), sid))
        got = {(r.level, r.key, r.cache_key): r for r in kseqs.itertuples()}
        assert {k: r.count for k, r in got.items()} == dict(expected)
        assert {k: r.example_session_id for k, r in got.items()} == examples
        assert sum(expected.values()) == m.chunks and sum(m.distinct.values()) == len(kseqs)
        assert set(kseqs["level"]) == {"status", "action", "entity"}
        row = kseqs.iloc[0]
        assert row.key == f"{row.level}|{row.parent}|{','.join(row.nodes)}"
        assert kseqs["cache_key"].str.fullmatch(r"[0-9a-f]{32}").all()


def test_hierarchy_grows_only_and_overrides_win_once(pipeline: Any, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(state_dir(pipeline.root, SOURCE), state_dir(root, SOURCE))
    path = hierarchy_path(root, SOURCE)
    before = path.read_bytes()
    old_rows = Hierarchy.load_csv(path)
    store = latest_templates(root, SOURCE)
    assert store is not None and set(Hierarchy.load_csv(path)) == {t.template_id for t in store.templates()}

    again = run_hierarchy(SOURCE, data_root=root)
    assert (again.new_templates, again.overrides_applied) == (0, 0) and path.read_bytes() == before

    target = sorted(Hierarchy.load_csv(path))[0]
    (state_dir(root, SOURCE) / "overrides.csv").write_text(f"template_id,entity,action,status\n{target},disk,flush,failed\n")
    first = run_hierarchy(SOURCE, data_root=root)
    row = Hierarchy.load_csv(path)[target]
    assert first.overrides_applied == 1 and (row.entity, row.action, row.status, row.origin) == ("disk", "flush", "failed", "override")
    with_override = path.read_bytes()
    assert run_hierarchy(SOURCE, data_root=root).overrides_applied == 0 and path.read_bytes() == with_override
    unchanged = {k: v for k, v in Hierarchy.load_csv(path).items() if k != target}
    assert unchanged == {k: v for k, v in old_rows.items() if k != target}  # existing node ids never move


def test_a_damaged_hierarchy_is_refused_with_the_copy_to_put_back(pipeline: Any, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(state_dir(pipeline.root, SOURCE), state_dir(root, SOURCE))
    path = hierarchy_path(root, SOURCE)
    damaged = path.read_bytes()[: path.stat().st_size // 2]  # a row cut inside: its placement is lost
    path.write_bytes(damaged)
    copy = state_dir(root, SOURCE) / "hierarchy" / f"dt={DAYS[-1]}.csv"
    for run in (lambda: load_hierarchy(root, SOURCE), lambda: run_hierarchy(SOURCE, data_root=root)):
        with pytest.raises(HierarchyError, match=rf"hierarchy\.csv, line \d+: no .*: the file is damaged: put back "
                                                 rf"{re.escape(str(copy))} \(the stage's copy of its last day\)"):
            run()
    assert path.read_bytes() == damaged  # the stage did not build on it
    shutil.copyfile(copy, path)
    assert load_hierarchy(root, SOURCE) == Hierarchy.load_csv(hierarchy_path(pipeline.root, SOURCE))


def test_a_damaged_page_spark_meets_mid_job_is_named(pipeline: Any, spark: Any, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from krone_jobs.jobs.kseqs import run_kseqs
    from krone_jobs.partitions import PartitionUnreadable

    root = tmp_path / "root"
    shutil.copytree(state_dir(pipeline.root, SOURCE), state_dir(root, SOURCE))
    shutil.copytree(partition_dir(pipeline.root, "sessions", SOURCE, DAYS[0]), partition_dir(root, "sessions", SOURCE, DAYS[0]))
    [part] = partition_dir(root, "sessions", SOURCE, DAYS[0]).glob("*.parquet")
    chunk = next(c for c in (pq.ParquetFile(part).metadata.row_group(0).column(j) for j in range(6))
                 if c.path_in_schema.startswith("template_ids"))  # a column the job reads
    data = bytearray(part.read_bytes())
    middle = chunk.data_page_offset + chunk.total_compressed_size // 2
    data[middle: middle + 32] = bytes(b ^ 0xFF for b in data[middle: middle + 32])
    part.write_bytes(bytes(data))
    with pytest.raises(PartitionUnreadable, match=rf"{re.escape(str(part))} is not a readable Parquet file .*"
                                                  rf"krone sessionize --source {SOURCE} --date {DAYS[0]}`"):
        run_kseqs(SOURCE, DAYS[0], data_root=root, spark=spark)
