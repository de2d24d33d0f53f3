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
        return cls({}, ([], [], [])).extended(hierarchy)

    def extended(self, hierarchy: Hierarchy) -> Codebook:
        """This codebook plus the templates of ``hierarchy`` it lacks, their new nodes *appended* (sorted
        template ids), so every existing code, and whatever a fitted detector learned about it, stays valid."""
        names = (list(self.names[0]), list(self.names[1]), list(self.names[2]))
        index = tuple({name: code for code, name in enumerate(table)} for table in names)
        codes = dict(self.codes)
        for tid in sorted(t for t in hierarchy if t not in codes):
            node = hierarchy[tid]
            row = []
            for lvl, node_id in enumerate((node.entity_node, node.action_node, node.status_node)):
                if node_id not in index[lvl]:
                    index[lvl][node_id] = len(names[lvl])
                    names[lvl].append(node_id)
                row.append(index[lvl][node_id])
            codes[tid] = (row[0], row[1], row[2])
        return Codebook(codes, names)

    def cut(self, seq: Sequence[str]) -> Cut | None:
        """Cut a session on int codes; ``None`` for an empty session or an unknown template."""
        if not seq:
            return None
        try:
            rows = [self.codes[t] for t in seq]
        except KeyError:
            return None
        return cut([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
