"""The seam every Log Abstraction Model plugs into, and the one way a hierarchy grows.

An extractor turns template texts into :class:`TemplateNode` rows. The offline extractor needs no network;
the LLM extractor (scoring issue) implements the same protocol and is cached per template text.
:func:`build_hierarchy` is the only place that combines them: existing rows never change, new templates
are extracted, and human overrides always win.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

from krone_jobs.hierarchy.model import Hierarchy, TemplateNode


@runtime_checkable
class HierarchyExtractor(Protocol):
    """Anything that can place templates in the ENTITY -> ACTION -> STATUS hierarchy."""

    origin: str

    def extract(self, templates: Mapping[str, str]) -> list[TemplateNode]:
        """Return one node per ``template_id -> template text`` item, in any order."""
        ...


def build_hierarchy(
    templates: Mapping[str, str],
    extractor: HierarchyExtractor,
    base: Hierarchy | None = None,
    overrides: Iterable[TemplateNode] = (),
) -> Hierarchy:
    """Extend ``base`` with the templates it lacks (extracted), then apply ``overrides``."""
    base = base if base is not None else Hierarchy(())
    new = {tid: text for tid, text in templates.items() if tid not in base}
    grown = base.extend(extractor.extract(new)) if new else base
    overrides = list(overrides)
    return grown.with_overrides(overrides) if overrides else grown
