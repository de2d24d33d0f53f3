"""KRONE's Local-Context detector: a knowledge base of normal KRONE Seqs per level plus a transition automaton.

Training keeps, per level, the set of KRONE Seqs seen in normal sessions. A test session is cut into
KRONE Seqs and judged level by level (status, then action, then entity) with early exit at the first
anomalous chunk. A chunk unseen at its level is anomalous unless the automaton accepts it.

Two automaton rules:

* ``compat=True`` reproduces the authors' code exactly (their figures in
  ``official/README.md``): transitions come from training action-level chunks (one graph for all
  entities) and entity-level chunks; the status level never uses the automaton; an unseen chunk passes
  when no *seen* transition follows an unseen one, i.e. missing transitions that form a suffix pass, and
  a length-1 chunk always passes.
* the default is a plain automaton: transitions per parent (action level) or global (entity level), and
  a chunk passes only if every transition was seen in training and it ends in an accepting state (a
  node some normal chunk ended with). It may start anywhere: node-window sessions start mid-execution.
  The status level never uses it: there, repeat counts matter (HDFS writes three replicas; two is an
  anomaly). ``automaton="auto"`` decides from held-out normal data whether to use it at all.

Hot path: node ids are interned to ints once at ``fit``; sessions are judged on int tuples, and a verdict
cache keyed by the session's template sequence (equivalently, its entity-level KRONE Seq identity) makes
repeated sessions a dictionary lookup.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from krone_jobs.detectors.codebook import Codebook
from krone_jobs.detectors.explain import render_steps
from krone_jobs.detectors.verdict import EMPTY, NORMAL, SessionVerdict, unknown_template_verdict
from krone_jobs.hierarchy.kseqs import LEVELS, Cut
from krone_jobs.hierarchy.model import Hierarchy

_END = -1
Key = tuple[Hashable, ...]


class LocalContextDetector(BaseEstimator):
    """Knowledge base + automaton over KRONE Seqs, scikit-learn style (1 = anomalous, 0 = normal).

    Parameters
    ----------
    hierarchy: the Log Abstraction Model used to cut sessions.
    automaton: ``True``/``False``, or ``"auto"``: decide at ``fit`` from held-out normal data (below).
    fp_budget, cv_folds: for ``"auto"``: the exact knowledge base is estimated, by ``cv_folds``-fold
        cross-validation over the training sessions, to flag some fraction of unseen *normal* sessions;
        when that exceeds ``fp_budget`` the data is too varied for exact matching and the automaton
        generalises. No anomaly labels are used.
    compat: reproduce the authors' rule exactly, quirks included (needs an explicit ``automaton``).
    cache_size: maximum number of cached session verdicts (cleared when full; 0 disables the cache).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        *,
        automaton: bool | str = "auto",
        fp_budget: float = 0.03,
        cv_folds: int = 5,
        compat: bool = False,
        cache_size: int = 1_000_000,
    ) -> None:
        self.hierarchy = hierarchy
        self.automaton = automaton
        self.fp_budget = fp_budget
        self.cv_folds = cv_folds
        self.compat = compat
        self.cache_size = cache_size

    # ------------------------------------------------------------------------------------ fitting
    def fit(self, X: Iterable[Sequence[str]], y: object = None) -> LocalContextDetector:
        """Learn the knowledge base (and, for ``automaton="auto"``, whether to use the automaton) from
        normal sessions given as template-id sequences. Empty sessions and sessions with templates the
        hierarchy lacks are skipped and counted in ``n_skipped_sessions_``."""
        self._intern()
        sessions = list(X)
        cuts = [c for c in map(self._cut, sessions) if c is not None]
        knowledge: tuple[set[Key], set[Key], set[Key]] = (set(), set(), set())
        edges: tuple[set[Key], set[Key], set[Key]] = (set(), set(), set())
        for c in cuts:
            knowledge[0].update(c.status_keys)
            knowledge[1].update(c.action_keys)
            knowledge[2].add(c.entity_key)
            for level, keys in enumerate((c.status_keys, c.action_keys, (c.entity_key,))):
                for key in keys:
                    edges[level].update(self._edges(level, key))
        self.knowledge_ = knowledge
        self.transitions_ = edges
        self.n_sessions_ = len(cuts)
        self.n_skipped_sessions_ = len(sessions) - len(cuts)
        if self.automaton == "auto":
            self.heldout_fp_rate_ = _heldout_flag_rate(cuts, self.cv_folds)
            self.automaton_ = self.heldout_fp_rate_ > self.fp_budget
        else:
            self.heldout_fp_rate_ = float("nan")
            self.automaton_ = bool(self.automaton)
        self._cache: dict[tuple[str, ...], SessionVerdict] = {}
        self.cache_hits_ = 0
        self.cache_misses_ = 0
        return self

    def _intern(self) -> None:
        if self.compat and self.automaton == "auto":
            raise ValueError("compat mode needs an explicit automaton=True/False (the authors' setting)")
        self.codebook_ = Codebook.from_hierarchy(self.hierarchy)

    def _cut(self, seq: Sequence[str]) -> Cut | None:
        return self.codebook_.cut(seq)

    def _edges(self, level: int, key: Key) -> list[Key]:
        """Transitions of one chunk. Compat: bare (a, b) pairs at action/entity level only."""
        if level == 0:
            return []
        if self.compat:
            nodes = key[1:] if level == 1 else key
            return [(nodes[i], nodes[i + 1]) for i in range(len(nodes) - 1)]
        parent, nodes = (key[0], key[1:]) if level == 1 else (None, key)
        path = (*nodes, _END)
        return [(parent, path[i], path[i + 1]) for i in range(len(path) - 1)]

    # ---------------------------------------------------------------------------------- judging
    def _unseen_transition(self, level: int, key: Key) -> Key | None:
        """``None`` if the automaton accepts the chunk, else the first transition it lacks (``()`` when
        no automaton applies at this level)."""
        if not self.automaton_ or level == 0:
            return ()
        known = self.transitions_[level]
        edges = self._edges(level, key)
        missing = [e not in known for e in edges]
        if self.compat:
            # The authors' path_diffs: only a seen transition after an unseen one closes a "diff".
            first = next((i for i, m in enumerate(missing) if m), None)
            if first is None or all(missing[first:]):
                return None
            return edges[first]
        first = next((i for i, m in enumerate(missing) if m), None)
        return None if first is None else edges[first]

    def _level_flags(self, c: Cut) -> list[int | None]:
        """Index of the first anomalous chunk per level (``None`` when the level is normal)."""
        out: list[int | None] = []
        for level, keys in enumerate((c.status_keys, c.action_keys, (c.entity_key,))):
            kb = self.knowledge_[level]
            hit = None
            for i, key in enumerate(keys):
                if key not in kb and self._unseen_transition(level, key) is not None:
                    hit = i
                    break
            out.append(hit)
        return out

    def _judge(self, seq: tuple[str, ...]) -> SessionVerdict:
        if not seq:
            return EMPTY
        unknown = next((i for i, t in enumerate(seq) if t not in self.codebook_.codes), None)
        if unknown is not None:
            return unknown_template_verdict(seq, unknown)
        c = self._cut(seq)
        assert c is not None
        for level, keys in enumerate((c.status_keys, c.action_keys, (c.entity_key,))):
            kb = self.knowledge_[level]
            for i, key in enumerate(keys):
                if key in kb:
                    continue
                missing = self._unseen_transition(level, key)
                if missing is not None:
                    return self._verdict(level, i, key, c, missing)
        return NORMAL

    def _verdict(self, level: int, index: int, key: Key, c: Cut, missing: Key) -> SessionVerdict:
        names = self.codebook_.names
        if level == 0:
            parent, nodes = names[1][key[0]], tuple(names[2][x] for x in key[1:])  # type: ignore[index]
            span = c.status_spans[index]
        elif level == 1:
            parent, nodes = names[0][key[0]], tuple(names[1][a] for a in key[1:])  # type: ignore[index]
            span = c.action_spans[index]
        else:
            parent, nodes = "", tuple(names[0][e] for e in key)  # type: ignore[index]
            span = (0, c.status_spans[-1][1])
        level_name = LEVELS[level]
        where = f" under {parent}" if parent else ""
        reason = f"{level_name}-level KRONE Seq{where} never seen in training: {render_steps(nodes)}"
        if len(missing) >= 2:
            a, b = missing[-2], missing[-1]
            own = names[2 if level == 0 else 1 if level == 1 else 0]
            label = {_END: "end"}
            a_name = label.get(a, own[a] if isinstance(a, int) and a >= 0 else str(a))  # type: ignore[index]
            b_name = label.get(b, own[b] if isinstance(b, int) and b >= 0 else str(b))  # type: ignore[index]
            reason += f"; transition {a_name} -> {b_name} never seen"
        return SessionVerdict(
            anomalous=True,
            level=level_name,
            chunk_index=index,
            span=span,
            nodes=nodes,
            key=f"{level_name}|{parent}|{','.join(nodes)}",
            score=1.0,
            reason=reason,
        )

    # ------------------------------------------------------------------------------ public API
    def detect(self, X: Iterable[Sequence[str]]) -> list[SessionVerdict]:
        """One :class:`SessionVerdict` per session (early exit at the first anomalous level)."""
        cache = self._cache
        out: list[SessionVerdict] = []
        hits = 0
        for seq in X:
            key = tuple(seq)
            verdict = cache.get(key)
            if verdict is None:
                verdict = self._judge(key)
                if self.cache_size > 0:
                    if len(cache) >= self.cache_size:
                        cache.clear()
                    cache[key] = verdict
            else:
                hits += 1
            out.append(verdict)
        self.cache_hits_ += hits
        self.cache_misses_ += len(out) - hits
        return out

    def predict(self, X: Iterable[Sequence[str]]) -> np.ndarray:
        """1 for an anomalous session, 0 for a normal one."""
        return np.fromiter((v.anomalous for v in self.detect(X)), dtype=np.int8)

    def score_samples(self, X: Iterable[Sequence[str]]) -> np.ndarray:
        """Higher is more normal (scikit-learn convention): 0 normal, -1 anomalous."""
        return -np.fromiter((v.score for v in self.detect(X)), dtype=np.float64)

    def predict_levels(self, X: Iterable[Sequence[str]]) -> np.ndarray:
        """(n_sessions, 3) 0/1 matrix: is the status / action / entity level anomalous, without early
        exit (for per-level figures). A session with an unknown template counts at the status level."""
        rows = []
        for seq in X:
            c = self._cut(seq)
            if c is None:
                rows.append((int(bool(seq)), 0, 0))
                continue
            rows.append(tuple(int(f is not None) for f in self._level_flags(c)))
        return np.asarray(rows, dtype=np.int8).reshape(-1, 3)

    def clear_cache(self) -> None:
        self._cache.clear()

    def use_codebook(self, codebook: Codebook) -> None:
        """Judge with ``codebook``, an :meth:`Codebook.extended` copy of this one (templates placed after
        training): every learned code keeps its meaning, the new templates' nodes are simply unseen."""
        self.codebook_ = codebook
        self._cache.clear()

    # ---------------------------------------------------------------------------- persistence
    def to_state(self) -> dict[str, Any]:
        """Learned state as plain lists (node codes follow the hierarchy, so they are reproducible)."""
        return {
            "params": {"automaton": str(self.automaton), "fp_budget": self.fp_budget, "cv_folds": self.cv_folds,
                       "compat": self.compat, "cache_size": self.cache_size},
            "knowledge": [[list(k) for k in level] for level in self.knowledge_],
            "transitions": [[[-2 if x is None else x for x in e] for e in level] for level in self.transitions_],
            "automaton": self.automaton_,
            "heldout_fp_rate": self.heldout_fp_rate_,
            "n_sessions": self.n_sessions_,
        }

    @classmethod
    def from_state(cls, hierarchy: Hierarchy, state: dict[str, Any]) -> LocalContextDetector:
        p = dict(state["params"])
        p["automaton"] = {"True": True, "False": False}.get(p["automaton"], p["automaton"])
        det = cls(hierarchy, **p)
        det.codebook_ = Codebook.from_hierarchy(hierarchy)
        det.knowledge_ = tuple({tuple(k) for k in level} for level in state["knowledge"])  # type: ignore[assignment]
        det.transitions_ = tuple(
            {tuple(None if x == -2 else x for x in e) for e in level} for level in state["transitions"]
        )  # type: ignore[assignment]
        det.automaton_ = bool(state["automaton"])
        det.heldout_fp_rate_ = float(state["heldout_fp_rate"])
        det.n_sessions_ = int(state["n_sessions"])
        det.n_skipped_sessions_ = 0
        det._cache = {}
        det.cache_hits_ = det.cache_misses_ = 0
        return det


def _heldout_flag_rate(cuts: Sequence[Cut], folds: int) -> float:
    """Fraction of held-out normal sessions that exact KRONE Seq matching (no automaton) would flag."""
    if len(cuts) < 2 * folds:
        return 1.0  # too little data to trust exact matching
    order = np.random.RandomState(0).permutation(len(cuts))
    flagged = 0
    for fold in range(folds):
        held = set(order[fold::folds].tolist())
        kb: tuple[set[Key], set[Key], set[Key]] = (set(), set(), set())
        for i, c in enumerate(cuts):
            if i not in held:
                kb[0].update(c.status_keys)
                kb[1].update(c.action_keys)
                kb[2].add(c.entity_key)
        for i in held:
            c = cuts[i]
            if (
                any(k not in kb[0] for k in c.status_keys)
                or any(k not in kb[1] for k in c.action_keys)
                or c.entity_key not in kb[2]
            ):
                flagged += 1
    return flagged / len(cuts)
