"""KRONE Seqs in model terms: each chunk of a cut session as codebook codes, with its parent and children.

The Nested-Aware detector and the router both judge these; the Local-Context detector keeps the raw keys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from krone_jobs.hierarchy.kseqs import Cut

# codebook table per KRONE level: (own, parent, child); codebook levels are 0 entity, 1 action, 2 status
TABLES = {"status": (2, 1, None), "action": (1, 0, 2), "entity": (0, None, 1)}
MAX_REPEAT = 6

Bag = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class ChunkExample:
    """One KRONE Seq in model terms: raw codebook codes (``parent`` is -1 at the entity level).

    ``bag`` (entity level): the chunk's leaves as sorted ``(status code, count)`` pairs, repeats not capped.
    """

    parent: int
    nodes: tuple[int, ...]
    children: tuple[tuple[int, ...], ...]
    bag: Bag = ()


def chunk_key(ex: ChunkExample) -> tuple[int, ...]:
    """A chunk's vocabulary key for rule 2b: ``(parent, *nodes)``, the knowledge-base key of the
    Local-Context detector except that status-level runs are capped (:func:`cap_repeats`)."""
    return (ex.parent, *ex.nodes)


def cap_repeats(nodes: Sequence[int], limit: int = MAX_REPEAT) -> tuple[int, ...]:
    """Keep at most ``limit`` consecutive copies of a node: a heartbeat repeated 200 times says no more
    than one repeated ``limit`` times, and sequence cost stays bounded."""
    out: list[int] = []
    run = 0
    for i, x in enumerate(nodes):
        run = run + 1 if i and x == nodes[i - 1] else 1
        if run <= limit:
            out.append(x)
    return tuple(out)


def chunk_examples(c: Cut) -> dict[str, list[ChunkExample]]:
    """Every KRONE Seq of a cut session with its parent and child chunks, per level (repeats capped in
    sequences, not in the entity-level bag)."""
    bag: Bag = tuple(sorted(Counter(x for k in c.status_keys for x in k[1:]).items()))  # type: ignore[arg-type]
    status = [ChunkExample(k[0], cap_repeats(k[1:]), (), bag) for k in c.status_keys]  # type: ignore[arg-type]
    action = []
    si = 0
    for (s, e), key in zip(c.action_spans, c.action_keys):
        kids = []
        while si < len(c.status_spans) and c.status_spans[si][1] <= e:
            kids.append(status[si].nodes)
            si += 1
        action.append(ChunkExample(key[0], tuple(key[1:]), tuple(kids), bag))  # type: ignore[arg-type]
    entity = ChunkExample(-1, tuple(c.entity_key), tuple(a.nodes for a in action), bag)  # type: ignore[arg-type]
    return {"status": status, "action": action, "entity": [entity]}
