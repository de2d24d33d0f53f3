"""One SparkSession for the Spark job tests, and one generated two-day pipeline run they share.

The pipeline (generate -> parse -> sessionize -> hierarchy -> kseqs on two days) is run once per session
because Spark jobs cost seconds each on two shared cores; tests that change outputs work on copies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from krone_jobs.synthetic import GenerateSummary, generate

SOURCE = "syn"
DAYS = ("2026-11-01", "2026-11-02")


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """local[2], no UI, 2 shuffle partitions; stopped at the end so py4j does not log into closed streams."""
    logging.getLogger("py4j").setLevel(logging.WARNING)
    from krone_jobs.spark import get_spark

    session = get_spark("krone-tests", master="local[2]", conf={"spark.driver.memory": "1g"})
    yield session
    session.stop()


@dataclass(frozen=True)
class Pipeline:
    """What the shared run produced (test modules repeat SOURCE and DAYS: a conftest is not importable)."""

    root: Path
    summary: GenerateSummary
    parse: dict[str, Any]
    sessionize: dict[str, Any]
    hierarchy: Any
    kseqs: dict[str, Any]


@pytest.fixture(scope="session")
def pipeline(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """Two generated days (~150 jobs each, some crossing midnight) through every stage up to kseqs."""
    from krone_jobs.jobs.hierarchy_job import run_hierarchy
    from krone_jobs.jobs.kseqs import run_kseqs
    from krone_jobs.jobs.parse import run_parse
    from krone_jobs.jobs.sessionize import run_sessionize

    root = tmp_path_factory.mktemp("pipeline")
    summary = generate(root, days=2, sessions_per_day=150, seed=7, start_date=DAYS[0], source=SOURCE)
    parse = {d: run_parse(SOURCE, d, "krone", data_root=root, spark=spark) for d in DAYS}
    sessionize = {d: run_sessionize(SOURCE, d, data_root=root, spark=spark) for d in DAYS}
    hierarchy = run_hierarchy(SOURCE, data_root=root)
    kseqs = {d: run_kseqs(SOURCE, d, data_root=root, spark=spark) for d in DAYS}
    return Pipeline(root, summary, parse, sessionize, hierarchy, kseqs)
