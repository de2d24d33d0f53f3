"""Cut a session into KRONE Seqs (status, action and entity level), as the KRONE authors do.

For a session's template sequence mapped through the hierarchy to (entity, action, status) nodes:

* **status level**: maximal runs of events with the same action node; the chunk is the run's status
  nodes, in order, duplicates kept; its parent is that action node.
* **action level**: maximal runs of events with the same entity node; the chunk is the run's action nodes
  with consecutive duplicates collapsed; its parent is that entity node. Its children are the status
  chunks inside the run.
* **entity level**: the whole session; the chunk is its entity nodes with consecutive duplicates
  collapsed. Its children are all action chunks.

Because the hierarchy nests (an action node has one entity), every entity change is also an action
change, so status chunks never straddle action chunks. :func:`cut` does the work on any hashable node
values (ints in the hot path of the detectors, strings for reports and the Spark job); :func:`decompose`
wraps it with readable, deterministic keys:

* level key ``<level>|<parent>|<n1>,<n2>,...`` (what the knowledge base stores),
* overall identifier ``entity=<nodes>|action=<nodes>|status=<nodes>`` over the chunk's span (all three levels),
* ``cache_key``: a 32-hex BLAKE2b digest of the overall identifier (the verdict cache key).
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import NamedTuple

from krone_jobs.hierarchy.model import Hierarchy

LEVELS: tuple[str, str, str] = ("status", "action", "entity")


class UnknownTemplateError(KeyError):
    """A template id that the hierarchy does not know (a new template: it needs extraction first)."""


def condense(values: Sequence[Hashable]) -> tuple[Hashable, ...]:
    """Collapse consecutive duplicates: ``a a b a`` -> ``a b a``."""
    return tuple(k for k, _ in groupby(values))


class Cut(NamedTuple):
    """Spans ``[start, end)`` of every chunk, per level, plus the level keys as tuples.

    Status key: ``(action, s1, s2, ...)``; action key: ``(entity, a1, a2, ...)`` (collapsed);
    entity key: ``(e1, e2, ...)`` (collapsed).
    """

    status_spans: list[tuple[int, int]]
    status_keys: list[tuple[Hashable, ...]]
    action_spans: list[tuple[int, int]]
    action_keys: list[tuple[Hashable, ...]]
    entity_key: tuple[Hashable, ...]


def cut(entities: Sequence[Hashable], actions: Sequence[Hashable], statuses: Sequence[Hashable]) -> Cut:
    """Cut one non-empty session given its per-event entity, action and status nodes."""
    n = len(actions)
    if n == 0:
        raise ValueError("cannot cut an empty session into KRONE Seqs")
    a_bounds = [i for i in range(1, n) if actions[i] != actions[i - 1]]
    e_bounds = [i for i in a_bounds if entities[i] != entities[i - 1]]
    a_starts = [0, *a_bounds]
    a_ends = [*a_bounds, n]
    status_spans = list(zip(a_starts, a_ends))
    status_keys = [(actions[s], *statuses[s:e]) for s, e in status_spans]
    e_starts = [0, *e_bounds]
    e_ends = [*e_bounds, n]
    action_spans = list(zip(e_starts, e_ends))
    starts = set(a_starts)
    action_keys = [(entities[s], *(actions[i] for i in range(s, e) if i in starts)) for s, e in action_spans]
    entity_key = tuple(entities[i] for i in e_starts)
    return Cut(status_spans, status_keys, action_spans, action_keys, entity_key)


@dataclass(frozen=True, slots=True)
class KroneSeq:
    """One chunk of a session at one level, with the session context needed to explain it."""

    level: str
    nodes: tuple[str, ...]
    parent: str
    start: int
    end: int
    entities: tuple[str, ...]
    actions: tuple[str, ...]
    statuses: tuple[str, ...]

    @property
    def key(self) -> str:
        """Level key: level + parent + own-level nodes (what the knowledge base stores)."""
        return f"{self.level}|{self.parent}|{','.join(self.nodes)}"

    @property
    def overall(self) -> str:
        """The authors' overall identifier: entity, action and status nodes of the chunk's span."""
        return f"entity={','.join(self.entities)}|action={','.join(self.actions)}|status={','.join(self.statuses)}"

    @property
    def cache_key(self) -> str:
        return hashlib.blake2b(self.overall.encode("utf-8"), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Decomposition:
    """All KRONE Seqs of one session; ``children`` links a chunk to the chunks one level below."""

    template_ids: tuple[str, ...]
    status: tuple[KroneSeq, ...]
    action: tuple[KroneSeq, ...]
    entity: KroneSeq

    def level(self, name: str) -> tuple[KroneSeq, ...]:
        if name == "entity":
            return (self.entity,)
        return self.status if name == "status" else self.action

    def children(self, chunk: KroneSeq) -> tuple[KroneSeq, ...]:
        below = {"entity": self.action, "action": self.status}.get(chunk.level, ())
        return tuple(c for c in below if chunk.start <= c.start and c.end <= chunk.end)

    def parent_of(self, chunk: KroneSeq) -> KroneSeq | None:
        above = {"status": self.action, "action": (self.entity,)}.get(chunk.level, ())
        return next((c for c in above if c.start <= chunk.start and chunk.end <= c.end), None)


def decompose(template_ids: Sequence[str], hierarchy: Hierarchy) -> Decomposition:
    """Map a session through ``hierarchy`` and cut it; unknown templates raise :class:`UnknownTemplateError`."""
    try:
        rows = [hierarchy[t] for t in template_ids]
    except KeyError as exc:
        raise UnknownTemplateError(exc.args[0]) from None
    ents = [r.entity_node for r in rows]
    acts = [r.action_node for r in rows]
    sts = [r.status_node for r in rows]
    c = cut(ents, acts, sts)
    # Condensed entity/action nodes of each span straight from the cut (a status chunk is one action run,
    # an action chunk one entity run): linear in the session, not in session x chunks.
    all_actions = tuple(acts[s] for s, _ in c.status_spans)
    status = tuple(KroneSeq("status", tuple(sts[s:e]), acts[s], s, e, (ents[s],), (acts[s],), tuple(sts[s:e]))
                   for s, e in c.status_spans)
    action = tuple(KroneSeq("action", k[1:], ents[s], s, e, (ents[s],), k[1:], tuple(sts[s:e]))  # type: ignore[arg-type]
                   for (s, e), k in zip(c.action_spans, c.action_keys))
    entity = KroneSeq("entity", c.entity_key, "", 0, len(rows), c.entity_key, all_actions, tuple(sts))  # type: ignore[arg-type]
    return Decomposition(tuple(template_ids), status, action, entity)
