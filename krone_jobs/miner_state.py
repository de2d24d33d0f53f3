"""Where a source's Drain miner state lives: one state per parsed day, ``state/<source>/templates/dt=D.json``
(the state after day D), read by every stage that needs template ids (sessionize, kseqs, hierarchy, train,
score), written by the parse stage."""

from __future__ import annotations

from pathlib import Path

from krone_jobs.partitions import latest_before, rewrite_hint, state_dir
from krone_jobs.templates import TemplateStateError, TemplateStore


def templates_dir(root: Path, source: str) -> Path:
    """One miner state per parsed day: ``dt=D.json`` is the state after day D."""
    return state_dir(root, source) / "templates"


def templates_path(root: Path, source: str, dt: str) -> Path:
    return templates_dir(root, source) / f"dt={dt}.json"


def parse_state(text: str, path: Path) -> TemplateStore:
    """The store in ``text``, read from ``path``; a damaged state raises :class:`TemplateStateError` naming the file
    and the parse run that writes it again."""
    try:
        return TemplateStore.from_json(text)
    except TemplateStateError as exc:
        raise TemplateStateError(f"{path}: {exc}: {rewrite_hint(path)}") from exc


def read_state(path: Path) -> TemplateStore:
    return parse_state(path.read_text(encoding="utf-8"), path)


def latest_templates(root: Path, source: str, dt: str | None = None) -> TemplateStore | None:
    """The miner state after the newest parsed day (at or before ``dt`` if given), or ``None``."""
    path = latest_before(templates_dir(root, source), dt or "9999-12-31", inclusive=True)
    return read_state(path) if path else None
