"""Node ids interned to ints, so detectors judge sessions on int tuples instead of strings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from krone_jobs.hierarchy.kseqs import Cut, cut
from krone_jobs.hierarchy.model import Hierarchy


@dataclass(frozen=True)
class Codebook:
    """``codes[template_id] = (entity, action, status)`` ints; ``names[level][code]`` the node id back
    (levels indexed 0 entity, 1 action, 2 status). Codes follow sorted template ids: deterministic."""

    codes: dict[str, tuple[int, int, int]]
    names: tuple[list[str], list[str], list[str]]

    @classmethod
    def from_hierarchy(cls, hierarchy: Hierarchy) -> Codebook:
        names: tuple[list[str], list[str], list[str]] = ([], [], [])
        index: tuple[dict[str, int], dict[str, int], dict[str, int]] = ({}, {}, {})
        codes: dict[str, tuple[int, int, int]] = {}
        for tid in sorted(hierarchy):
            node = hierarchy[tid]
            row = []
            for lvl, node_id in enumerate((node.entity_node, node.action_node, node.status_node)):
                if node_id not in index[lvl]:
                    index[lvl][node_id] = len(names[lvl])
                    names[lvl].append(node_id)
                row.append(index[lvl][node_id])
            codes[tid] = (row[0], row[1], row[2])
        return cls(codes, names)

    def cut(self, seq: Sequence[str]) -> Cut | None:
        """Cut a session on int codes; ``None`` for an empty session or an unknown template."""
        if not seq:
            return None
        try:
            rows = [self.codes[t] for t in seq]
        except KeyError:
            return None
        return cut([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
