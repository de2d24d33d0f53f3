"""``krone demo``: the README's first command, small, in both log layouts (here because it runs on Spark)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from krone_jobs.demo import run_demo


def test_the_demo_night_is_the_same_from_text_and_from_json_lines(
        spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures: dict[str, dict[str, Any]] = {}
    for layout in ("text", "json"):
        home = tmp_path / layout
        for var in ("KRONE_DATA_ROOT", "KRONE_MLFLOW_URI", "KRONE_MLFLOW_ARTIFACTS", "KRONE_WAREHOUSE_URL"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("KRONE_HOME", str(home))  # the embedded defaults under it, as `krone demo` uses them
        said: list[str] = []
        result = run_demo(days=3, sessions_per_day=150, seed=2, layout=layout, say=said.append)
        assert [line.split("]")[0].strip(" [") for line in said[1:]] == [
            "generate", "parse", "parse", "parse", "train", "score", "report"]
        assert Path(result.paths["report"]).is_file() and result.paths["data_root"] == str(home / "data")
        figures[layout] = result.figures
    same = ("sessions", "anomalies", "tp", "fp", "fn")
    assert {k: figures["json"][k] for k in same} == {k: figures["text"][k] for k in same}
    assert figures["text"]["tp"] > 0
