"""Miner states are read where they live, and a damaged one names its file and the parse run that writes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from krone_jobs.miner_state import latest_templates, read_state, templates_path
from krone_jobs.templates import TemplateStateError, TemplateStore


def _state(root: Path, dt: str) -> Path:
    store = TemplateStore()
    for line in ("job 1 started on node 3", "job 2 started on node 4"):
        store.mine(line)
    path = templates_path(root, "app", dt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(store.to_json(), encoding="utf-8")
    return path


def test_the_newest_state_at_or_before_a_day_is_read(tmp_path: Path) -> None:
    _state(tmp_path, "2026-11-01")
    newest = _state(tmp_path, "2026-11-02")
    latest = latest_templates(tmp_path, "app")
    assert latest is not None and latest.to_json() == read_state(newest).to_json() == newest.read_text()
    assert latest_templates(tmp_path, "app", "2026-11-01") is not None
    assert latest_templates(tmp_path, "app", "2026-10-31") is None


@pytest.mark.parametrize("cut", [0.5, 0.0])  # cut short; empty (the parse stage used to start a fresh miner on it)
def test_a_damaged_state_names_its_file_and_the_parse_run_that_writes_it(tmp_path: Path, cut: float) -> None:
    path = _state(tmp_path, "2026-11-02")
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: int(len(text) * cut)], encoding="utf-8")
    with pytest.raises(TemplateStateError) as err:
        latest_templates(tmp_path, "app")
    message = str(err.value)
    assert message.startswith(f"{path}: malformed template state: JSONDecodeError(")
    assert message.endswith("run `krone parse --source app --date 2026-11-02 --format <the source's format>` again "
                            "to write it anew from its input (then the stages after it), or restore it from a backup")
