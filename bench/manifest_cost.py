"""What partition manifests and lineage cost: sealing a partition against writing it, the check every reader
makes, the hash check of ``krone status --check``, and the stale-partition scan of ``krone status`` (all days)
and of each parse run (the week before) over a long history.

Baselines in the same run: the pyarrow write of the same partition, and reading it whole. Everything is
written under ``--work`` (a temporary folder by default), never the repository.

    .venv/bin/python bench/manifest_cost.py [--rows 8000000] [--days 365] [--state-mib 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from krone_jobs.lineage import inputs, stale_before, stale_partitions
from krone_jobs.manifests import differences
from krone_jobs.partitions import check_written, partition_dir, raw_dir, read_table, seal, swap_in, temp_dir_for

SOURCE = "bench"


def _timed(fn, reps: int = 1) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def partition_costs(work: Path, rows: int) -> None:
    staged = work / "staged"
    staged.mkdir(parents=True)
    per_file = rows // 4
    table = pa.table({"session_id": [f"blk_{i:012d}" for i in range(per_file)],
                      "n_events": pa.array(range(per_file), pa.int64())})
    write = _timed(lambda: [pq.write_table(table, staged / f"part-{i:05d}.parquet") for i in range(4)])
    mib = sum(p.stat().st_size for p in staged.iterdir()) / 2**20
    target = partition_dir(work, "sessions", SOURCE, "2026-11-01")
    sealing = _timed(lambda: seal(staged, target))
    swap_in(staged, target)
    check = _timed(lambda: check_written(target), reps=100)
    whole = _timed(lambda: read_table(target))
    hashes = _timed(lambda: differences(target, content=True))
    print(f"partition: {rows:,} rows in 4 files, {mib:,.1f} MiB")
    print(f"  pyarrow write {write:.2f} s; seal (footers + SHA-256) {sealing:.2f} s = {sealing / write:.2f}x the write "
          f"({mib / sealing:,.0f} MiB/s)")
    print(f"  reader's check (names, sizes) {check * 1e3:.3f} ms; reading it whole {whole:.2f} s")
    print(f"  --check's hash comparison {hashes:.2f} s ({mib / hashes:,.0f} MiB/s)")


def lineage_costs(work: Path, days: int, state_mib: float) -> None:
    """A source with ``days`` days: 10 raw files, a miner state of ``state_mib`` MiB, and parsed, sessions,
    open and kseqs partitions per day, each recording its inputs as the stages do."""
    first = date(2025, 1, 1)
    state = work / "state" / SOURCE / "templates"
    state.mkdir(parents=True)
    block = os.urandom(int(state_mib * 2**20))
    previous: Path | None = None
    open_before = work / "state" / SOURCE / "open" / "dt=2024-12-31"

    def write(target: Path, built_from: dict) -> Path:  # type: ignore[type-arg]
        staged = temp_dir_for(target)
        staged.mkdir(parents=True)
        pq.write_table(pa.table({"x": [target.name]}), staged / "part-00000.parquet")
        swap_in(staged, target, built_from)
        return target

    for n in range(days):
        dt = (first + timedelta(days=n)).isoformat()
        raw = raw_dir(work, SOURCE, dt)
        raw.mkdir(parents=True)
        for i in range(10):
            (raw / f"host-{i}.log").write_bytes(b"x" * (1000 + n))
        parsed = write(partition_dir(work, "parsed", SOURCE, dt),
                       inputs(work, files=[previous], raw=sorted(raw.iterdir())))
        sessions_in = inputs(work, partitions=[parsed, open_before])
        sessions = write(partition_dir(work, "sessions", SOURCE, dt), sessions_in)
        open_before = write(work / "state" / SOURCE / "open" / f"dt={dt}", sessions_in)
        write(partition_dir(work, "kseqs", SOURCE, dt), inputs(work, partitions=[sessions]))
        previous = state / f"dt={dt}.json"
        previous.write_bytes(block + dt.encode())
    last = (first + timedelta(days=days - 1)).isoformat()
    (raw_dir(work, SOURCE, last) / "late.log").write_bytes(b"late\n")
    everything = _timed(lambda: stale_partitions(work, SOURCE))
    week = _timed(lambda: stale_before(work, SOURCE, (first + timedelta(days=days)).isoformat()))
    found = stale_partitions(work, SOURCE)
    print(f"lineage: {days} days, {4 * days:,} partitions, miner states of {state_mib:g} MiB "
          f"({days * state_mib / 1024:,.2f} GiB of state)")
    print(f"  krone status (every day): {everything:.2f} s; a parse run (the week before): {week * 1e3:.0f} ms; "
          f"stale found: {len(found)} ({', '.join(s.partition for s in found)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8_000_000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--state-mib", type=float, default=5.0)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="krone-manifest-bench-"))
    try:
        print(f"load average {os.getloadavg()[0]:.2f}")
        partition_costs(work / "partition", a.rows)
        lineage_costs(work / "lineage", a.days, a.state_mib)
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
