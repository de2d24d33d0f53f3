"""One writer per source: a second run waits for the first, says for whom, gives up after its wait, and a
killed holder leaves nothing locked. The holder is a real second process."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from krone_jobs.retention import run_retention
from krone_jobs.source_lock import SourceBusy, lock_path, running, source_lock

SOURCE = "web"
HOLD = """
import sys, time
from pathlib import Path
from krone_jobs.source_lock import source_lock
with source_lock(Path(sys.argv[1]), "web", "parse 2026-12-01", wait_s=0):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(root: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the source's lock for ``seconds``, once it has said so."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_waits_for_the_first_and_says_for_whom(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    holder = _holder(tmp_path, 1.5)
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger="krone_jobs.source_lock"), source_lock(tmp_path, SOURCE, "kseqs x"):
        waited = time.monotonic() - t0
    holder.wait(timeout=30)
    assert waited >= 0.5, waited
    said = caplog.text
    assert "web: kseqs x waits for another run of the source: parse 2026-12-01 holds it (process " in said
    assert "kseqs x has the lock" in said


def test_a_stage_gives_up_after_its_wait_naming_the_holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = _holder(tmp_path, 20)
    try:
        monkeypatch.setenv("KRONE_LOCK_WAIT_MINUTES", "0.01")
        with pytest.raises(SourceBusy, match=r"web: retention 2026-12-02 waited 0\.01 min for another run of the "
                                             r"source \(parse 2026-12-01 holds it \(process \d+ on "):
            run_retention(SOURCE, "2026-12-02", data_root=tmp_path, keep_days=2)
        assert run_retention(SOURCE, "2026-12-02", data_root=tmp_path, keep_days=2, dry_run=True).removed == 0
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert run_retention(SOURCE, "2026-12-02", data_root=tmp_path, keep_days=2).removed == 0  # free again


def test_a_killed_holder_leaves_the_source_free_and_status_says_who_runs(tmp_path: Path) -> None:
    assert running(tmp_path, SOURCE) is None  # never locked: no file
    holder = _holder(tmp_path, 60)
    assert (running(tmp_path, SOURCE) or "").startswith("parse 2026-12-01 holds it (process ")
    holder.send_signal(signal.SIGKILL)  # a task timeout, the OOM killer: no clean-up runs
    holder.wait(timeout=30)
    assert running(tmp_path, SOURCE) is None
    with source_lock(tmp_path, SOURCE, "parse 2026-12-02", wait_s=0):
        assert lock_path(tmp_path, SOURCE).is_file()


def test_the_holding_thread_takes_it_again_and_another_thread_waits(tmp_path: Path) -> None:
    order: list[str] = []

    def other() -> None:
        with source_lock(tmp_path, SOURCE, "other", wait_s=10):
            order.append("other")

    with source_lock(tmp_path, SOURCE, "outer", wait_s=0):
        with source_lock(tmp_path, SOURCE, "inner", wait_s=0):  # a stage calling another
            thread = threading.Thread(target=other)
            thread.start()
            time.sleep(0.3)
            order.append("inner")
        order.append("outer")
    thread.join(timeout=10)
    assert order == ["inner", "outer", "other"]


def test_a_source_name_that_is_not_one_is_refused_before_any_path_is_made(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="source must be"), source_lock(tmp_path, "../etc", "parse x"):
        pass
    assert not (tmp_path / "state").exists()
