from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from krone_jobs.cli import main
from krone_jobs.evaluate import EvalConfig, confusion, run_evaluation

# The authors' own figures (official/README.md): dataset, train %, automaton -> TP, FP, TN, FN, F1
AUTHORS = [
    ("hdfs-demo", 80, False, (578, 18, 3403, 1), 0.9838),
    ("hdfs-demo", 10, False, (579, 440, 16981, 0), 0.7247),
    ("hdfs-demo", 1, False, (579, 2570, 16651, 0), 0.3106),
    ("thunderbird-demo", 80, True, (159, 62, 3779, 0), 0.8368),
    ("thunderbird-demo", 10, True, (159, 506, 17335, 0), 0.3859),
    ("thunderbird-demo", 1, True, (159, 1581, 18060, 0), 0.1675),
]


def test_confusion_figures() -> None:
    out = confusion(np.array([1, 1, 0, 0, 0]), np.array([1, 0, 1, 0, 0]))
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (1, 1, 2, 1)
    assert out["precision"] == 0.5 and out["recall"] == 0.5 and out["f1"] == 0.5
    assert confusion(np.zeros(3), np.zeros(3))["f1"] == 0.0


@pytest.mark.shared_data
@pytest.mark.parametrize(("dataset", "train_percent", "automaton", "counts", "f1"), AUTHORS)
def test_compat_reproduces_the_authors_figures_exactly(
    shared_data: Path, dataset: str, train_percent: int, automaton: bool, counts: tuple[int, ...], f1: float
) -> None:
    result = run_evaluation(
        EvalConfig(dataset, train_percent, "official", "local", automaton=None, compat=True, data_dir=shared_data)
    )
    assert result["automaton"] is automaton
    assert (result["tp"], result["fp"], result["tn"], result["fn"]) == counts
    assert result["f1"] == f1


@pytest.mark.shared_data
def test_cli_prints_one_json_object(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["evaluate", "--dataset", "hdfs-demo", "--train-percent", "80", "--hierarchy", "official",
            "--detector", "local", "--automaton", "off", "--compat", "--json", "--data-dir", str(shared_data)]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    for field in ("dataset", "train_percent", "hierarchy", "detector", "precision", "recall", "f1", "tp", "fp",
                  "tn", "fn", "per_level", "train_seconds", "detect_seconds", "sessions_per_s"):
        assert field in result
    assert set(result["per_level"]) == {"status", "action", "entity"}
    assert result["f1"] == 0.9838
