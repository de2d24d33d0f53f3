"""The one place a SparkSession is built, so every job, test and DAG task runs Spark the same way.

Settings that matter for correctness, not just speed:

* ``PYSPARK_PYTHON`` defaults to this interpreter: workers started from a non-activated venv (Airflow, CI)
  would otherwise run the system ``python3`` without pyarrow.
* ``spark.sql.session.timeZone=UTC``: log timestamps are naive (the log's own clock) and stored as
  ``timestamp_ntz``; epoch arithmetic on them (session gaps) must not shift with the machine's zone.
* Arrow on, so Python stages exchange columnar batches (``mapInArrow``) instead of pickled rows.
* Local runs on the embedded defaults (a ``local`` master, no ``SPARK_HOME`` / ``SPARK_CONF_DIR`` and no
  driver Java options given) log with ``log4j2.properties`` next to this file: warnings only, without the
  start-up banner that would otherwise open every ``krone`` command's output. A Spark installation or a
  deployment keeps its own logging configuration.

pyspark is imported inside :func:`get_spark`: DAG files import the job modules when they are parsed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
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

JAVA_OPTIONS = "spark.driver.extraJavaOptions"
LOG4J2 = Path(__file__).with_name("log4j2.properties")


def session_conf(master: str, conf: Mapping[str, str] | None = None) -> dict[str, str]:
    """:data:`DEFAULT_CONF` with ``conf`` over it, plus the quiet driver logging of local embedded runs."""
    merged = {**DEFAULT_CONF, **(conf or {})}
    embedded = not (os.environ.get("SPARK_HOME") or os.environ.get("SPARK_CONF_DIR"))
    if master.startswith("local") and embedded and JAVA_OPTIONS not in merged:
        merged[JAVA_OPTIONS] = f"-Dlog4j2.configurationFile={LOG4J2.as_uri()}"
    return merged


def get_spark(app_name: str = "krone", *, master: str | None = None, conf: Mapping[str, str] | None = None) -> SparkSession:
    """The active session, or a new one on ``settings().spark_master`` (``local[2]`` by default).

    ``conf`` adds or overrides entries of :data:`DEFAULT_CONF`; it only takes effect when a new session
    (and JVM) is started, as with any ``getOrCreate``.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    master = master or settings().spark_master
    builder = SparkSession.builder.appName(app_name).master(master)
    for key, value in session_conf(master, conf).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
