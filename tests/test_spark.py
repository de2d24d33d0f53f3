"""The Spark session settings (no JVM started here: the jobs' tests run Spark itself)."""

from __future__ import annotations

import pytest

from krone_jobs.spark import DEFAULT_CONF, JAVA_OPTIONS, LOG4J2, session_conf


def test_local_embedded_runs_log_quietly_and_everything_else_keeps_its_logging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SPARK_HOME", raising=False)
    monkeypatch.delenv("SPARK_CONF_DIR", raising=False)
    local = session_conf("local[2]")
    assert local[JAVA_OPTIONS] == f"-Dlog4j2.configurationFile={LOG4J2.as_uri()}" and LOG4J2.is_file()
    assert {k: local[k] for k in DEFAULT_CONF} == DEFAULT_CONF
    assert "rootLogger.level = warn" in LOG4J2.read_text(encoding="utf-8")
    assert JAVA_OPTIONS not in session_conf("spark://master:7077")  # a cluster has its own configuration
    mine = session_conf("local[2]", {JAVA_OPTIONS: "-Dmy.flag=1", "spark.sql.shuffle.partitions": "8"})
    assert mine[JAVA_OPTIONS] == "-Dmy.flag=1" and mine["spark.sql.shuffle.partitions"] == "8"
    monkeypatch.setenv("SPARK_CONF_DIR", "/etc/spark/conf")  # an installation's own log4j2 / defaults
    assert JAVA_OPTIONS not in session_conf("local[2]")
