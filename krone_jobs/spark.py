"""The one place a SparkSession is built, so every job, test and DAG task runs Spark the same way.

Settings that matter for correctness, not just speed:

* ``PYSPARK_PYTHON`` defaults to this interpreter: workers started from a non-activated venv (Airflow, CI)
  would otherwise run the system ``python3`` without pyarrow.
* ``spark.sql.session.timeZone=UTC``: log timestamps are naive (the log's own clock) and stored as
  ``timestamp_ntz``; epoch arithmetic on them (session gaps) must not shift with the machine's zone.
* Arrow on, so Python stages exchange columnar batches (``mapInArrow``) instead of pickled rows.

pyspark is imported inside :func:`get_spark`: DAG files import the job modules when they are parsed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from krone_jobs.config import settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEFAULT_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.driver.memory": os.environ.get("KRONE_SPARK_DRIVER_MEMORY", "2g"),
    "spark.sql.parquet.compression.codec": "snappy",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
}


def get_spark(app_name: str = "krone", *, master: str | None = None, conf: Mapping[str, str] | None = None) -> SparkSession:
    """The active session, or a new one on ``settings().spark_master`` (``local[2]`` by default).

    ``conf`` adds or overrides entries of :data:`DEFAULT_CONF`; it only takes effect when a new session
    (and JVM) is started, as with any ``getOrCreate``.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name).master(master or settings().spark_master)
    for key, value in {**DEFAULT_CONF, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
