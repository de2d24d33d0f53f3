"""Load a hierarchy from the KRONE authors' node tables (``krone_official_<DS>_tree_nodes.csv``).

This is the "bring your own hierarchy" path: any table with a template id and entity/action/status node
ids can be read this way. The authors' node ids look like ``receiving_28`` (name + running number); the
name part is kept as the human-readable entity/action/status.
"""

from __future__ import annotations

import csv
from pathlib import Path

from krone_jobs.hierarchy.model import Hierarchy, TemplateNode


def _name(node_id: str) -> str:
    return node_id.rsplit("_", 1)[0] if "_" in node_id else node_id


def load_node_table(path: str | Path, templates: dict[str, str] | None = None) -> Hierarchy:
    """Read ``event_id,entity_1,action_1,entity_node,action_node,status_node`` rows."""
    templates = templates or {}
    nodes = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            tid = str(row["event_id"]).strip()
            nodes.append(
                TemplateNode(
                    template_id=tid,
                    template=templates.get(tid, ""),
                    entity=_name(row["entity_node"]),
                    action=_name(row["action_node"]),
                    status=_name(row["status_node"]),
                    entity_node=row["entity_node"],
                    action_node=row["action_node"],
                    status_node=row["status_node"],
                    origin="file",
                )
            )
    return Hierarchy(nodes)
