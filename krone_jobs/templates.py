"""Drain3 template mining and matching with stable template ids and plain-JSON miner state.

Template ids are a hash of the template text only (``template_id``), never Drain's cluster id, so the
same template gets the same id in every partition, run, process and executor.

Drain generalises a cluster when a later line differs in some token: its text, and therefore its id,
changes. We *re-id*: a template's id always follows its current text, so two miners whose final
templates coincide agree on every id whatever order they saw the lines in. The retired id is recorded
(``superseded``, see :meth:`TemplateStore.resolve`) so rows written with it earlier can be remapped, and
:meth:`TemplateStore.mine` reports it in :attr:`TemplateMatch.supersedes`. For final ids, mine a batch
first and then :meth:`~TemplateStore.match` it. The contract: for a given miner state, the same line always
maps to the same id.

Masking happens before Drain sees a line; block ids become ``<BLK>`` because HDFS session keys are taken
from the unmasked content and a block id is never part of *what* happened. IPs (with optional port),
hex literals and standalone numbers are masked as well; paths are not (their shape often is the event).
A token that holds a mask placeholder (``<NUM>``, ``THH(<NUM>):``) is routed down Drain's wildcard branch like
the digits it replaced (``MinerSettings.parametrize_masked_tokens``); otherwise masking would turn every masked
shape among a line's first tokens into a literal branch of its own and split one event into many templates.

Drain's settings (:class:`MinerSettings`) depend on the log format: a source's first day is mined with its
format's (``LineFormat.miner``) and the state carries them from then on, so a source keeps the grouping it
started with.

State is persisted as plain JSON we define (settings, clusters, superseded ids), never jsonpickle/pickle,
because a miner state may travel between machines and must not execute code on load. The prefix tree is
not stored: it is rebuilt by re-adding the clusters in cluster-id (= creation) order with Drain's own
``add_seq_to_prefix_tree``. That reproduces the original tree exactly, child order included (checked on all
16 loghub samples, depths 3-6, max_children 3-100), because a cluster's tree path only ever holds tokens
that stay literal in its template, or the wildcard node. Drain's LRU eviction (``max_clusters``) would break
that, so it is not offered.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from drain3 import TemplateMiner
from drain3.drain import Drain, LogCluster
from drain3.masking import MaskingInstruction
from drain3.template_miner_config import TemplateMinerConfig

from krone_jobs.drain_search import IndexedLeafSearch

STATE_FORMAT = "krone.templates"
STATE_VERSION = 1

DEFAULT_MASKS: tuple[tuple[str, str], ...] = (
    (r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?(?![\w.])", "IP"),
    (r"\bblk_-?\d+\b", "BLK"),
    # word + separator + hex run holding a digit: job_101546, tok-e776a48d, node-07, part-0003
    # (possessive quantifiers: no backtracking on long attacker-made runs)
    (r"\b[A-Za-z]++[_-](?=[0-9a-fA-F]*\d)[0-9a-fA-F]++\b", "ID"),
    (r"\b0[xX][0-9a-fA-F]+\b", "HEX"),
    (r"(?<![\w.+-])[-+]?\d+(?:\.\d+)?(?![\w.])", "NUM"),
)
"""(regex, mask name) pairs applied in order; each is linear-time on attacker-controlled content."""


class TemplateStateError(ValueError):
    """A persisted miner state is malformed or incompatible."""


def template_id(template: str) -> str:
    """Stable id of a template text: ``T`` + 64-bit BLAKE2b hex (collision odds ~1e-8 at 1M templates)."""
    return "T" + hashlib.blake2b(template.encode("utf-8"), digest_size=8).hexdigest()


@dataclass(frozen=True)
class MinerSettings:
    """The Drain parameters that shape templates; part of the state so a restored miner behaves the same."""

    sim_th: float = 0.4
    depth: int = 4
    max_children: int = 100
    masks: tuple[tuple[str, str], ...] = DEFAULT_MASKS
    extra_delimiters: tuple[str, ...] = ()
    parametrize_numeric_tokens: bool = True
    parametrize_masked_tokens: bool = True
    """Route tokens holding a mask placeholder (``<NUM>``, ``THH(<NUM>):``) down Drain's wildcard branch, as
    their digits would have before masking. Without it masking *removes* the digits that made Drain treat a
    token as a parameter, and every distinct masked shape in the first tokens opens its own leaf."""

    def __post_init__(self) -> None:
        if not 3 <= self.depth <= 16:
            raise ValueError("depth must be between 3 and 16")
        if not 0.0 <= self.sim_th <= 1.0:
            raise ValueError("sim_th must be between 0 and 1")
        if self.max_children < 2:
            raise ValueError("max_children must be at least 2")

    def to_config(self) -> TemplateMinerConfig:
        config = TemplateMinerConfig()
        config.drain_sim_th = self.sim_th
        config.drain_depth = self.depth
        config.drain_max_children = self.max_children
        config.drain_extra_delimiters = list(self.extra_delimiters)
        config.masking_instructions = [MaskingInstruction(regex, name) for regex, name in self.masks]
        config.parametrize_numeric_tokens = self.parametrize_numeric_tokens
        return config

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MinerSettings:
        return cls(
            sim_th=float(data["sim_th"]),
            depth=int(data["depth"]),
            max_children=int(data["max_children"]),
            masks=tuple((str(regex), str(name)) for regex, name in data["masks"]),
            extra_delimiters=tuple(str(d) for d in data["extra_delimiters"]),
            parametrize_numeric_tokens=bool(data["parametrize_numeric_tokens"]),
            # states written before this setting existed were mined without it
            parametrize_masked_tokens=bool(data.get("parametrize_masked_tokens", False)),
        )

    def routes_as_parameter(self) -> Callable[[str], bool]:
        """Drain's test for tokens that go down the wildcard branch of its prefix tree (see the fields)."""
        if not self.parametrize_masked_tokens or not self.masks:
            return _has_digit
        placeholder = re.compile("|".join(sorted({re.escape(f"<{name}>") for _, name in self.masks})))
        search = placeholder.search

        def routes(token: str) -> bool:
            return _has_digit(token) or search(token) is not None

        return routes


def _has_digit(token: str) -> bool:
    return any(char.isdigit() for char in token)


def masker(miner: MinerSettings) -> Callable[[str], str]:
    """The substitutions drain3's ``LogMasker`` applies for these settings (same compiled regexes, order and
    replacement text), without its per-call overhead: masking is the costliest step per line."""
    config = miner.to_config()
    subs = [(mi.regex.sub, config.mask_prefix + mi.mask_with + config.mask_suffix)
            for mi in config.masking_instructions]

    def mask(content: str) -> str:
        for sub, replacement in subs:
            content = sub(replacement, content)
        return content

    return mask


class TemplateMatch(NamedTuple):
    """Result of mining or matching one line."""

    template_id: str
    template: str
    is_new: bool = False
    """The store had never produced this template id before this call."""
    supersedes: str | None = None
    """The id this call retired by generalising its cluster's template, if any."""


class TemplateInfo(NamedTuple):
    """One row of the ``templates`` table: lines seen is summed over clusters sharing the text."""

    template_id: str
    template: str
    size: int


class TemplateStore:
    """A Drain3 miner with stable ids. Not thread-safe: mine on one side, share state as JSON."""

    def __init__(self, settings: MinerSettings | None = None) -> None:
        self.settings = settings or MinerSettings()
        self._miner = TemplateMiner(config=self.settings.to_config())
        # drain3 reads this attribute when filing and when searching the tree: same test on both sides
        self._miner.drain.has_numbers = self.settings.routes_as_parameter()  # type: ignore[method-assign]
        self._search = IndexedLeafSearch(self._miner.drain)
        self._miner.drain.fast_match = self._search  # type: ignore[method-assign]
        self._mask = masker(self.settings)
        self._cluster_text: dict[int, str] = {}
        self._live: dict[str, int] = {}  # template id -> clusters whose current text has that id
        self._superseded: dict[str, str] = {}

    # --- mining and matching ------------------------------------------------------------------------

    def mine(self, content: str) -> TemplateMatch:
        """Add a line to the miner (may create or generalise a template) and return its template."""
        return self._add(self.mask(content), 1)[0]

    def _add(self, masked: str, weight: int) -> tuple[TemplateMatch, int]:
        """Mine ``masked`` as ``weight`` lines; returns the match and the cluster id it landed in."""
        cluster, change = self._miner.drain.add_log_message(masked)
        if change == "cluster_template_changed":
            self._search.changed(cluster)
        cluster.size += weight - 1
        text = cluster.get_template()
        tid = template_id(text)
        old_text = self._cluster_text.get(cluster.cluster_id)
        if old_text == text:
            return TemplateMatch(tid, text), cluster.cluster_id
        is_new = tid not in self._live and tid not in self._superseded
        supersedes = None
        if old_text is not None:
            supersedes = template_id(old_text)
            self._forget(supersedes)
            if supersedes not in self._live:
                self._superseded[supersedes] = tid
        self._remember(cluster.cluster_id, text)
        return TemplateMatch(tid, text, is_new, supersedes), cluster.cluster_id

    def mine_known(self, content: str) -> TemplateMatch | None:
        """:meth:`mine` a line only into a template it already fits (Drain's similarity, so it may generalise
        it); ``None``, and no change, where it would open a new one."""
        drain = self._miner.drain
        masked = self.mask(content)
        if drain.tree_search(drain.root_node, drain.get_content_as_tokens(masked), drain.sim_th, False) is None:
            return None
        return self._add(masked, 1)[0]

    @property
    def opened(self) -> int:
        """Templates (Drain clusters) ever opened by this store and the states it was restored from."""
        return int(self._miner.drain.clusters_counter)

    def mask(self, content: str) -> str:
        """``content`` with this store's masks applied: what Drain sees of it."""
        return self._mask(content)

    def match(self, content: str, *, full_search: bool = True) -> TemplateMatch | None:
        """Match-only inference: never changes state; ``None`` when no template fits exactly.

        ``full_search``: where the prefix tree finds nothing, also try every template with as many tokens
        (Drain's ``fallback``; linear in those templates)."""
        cluster = self._miner.match(content, full_search_strategy="never")
        if cluster is None and full_search:
            self._search.enabled = False  # the full search's list of ids is no leaf
            try:
                cluster = self._miner.match(content, full_search_strategy="fallback")
            finally:
                self._search.enabled = True
        if cluster is None:
            return None
        text = cluster.get_template()
        return TemplateMatch(template_id(text), text)

    def resolve(self, tid: str) -> str:
        """The current id for ``tid``: itself if live or unknown, else the id that (transitively) replaced it."""
        seen = {tid}
        while tid not in self._live and tid in self._superseded:
            tid = self._superseded[tid]
            if tid in seen:
                break
            seen.add(tid)
        return tid

    def templates(self) -> list[TemplateInfo]:
        """Live templates sorted by id, with sizes summed over clusters that share a text."""
        sizes: dict[str, int] = {}
        for cluster in self._miner.drain.clusters:
            text = cluster.get_template()
            sizes[text] = sizes.get(text, 0) + cluster.size
        infos = (TemplateInfo(template_id(text), text, size) for text, size in sizes.items())
        return sorted(infos, key=lambda info: info.template_id)

    @property
    def superseded(self) -> Mapping[str, str]:
        """Retired id -> the id that replaced it when it retired (read-only view)."""
        return MappingProxyType(self._superseded)

    def _remember(self, cluster_id: int, text: str) -> None:
        tid = template_id(text)
        self._cluster_text[cluster_id] = text
        self._live[tid] = self._live.get(tid, 0) + 1

    def _forget(self, tid: str) -> None:
        if self._live[tid] == 1:
            del self._live[tid]
        else:
            self._live[tid] -= 1

    # --- merging ------------------------------------------------------------------------------------

    def merge(self, other: TemplateStore) -> None:
        """Fold ``other``'s templates into this store (e.g. stores mined per Spark partition).

        A text this store already has just adds its line count. Any other text is mined here like a line
        carrying its cluster's count, so overlapping templates unify the way one miner would have unified
        them. Every id ``other`` ever produced then resolves here (:meth:`resolve`). Where templates
        overlap the outcome can depend on merge order: merge partitions in a fixed order.
        """
        if other.settings != self.settings:
            raise ValueError("cannot merge template stores mined with different settings")
        drain = self._miner.drain
        by_text = {text: cid for cid, text in sorted(self._cluster_text.items(), reverse=True)}  # lowest id wins
        for theirs in sorted(other._miner.drain.clusters, key=lambda c: c.cluster_id):
            text = theirs.get_template()
            cid = by_text.get(text)
            if cid is not None and self._cluster_text[cid] == text:  # entries go stale when a cluster generalises
                drain.id_to_cluster[cid].size += theirs.size  # type: ignore[union-attr]
                continue
            ours, cid = self._add(text, theirs.size)
            known = by_text.get(ours.template)
            if known is None or self._cluster_text[known] != ours.template:
                by_text[ours.template] = cid
            if template_id(text) not in self._live:
                self._superseded.setdefault(template_id(text), ours.template_id)
        for old, new in other._superseded.items():
            if old not in self._live:
                self._superseded.setdefault(old, new)

    # --- persistence --------------------------------------------------------------------------------

    def to_json(self) -> str:
        """Plain-JSON state: settings, clusters (id, tokens, size) and superseded ids; deterministic output."""
        drain = self._miner.drain
        state = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "settings": asdict(self.settings),
            "clusters_counter": drain.clusters_counter,
            "clusters": [
                {"cluster_id": c.cluster_id, "tokens": list(c.log_template_tokens), "size": c.size}
                for c in sorted(drain.clusters, key=lambda c: c.cluster_id)
            ],
            "superseded": dict(sorted(self._superseded.items())),
        }
        return json.dumps(state, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TemplateStore:
        """Rebuild a store from :meth:`to_json` output; raises :class:`TemplateStateError` if malformed."""
        try:
            state = json.loads(text)
            if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
                raise TemplateStateError(f"not a {STATE_FORMAT} v{STATE_VERSION} state")
            store = cls(MinerSettings.from_dict(state["settings"]))
            drain = store._miner.drain
            clusters = [_cluster_from_json(item) for item in state["clusters"]]
            clusters.sort(key=lambda c: c.cluster_id)
            twice = sorted(cid for cid, n in Counter(c.cluster_id for c in clusters).items() if n > 1)
            if twice:
                raise TemplateStateError(f"duplicate cluster id {twice[0]}")
            _file_clusters(drain, clusters)
            for cluster in clusters:
                drain.id_to_cluster[cluster.cluster_id] = cluster
                store._remember(cluster.cluster_id, cluster.get_template())
            drain.clusters_counter = _int(state["clusters_counter"])
            if clusters and clusters[-1].cluster_id > drain.clusters_counter:
                raise TemplateStateError("clusters_counter is below a cluster id")
            superseded = state["superseded"]
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in superseded.items()):
                raise TemplateStateError("superseded must map strings to strings")
            store._superseded = dict(superseded)
        except TemplateStateError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError, re.error) as exc:
            raise TemplateStateError(f"malformed template state: {exc!r}") from exc
        return store


def _file_clusters(drain: Drain, clusters: Sequence[LogCluster]) -> None:
    """File ``clusters`` (creation order) in Drain's prefix tree as ``Drain.add_seq_to_prefix_tree`` would,
    one after the other, in time linear in their number.

    Drain's own method rebuilds the whole leaf list on each call (to drop evicted ids), so a state with
    thousands of templates under one prefix (text the masks miss) loaded in quadratic time (8,000: 1.2 s,
    32,000: 16 s, against 0.09 and 0.24 s now; paid at every load). Here the nodes are made by Drain's method with no cluster yet
    registered (each leaf list stays one long), then every leaf list is rebuilt by routing each cluster down
    the finished tree: a child named by its token, else the ``<*>`` child. That is the node Drain chose when
    it filed it, because a child is never removed and a token that went to ``<*>`` (a parametrised number,
    or a full node) can never have a child of its own made later."""
    for cluster in clusters:
        drain.add_seq_to_prefix_tree(drain.root_node, cluster)
    stack = [drain.root_node]
    while stack:
        node = stack.pop()
        node.cluster_ids = []
        stack.extend(node.key_to_child_node.values())
    for cluster in clusters:
        tokens = cluster.log_template_tokens
        node = drain.root_node.key_to_child_node[str(len(tokens))]
        if not tokens:  # Drain keeps only the latest empty template
            node.cluster_ids = [cluster.cluster_id]
            continue
        for depth, token in enumerate(tokens, start=1):
            if depth >= drain.max_node_depth or depth >= len(tokens):
                break
            child = node.key_to_child_node.get(token)
            node = child if child is not None else node.key_to_child_node[drain.param_str]
        node.cluster_ids.append(cluster.cluster_id)  # type: ignore[attr-defined]


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TemplateStateError(f"expected a non-negative integer, got {value!r}")
    return value


def _cluster_from_json(item: Mapping[str, Any]) -> LogCluster:
    tokens = item["tokens"]
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t.split() == [t] for t in tokens):
        raise TemplateStateError("cluster tokens must be a list of non-blank strings without whitespace")
    cluster = LogCluster(tokens, _int(item["cluster_id"]))
    cluster.size = _int(item["size"])
    return cluster
