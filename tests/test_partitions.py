"""The per-source record the parse job leaves for later stages."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from krone_jobs.logformats import SessionSpec
from krone_jobs.partitions import record_source_format, source_format, source_session, state_dir


def test_source_record_keeps_format_and_session_rule(tmp_path: Path) -> None:
    spec = SessionSpec("id_pattern", r"\b(req-\d+)\b")
    record_source_format(tmp_path, "gw", "gateway", asdict(spec))
    assert source_format(tmp_path, "gw") == "gateway"
    recorded = source_session(tmp_path, "gw")
    assert recorded is not None and SessionSpec(**recorded) == spec


def test_a_record_from_before_session_rules_were_kept_has_none(tmp_path: Path) -> None:
    path = state_dir(tmp_path, "hdfs") / "source.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": "hdfs"}), encoding="utf-8")
    assert (source_format(tmp_path, "hdfs"), source_session(tmp_path, "hdfs")) == ("hdfs", None)
