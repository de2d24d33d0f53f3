"""The LLM Log Abstraction Model: template text -> (entity, action, status), asked once per text, ever.

Answers are cached in a JSON file keyed by template TEXT (ids may change, text is what the model saw), so
a later run, or another source with the same template, costs no call. Whatever the model cannot place
(no endpoint, budget spent, invalid answer) is placed by the offline rules instead and is not cached, so a
later run with budget left asks again.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from krone_jobs.hierarchy.model import TemplateNode, make_node
from krone_jobs.hierarchy.offline import OfflineExtractor, Placement
from krone_jobs.llm.client import LLMClient
from krone_jobs.llm.prompts import EXTRACTION_REMINDER, extraction_messages
from krone_jobs.llm.redact import Redactor

log = logging.getLogger(__name__)

FIELDS = ("entity", "action", "status")
# Names become parts of node ids ("A:<entity>/<action>"), so "/", "#" and ":" must never get in.
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def validate_placement(answer: Any) -> Placement | None:
    """A :class:`Placement` from ``{"entity", "action", "status"}`` short names, exactly, else ``None``."""
    if not isinstance(answer, dict) or set(answer) != set(FIELDS):
        return None
    names = [_name(answer[f]) for f in FIELDS]
    if any(n is None for n in names):
        return None
    return Placement(*names)  # type: ignore[arg-type]


def _name(value: Any) -> str | None:
    """``"Data Node"`` -> ``data_node``; ``None`` unless a short lower-case identifier remains."""
    if not isinstance(value, str):
        return None
    name = "_".join(value.strip().lower().replace("-", " ").split())
    return name if _NAME.fullmatch(name) else None


class LLMHierarchyExtractor:
    """:class:`~krone_jobs.hierarchy.extractor.HierarchyExtractor` with origin ``llm`` (offline fallback
    rows keep origin ``offline``). ``client=None`` uses the cache and the offline rules only."""

    origin = "llm"

    def __init__(self, client: LLMClient | None, cache_path: Path | None = None,
                 redactor: Redactor | None = None) -> None:
        self.client = client
        self.cache_path = cache_path
        self.redactor = redactor or Redactor()
        self.offline = OfflineExtractor()
        self.cache: dict[str, Placement] = self._load()
        self.stats = {"asked": 0, "cached": 0, "fallback": 0}

    def extract(self, templates: Mapping[str, str]) -> list[TemplateNode]:
        before = len(self.cache)
        try:
            return [self.node(tid, text) for tid, text in sorted(templates.items())]
        finally:
            if len(self.cache) != before:
                self._save()

    def node(self, template_id: str, template: str) -> TemplateNode:
        placement = self.cache.get(template)
        if placement is not None:
            self.stats["cached"] += 1
        elif self.client is not None:
            placement = self.client.ask(extraction_messages(template, self.redactor), validate_placement,
                                        reminder=EXTRACTION_REMINDER)
            if placement is not None:
                self.stats["asked"] += 1
                self.cache[template] = placement
        if placement is None:
            self.stats["fallback"] += 1
            return self.offline.node(template_id, template)
        return make_node(template_id, template, placement.entity, placement.action, placement.status, self.origin)

    # ------------------------------------------------------------------------------- cache file
    def _load(self) -> dict[str, Placement]:
        """The cache file's valid entries; a missing or unreadable file is an empty cache (it only saves
        calls), an entry that fails validation is dropped so it is asked again."""
        if self.cache_path is None or not self.cache_path.exists():
            return {}
        try:
            raw = json.loads(self.cache_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable LLM hierarchy cache %s: %s", self.cache_path, err)
            return {}
        entries = raw.items() if isinstance(raw, dict) else ()
        return {text: p for text, value in entries if (p := validate_placement(value)) is not None}

    def _save(self) -> None:
        """Write atomically (temp file + rename): a crash mid-write must not lose earlier answers."""
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        data = {text: {"entity": p.entity, "action": p.action, "status": p.status}
                for text, p in sorted(self.cache.items())}
        tmp = self.cache_path.with_name(self.cache_path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.cache_path)
