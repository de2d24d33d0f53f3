"""The console script's error contract: an operational failure is one line naming the stage, exit 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from krone_jobs.cli import main
from krone_jobs.miner_state import templates_path
from krone_jobs.templates import TemplateStore
from krone_jobs.warehouse import Warehouse


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


@pytest.mark.parametrize(("body", "code", "printed", "traceback"), [
    ("raise TypeError('a bug')", 1, "TypeError: a bug", True),
    ("raise KeyboardInterrupt", 130, "KeyboardInterrupt", True),
    ("main(['--help'])", 0, "", False),
    ("main(['score'])", 2, "the following arguments are required: --source", False),
    ("raise SystemExit('krone train: no sessions partition')", 1, "krone train: no sessions partition\n", False),
])
def test_the_console_script_exits_with_the_code_and_keeps_what_it_printed(
        body: str, code: int, printed: str, traceback: bool) -> None:
    script = ("import krone_jobs.cli as cli\nmain = cli.main\n"
              f"def failing():\n    {body}\n    return 0\ncli.main = failing\ncli.run()")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == code
    assert printed in done.stderr and ("Traceback" in done.stderr) == traceback


def test_a_stage_run_from_the_cli_records_its_metrics_like_the_dag_task(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    monkeypatch.setenv("KRONE_WAREHOUSE_URL", url)
    store = TemplateStore()
    for line in ("job 1 started on node 3", "job 2 started on node 4", "disk quota exceeded for user alice"):
        store.mine(line)
    state = templates_path(tmp_path, "app", "2026-11-01")
    state.parent.mkdir(parents=True)
    state.write_text(store.to_json(), encoding="utf-8")

    assert main(["hierarchy", "--source", "app", "--data-root", str(tmp_path)]) == 0  # newest state: 11-01
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["dt"] == "2026-11-01" and printed["run_id"].startswith("manual__")
    with Warehouse(url) as wh, wh.engine.connect() as conn:
        metrics = dict(conn.execute(text("SELECT metric, value FROM run_metrics WHERE source = 'app' AND "
                                         "dt = '2026-11-01' AND stage = 'hierarchy'")).all())
        published = conn.execute(text("SELECT COUNT(*) FROM templates WHERE source = 'app'")).scalar_one()
    assert metrics["templates"] == printed["templates"] == published == 2


def test_retention_lists_then_removes_and_records_what_it_did(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    monkeypatch.setenv("KRONE_WAREHOUSE_URL", url)
    monkeypatch.delenv("KRONE_RETAIN_DAYS", raising=False)
    for dt in ("2026-11-01", "2026-11-02", "2026-11-03"):
        (tmp_path / "kseqs" / "source=app" / f"dt={dt}").mkdir(parents=True)
    argv = ["retention", "--source", "app", "--date", "2026-11-03", "--data-root", str(tmp_path)]
    assert main(argv) == 0 and "nothing removed" in capsys.readouterr().out  # no window: off
    assert main([*argv, "--keep-days", "1"]) == 2 and "at least 2 days" in capsys.readouterr().err
    assert main([*argv, "--keep-days", "2", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith(f"would remove {tmp_path / 'kseqs' / 'source=app' / 'dt=2026-11-01'}")
    assert (tmp_path / "kseqs" / "source=app" / "dt=2026-11-01").is_dir()
    monkeypatch.setenv("KRONE_RETAIN_DAYS", "2")
    assert main(argv) == 0
    assert not (tmp_path / "kseqs" / "source=app" / "dt=2026-11-01").exists()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["removed"] == 1 and printed["oldest_kept"] == "2026-11-02"
    with Warehouse(url) as wh, wh.engine.connect() as conn:
        recorded = dict(conn.execute(text("SELECT metric, value FROM run_metrics WHERE stage = 'retention'")).all())
    assert recorded["removed"] == 1 and recorded["by_kind.kseqs"] == 1
