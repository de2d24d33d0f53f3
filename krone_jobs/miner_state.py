"""Where a source's Drain miner state lives: one state per parsed day, ``state/<source>/templates/dt=D.json``
(the state after day D), read by every stage that needs template ids (sessionize, kseqs, hierarchy, train,
score), written by the parse stage."""

from __future__ import annotations

from pathlib import Path

from krone_jobs.partitions import latest_before, state_dir
from krone_jobs.templates import TemplateStore


def templates_dir(root: Path, source: str) -> Path:
    """One miner state per parsed day: ``dt=D.json`` is the state after day D."""
    return state_dir(root, source) / "templates"


def templates_path(root: Path, source: str, dt: str) -> Path:
    return templates_dir(root, source) / f"dt={dt}.json"


def latest_templates(root: Path, source: str, dt: str | None = None) -> TemplateStore | None:
    """The miner state after the newest parsed day (at or before ``dt`` if given), or ``None``."""
    path = latest_before(templates_dir(root, source), dt or "9999-12-31", inclusive=True)
    return TemplateStore.from_json(path.read_text(encoding="utf-8")) if path else None
