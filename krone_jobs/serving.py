"""Sessions of log messages -> template ids, for the registered model served on its own.

``krone score`` gets template ids from the parse stage and places new templates with the hierarchy stage.
A model served by MLflow (``mlflow models serve -m models:/krone-<source>@champion``) has neither, so it
can also take each session's *messages* (the content part of its lines) and do both with what it carries:
the miner state it was trained with matches a message to its template (match-only: the trained state never
changes), and a message no template fits becomes a template of its own, its masked text, placed by the
offline rules (no network from a model server). Its node is then one the model never saw, judged in
context like a new template in ``krone score``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from krone_jobs.hierarchy.extractor import build_hierarchy
from krone_jobs.hierarchy.model import Hierarchy
from krone_jobs.hierarchy.offline import OfflineExtractor
from krone_jobs.logformats import DEFAULT_MAX_LINE_BYTES
from krone_jobs.templates import TemplateStore, template_id

MAX_MESSAGE_CHARS = DEFAULT_MAX_LINE_BYTES
"""Longer messages are refused, as the parse stage quarantines longer lines."""


class BadMessages(ValueError):
    """A request whose messages cannot be read (not text, or too long); the server answers 400."""


def messages(value: object, row: int) -> tuple[str, ...]:
    """One session's messages: a list/array of strings, or one string with a message per line; missing is
    an empty session."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ()
    items: Iterable[object] = value.splitlines() if isinstance(value, str) else value  # type: ignore[assignment]
    if not isinstance(items, Iterable):
        raise BadMessages(f"row {row}: messages must be a list of strings or one string, not {type(value).__name__}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise BadMessages(f"row {row}, message {i}: not a string ({type(item).__name__})")
        if len(item) > MAX_MESSAGE_CHARS:
            raise BadMessages(f"row {row}, message {i}: {len(item):,} characters, over {MAX_MESSAGE_CHARS:,}")
        out.append(item)
    return tuple(out)


def template_sessions(
    sessions: Sequence[Sequence[str]], store: TemplateStore
) -> tuple[list[tuple[str, ...]], dict[str, str]]:
    """Template-id sessions for message sessions, and ``{id: template text}`` of every id they use (a
    message no template of ``store`` fits: its masked text)."""
    by_masked: dict[str, str] = {}
    ids: dict[str, str] = {}
    texts: dict[str, str] = {}
    for message in dict.fromkeys(m for s in sessions for m in s):
        masked = store.mask(message)
        if masked not in by_masked:  # Drain sees only the masked text: one search answers for all its messages
            found = store.match(message)
            text = found.template if found is not None else masked
            by_masked[masked] = template_id(text)
            texts[by_masked[masked]] = text
        ids[message] = by_masked[masked]
    return [tuple(ids[m] for m in s) for s in sessions], texts


def placed(templates: dict[str, str], known: Hierarchy) -> Hierarchy:
    """``known`` grown by the offline placement of the templates it lacks (what the hierarchy stage does)."""
    return build_hierarchy(templates, OfflineExtractor(), known)
