"""The Log Abstraction Model: every template gets a place ENTITY -> ACTION -> STATUS.

One :class:`TemplateNode` per template (the design's hierarchy contract). Node ids are plain, deterministic
strings so that a hierarchy built twice from the same input is identical and extending it with new
templates never changes an existing id. The tree must nest: an action node belongs to exactly one entity
node and a status node to exactly one action node; :class:`Hierarchy` refuses anything else, because the
KRONE Seq cut relies on it.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from krone_jobs.templates import template_id as text_id

ORIGINS = ("offline", "llm", "override", "file")
FIELDS = (
    "template_id",
    "template",
    "entity",
    "action",
    "status",
    "entity_node",
    "action_node",
    "status_node",
    "origin",
    "version",
)


@dataclass(frozen=True, slots=True)
class TemplateNode:
    """Where one template sits in the hierarchy (one row of the ``hierarchy`` table)."""

    template_id: str
    template: str
    entity: str
    action: str
    status: str
    entity_node: str
    action_node: str
    status_node: str
    origin: str = "offline"
    version: int = 1

    def as_row(self) -> dict[str, str | int]:
        return asdict(self)


class HierarchyError(ValueError):
    """A hierarchy that does not nest or names a template twice."""


class Hierarchy(Mapping[str, TemplateNode]):
    """Immutable mapping template_id -> :class:`TemplateNode`, validated to nest as a tree."""

    def __init__(self, nodes: Iterable[TemplateNode]) -> None:
        by_id: dict[str, TemplateNode] = {}
        action_parent: dict[str, str] = {}
        status_parent: dict[str, str] = {}
        for node in nodes:
            if node.template_id in by_id:
                raise HierarchyError(f"template {node.template_id!r} appears twice")
            if action_parent.setdefault(node.action_node, node.entity_node) != node.entity_node:
                raise HierarchyError(
                    f"action node {node.action_node!r} sits under two entities "
                    f"({action_parent[node.action_node]!r} and {node.entity_node!r})"
                )
            if status_parent.setdefault(node.status_node, node.action_node) != node.action_node:
                raise HierarchyError(
                    f"status node {node.status_node!r} sits under two actions "
                    f"({status_parent[node.status_node]!r} and {node.action_node!r})"
                )
            by_id[node.template_id] = node
        self._nodes = by_id

    # Mapping protocol -------------------------------------------------------------------------
    def __getitem__(self, template_id: str) -> TemplateNode:
        return self._nodes[template_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hierarchy) and self._nodes == other._nodes

    # Views --------------------------------------------------------------------------------------
    def nodes(self) -> list[TemplateNode]:
        return list(self._nodes.values())

    def count(self, level: str) -> int:
        """Number of distinct nodes at ``level`` (entity, action or status)."""
        attr = f"{level}_node"
        return len({getattr(n, attr) for n in self._nodes.values()})

    # Growth -------------------------------------------------------------------------------------
    def extend(self, new_nodes: Iterable[TemplateNode]) -> Hierarchy:
        """Add templates not yet present; existing rows (and so their node ids) never change."""
        merged = dict(self._nodes)
        for node in new_nodes:
            merged.setdefault(node.template_id, node)
        return Hierarchy(merged.values())

    def with_overrides(self, overrides: Iterable[TemplateNode]) -> Hierarchy:
        """Human decisions win over any extractor: replace rows, marking them ``override``.

        Idempotent: an override already in effect (same placement, origin ``override``) changes nothing,
        so re-applying the overrides file on every run never bumps versions."""
        merged = dict(self._nodes)
        for node in overrides:
            previous = merged.get(node.template_id)
            if previous is not None and previous.origin == "override" and _placement(previous) == _placement(node):
                continue
            version = previous.version + 1 if previous else node.version
            template = node.template or (previous.template if previous else "")
            merged[node.template_id] = replace(node, template=template, origin="override", version=version)
        return Hierarchy(merged.values())

    # Persistence --------------------------------------------------------------------------------
    def csv_text(self) -> str:
        """Our own CSV format: a header of :data:`FIELDS`, then one row per template by id."""
        out = io.StringIO(newline="")
        writer = csv.DictWriter(out, fieldnames=FIELDS)
        writer.writeheader()
        for node in sorted(self._nodes.values(), key=lambda n: n.template_id):
            writer.writerow(node.as_row())
        return out.getvalue()

    def save_csv(self, path: str | Path) -> None:
        Path(path).write_text(self.csv_text(), encoding="utf-8", newline="")

    @classmethod
    def load_csv(cls, path: str | Path) -> Hierarchy:
        """Load our own CSV format (the columns of :data:`FIELDS`); a row that lacks a placement or has more
        fields than the header (a file cut short or pasted into) raises :class:`HierarchyError` naming its line,
        instead of placing a template under nodes called "None"."""
        nodes = []
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not set(_PLACEMENT) <= set(reader.fieldnames):
                raise HierarchyError(f"{path}: no header naming {', '.join(_PLACEMENT)}: the file is empty or damaged")
            for row in reader:
                try:
                    if None in row:
                        raise HierarchyError("more fields than the header names")
                    nodes.append(_node_from_row(row))
                except HierarchyError as exc:
                    raise HierarchyError(f"{path}, line {reader.line_num}: {exc}: the file is damaged") from exc
        return cls(nodes)

    def to_json(self) -> str:
        return json.dumps([n.as_row() for n in sorted(self._nodes.values(), key=lambda n: n.template_id)])

    @classmethod
    def from_json(cls, text: str) -> Hierarchy:
        return cls(_node_from_row(row) for row in json.loads(text))


def _placement(node: TemplateNode) -> tuple[str, ...]:
    return (node.entity, node.action, node.status, node.entity_node, node.action_node, node.status_node)


_PLACEMENT = ("template_id", "entity", "action", "status", "entity_node", "action_node", "status_node")


def _node_from_row(row: Mapping[str, object]) -> TemplateNode:
    missing = [field for field in _PLACEMENT if row.get(field) in (None, "")]
    if missing:
        raise HierarchyError(f"no {', '.join(missing)}")
    return TemplateNode(
        template_id=str(row["template_id"]),
        template=str(row.get("template", "") or ""),
        entity=str(row["entity"]),
        action=str(row["action"]),
        status=str(row["status"]),
        entity_node=str(row["entity_node"]),
        action_node=str(row["action_node"]),
        status_node=str(row["status_node"]),
        origin=str(row.get("origin") or "file"),
        version=int(row.get("version") or 1),
    )


NONE = "none"


def node_ids(entity: str, action: str, status: str, template_id: str, statement: str = "") -> tuple[str, str, str]:
    """Deterministic node ids from names, shared by every extractor and by overrides.

    As in the paper, a ``none`` entity or action is not a real grouping: such a template gets an entity
    or action node of its own, one per *statement* (``statement``, see :func:`statement_id`; the template
    id when empty). Status nodes are one per template (the authors' tree does the same), so the status
    level sees template sequences inside one action.
    """
    own = statement or template_id
    e_node = f"E:{entity}" if entity != NONE else f"E:none#{own}"
    a_node = f"A:{e_node[2:]}/{action}" if action != NONE else f"A:{e_node[2:]}/none#{own}"
    s_node = f"S:{a_node[2:]}/{status}#{template_id}"
    return e_node, a_node, s_node


_PARAMETER_RUN = re.compile(r"(?<!\S)(<(?:\*|[A-Z]{2,8})>)(?:[ \t]+\1)+(?!\S)")


def statement_id(template: str) -> str:
    """The id of the statement a template comes from: its text with each run of one parameter cut to one.

    Drain groups lines by token count, so one statement with a variable-length argument list (a command
    line, a list of hosts) becomes one template per length: ``USER=root ; <*>`` and ``USER=root ; <*> <*>``.
    Those are one event. Where a template has no entity or action name, its node is otherwise its own, and
    every new length would be a never-seen action (Thunderbird demo at 80 % training: one false alarm of
    ten, a ``sudo`` line with one argument more). For a template without such a run this is
    ``template_id(template)``, the template's own id in the pipeline.
    """
    return text_id(_PARAMETER_RUN.sub(r"\1", template))


def make_node(template_id: str, template: str, entity: str, action: str, status: str, origin: str) -> TemplateNode:
    """A :class:`TemplateNode` whose node ids follow :func:`node_ids`."""
    statement = statement_id(template) if template else ""
    e_node, a_node, s_node = node_ids(entity, action, status, template_id, statement)
    return TemplateNode(template_id, template, entity, action, status, e_node, a_node, s_node, origin)


def load_overrides(path: str | Path, base: Hierarchy | None = None) -> list[TemplateNode]:
    """Read a human overrides CSV: ``template_id,entity,action[,status]``.

    Node ids are derived with :func:`node_ids`, so an override that names an existing entity/action joins
    that node instead of creating a look-alike. People write this file: a missing column or value raises
    :class:`HierarchyError` naming the line.
    """
    out: list[TemplateNode] = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"template_id", "entity", "action"} <= set(reader.fieldnames):
            raise HierarchyError(f"{path}: the header must name template_id,entity,action[,status]")
        for row in reader:
            values = {k: (row.get(k) or "").strip() for k in ("template_id", "entity", "action")}
            missing = [k for k, v in values.items() if not v]
            if None in row or missing:
                wrong = "more fields than the header" if None in row else f"no {', '.join(missing)}"
                raise HierarchyError(f"{path}, line {reader.line_num}: {wrong}")
            tid, entity, action = values["template_id"], values["entity"], values["action"]
            status = (row.get("status") or "none").strip()
            template = base[tid].template if base is not None and tid in base else str(row.get("template", ""))
            out.append(make_node(tid, template, entity, action, status, "override"))
    return out
