"""Drain's similarity search within a prefix-tree leaf, through an inverted index once the leaf is large.

Drain files a line under a leaf of its prefix tree (token count, first tokens) and then compares it with every
template in that leaf (``Drain.fast_match``): linear in the leaf. Real logs keep leaves small (the largest in
five days of Thunderbird: 70 templates), but unique text the masks miss (free text, garbage) piles thousands
of templates into one leaf, and then every line under it pays thousands of comparisons.

:class:`IndexedLeafSearch` replaces ``fast_match`` with the same answer, found through an index per large leaf
of (position, literal token) -> templates. A template can reach Drain's similarity threshold only if enough
of its positions equal the line's tokens (or, when parameters count, hold ``<*>``), so only those templates
are compared, in leaf order, with Drain's own ``get_seq_distance``: same scores, same tie-breaks. Where the
bound cannot rule out a template that shares nothing with the line (the positions every template of the
leaf shares already reach the threshold, or a threshold of 0), the plain search runs.

The index must see every template change: :meth:`IndexedLeafSearch.changed` is called for each (templates
only change inside ``Drain.add_log_message``, which :class:`~krone_jobs.templates.TemplateStore` wraps). A
leaf that gained templates is recognised by its id list growing at the end (Drain replaces the list with a
longer copy), and extended.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from drain3.drain import Drain, LogCluster

MIN_INDEXED_LEAF = 64
"""Leaves with fewer templates are searched plainly: the index only pays off on large ones."""


class _Leaf:
    """The index of one leaf: the ids indexed (in leaf order), postings, and the ``<*>`` count of templates
    with any."""

    def __init__(self, drain: Drain, ids: list[int]) -> None:
        self.drain = drain
        self.order: dict[int, int] = {}  # id -> position in the leaf
        self.postings: dict[tuple[int, str], set[int]] = {}
        self.tokens: dict[int, tuple[str, ...]] = {}
        self.params: dict[int, int] = {}
        self.extend(ids)

    def extends(self, ids: list[int]) -> bool:
        """Whether ``ids`` is this leaf's list, as indexed or grown at the end (Drain only ever appends)."""
        n = len(self.order)
        return len(ids) >= n and self.order.get(ids[n - 1]) == n - 1 and self.order.get(ids[0]) == 0

    def extend(self, ids: list[int]) -> None:
        for cid in ids[len(self.order):]:
            self.order[cid] = len(self.order)
            cluster = self.drain.id_to_cluster.get(cid)
            if cluster is not None:
                self.add(cid, tuple(cluster.log_template_tokens))

    def add(self, cid: int, tokens: tuple[str, ...]) -> None:
        param = self.drain.param_str
        self.tokens[cid] = tokens
        if n := sum(token == param for token in tokens):
            self.params[cid] = n
        for i, token in enumerate(tokens):
            if token != param:
                self.postings.setdefault((i, token), set()).add(cid)

    def remove(self, cid: int) -> None:
        for i, token in enumerate(self.tokens.pop(cid)):
            found = self.postings.get((i, token))
            if found is not None:
                found.discard(cid)
        self.params.pop(cid, None)

    def candidates(self, tokens: Sequence[str], sim_th: float, include_params: bool) -> list[int] | None:
        """Ids, in leaf order, of the templates that may reach ``sim_th``; ``None`` where all may."""
        size, shared, hits = len(self.tokens), 0, {}
        for i, token in enumerate(tokens):
            found = self.postings.get((i, token))
            if not found:
                continue
            if len(found) == size:  # a position every template shares (the tree path): no need to count it
                shared += 1
                continue
            for cid in found:
                hits[cid] = hits.get(cid, 0) + 1
        need = sim_th * len(tokens)
        if shared >= need - 1e-9:
            return None
        if include_params:
            for cid, n in self.params.items():
                hits[cid] = hits.get(cid, 0) + n
        order = self.order
        return sorted((cid for cid, n in hits.items() if shared + n >= need - 1e-9), key=order.__getitem__)


class IndexedLeafSearch:
    """Drop-in ``Drain.fast_match`` (same results) that uses a :class:`_Leaf` index on large leaves.

    Drain's full search (``Drain.match`` with a fallback) passes a fresh list of all templates of one token
    count, which could look like a grown leaf: clear :attr:`enabled` around it."""

    def __init__(self, drain: Drain) -> None:
        self.drain = drain
        self.enabled = True
        self.plain: Callable[[Collection[int], Sequence[str], float, bool], LogCluster | None] = drain.fast_match
        self.leaves: dict[int, _Leaf] = {}  # first cluster id of a leaf -> its index
        self.leaf_of: dict[int, _Leaf] = {}

    def __call__(self, cluster_ids: Collection[int], tokens: Sequence[str], sim_th: float,
                 include_params: bool) -> LogCluster | None:
        large = self.enabled and len(cluster_ids) >= MIN_INDEXED_LEAF and sim_th > 0
        leaf = self._leaf(cluster_ids) if large else None
        found = leaf.candidates(tokens, sim_th, include_params) if leaf is not None else None
        return self.plain(cluster_ids if found is None else found, tokens, sim_th, include_params)

    def changed(self, cluster: LogCluster) -> None:
        """A template of the miner changed: re-index it (a no-op for templates of leaves not indexed)."""
        leaf = self.leaf_of.get(cluster.cluster_id)
        if leaf is not None:
            leaf.remove(cluster.cluster_id)
            leaf.add(cluster.cluster_id, tuple(cluster.log_template_tokens))

    def _leaf(self, cluster_ids: Collection[int]) -> _Leaf | None:
        """The index of a leaf's id list: built on first use, extended when Drain appended to the list."""
        if not isinstance(cluster_ids, list):
            return None
        leaf = self.leaves.get(cluster_ids[0])
        if leaf is None:
            leaf = self.leaves[cluster_ids[0]] = _Leaf(self.drain, cluster_ids)
            self.leaf_of.update(dict.fromkeys(cluster_ids, leaf))
        elif len(cluster_ids) != len(leaf.order):
            if not leaf.extends(cluster_ids):
                return None
            self.leaf_of.update(dict.fromkeys(cluster_ids[len(leaf.order):], leaf))
            leaf.extend(cluster_ids)
        return leaf
