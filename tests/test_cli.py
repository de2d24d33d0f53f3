"""The console script's error contract: an operational failure is one line naming the stage, exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from krone_jobs.cli import main


def test_an_operational_failure_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KRONE_TRACEBACK", raising=False)
    argv = ["score", "--source", "nope", "--date", "2026-11-01", "--data-root", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("krone score: no sessions partition for source=nope dt=2026-11-01") and "Traceback" not in err
    monkeypatch.setenv("KRONE_TRACEBACK", "1")  # for a bug report: the exception itself
    with pytest.raises(FileNotFoundError, match="no sessions partition"):
        main(argv)


def test_a_programming_error_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    import krone_jobs.jobs.score as score

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("a bug")

    monkeypatch.setattr(score, "run_score", broken)
    with pytest.raises(TypeError, match="a bug"):
        main(["score", "--source", "demo", "--date", "2026-11-01"])
