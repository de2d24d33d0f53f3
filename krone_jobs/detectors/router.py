"""Routed detection: Local-Context -> Nested-Aware -> LLM, level by level, with early exit and caches.

For each session, levels are judged in order (status, action, entity). A KRONE Seq in the knowledge base
is normal at once. An unseen one goes to the Nested-Aware detector, which scores it in context; when that
score is close to the threshold (within ``llm_band``) and an LLM judge is plugged in, the LLM decides,
but only when the walk reaches that chunk: the first anomalous chunk ends the session's judgement, so no
call is spent on a chunk behind it. Operators' feedback joins the knowledge base (:meth:`add_normal`). Two caches make a night cheap: per chunk (level
+ KRONE Seq key -> decision, so each distinct unseen chunk is scored once) and per session (template
sequence -> verdict). Unseen chunks of a whole batch are scored in one batched pass per level.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from sklearn.base import BaseEstimator

from krone_jobs.detectors.chunks import TABLES, ChunkExample, chunk_examples
from krone_jobs.detectors.explain import describe_difference, k_nearest, nearest, render_steps
from krone_jobs.detectors.local_context import LocalContextDetector
from krone_jobs.detectors.nested_aware import NestedAwareDetector
from krone_jobs.detectors.verdict import EMPTY, NORMAL, SessionVerdict, unknown_template_verdict
from krone_jobs.hierarchy.kseqs import LEVELS, Cut
from krone_jobs.hierarchy.model import Hierarchy

Key = tuple[Any, ...]
_Prepared = tuple[Cut, dict[str, list[ChunkExample]]]


@dataclass(frozen=True, slots=True)
class ChunkRequest:
    """What an LLM judge gets for one uncertain chunk (node ids only; the judge renders and redacts)."""

    level: str
    parent: str
    nodes: tuple[str, ...]
    children: tuple[tuple[str, ...], ...]
    nested_score: float
    nearest_normal: tuple[tuple[str, ...], ...]
    """The ``llm_examples`` most similar normal chunks of the same parent, most similar first."""


@dataclass(frozen=True, slots=True)
class ChunkDecision:
    anomalous: bool
    detector: str
    score: float
    reason: str


IN_KNOWLEDGE_BASE = ChunkDecision(False, "local", 0.0, "in the knowledge base")


class ChunkJudge(Protocol):
    """The LLM seam: return a decision, or ``None`` to keep the Nested-Aware verdict (budget spent, endpoint
    down, invalid answer...)."""

    def judge(self, request: ChunkRequest) -> ChunkDecision | None: ...


class RoutedDetector(BaseEstimator):
    """Local-Context knowledge base, then the Nested-Aware model on unseen chunks, then an optional LLM.

    Learned: ``local_``, ``nested_``, ``hierarchy_`` (the hierarchy it judges with: ``hierarchy`` plus any
    templates placed later, :meth:`extend_hierarchy`), ``stats_``."""

    def __init__(
        self,
        hierarchy: Hierarchy,
        *,
        nested: bool = True,
        nested_params: dict[str, Any] | None = None,
        llm: ChunkJudge | None = None,
        llm_band: float = 0.25,
        llm_examples: int = 3,
        cache_size: int = 1_000_000,
    ) -> None:
        self.hierarchy = hierarchy
        self.nested = nested
        self.nested_params = nested_params
        self.llm = llm
        self.llm_band = llm_band
        self.llm_examples = llm_examples
        self.cache_size = cache_size

    # -------------------------------------------------------------------------------- training
    def fit(self, X: Iterable[Sequence[str]], y: object = None, groups: Sequence[Any] | None = None) -> RoutedDetector:
        """``groups``: each session's day, for the Nested-Aware model's cross-fitting (see its ``fit``)."""
        sessions = [tuple(s) for s in X]
        self.local_ = LocalContextDetector(self.hierarchy, automaton=False).fit(sessions)
        self.nested_ = (
            NestedAwareDetector(self.hierarchy, **(self.nested_params or {})).fit(sessions, groups=groups)
            if self.nested else None
        )
        self.hierarchy_ = self.hierarchy
        self._reset_runtime()
        return self

    def extend_hierarchy(self, placed: Hierarchy) -> int:
        """Judge the templates of ``placed`` (the pipeline's hierarchy, grown by the hierarchy stage since
        training) that this model lacks instead of flagging every session that has one: their nodes join
        the codebooks as never-seen nodes, so the Nested-Aware rules judge a new template in context (an
        error step is anomalous, an ordinary one is weighed by its session's content), exactly as
        ``krone evaluate`` does, where the hierarchy covers test-only templates too. Existing templates keep
        the model's placement. Runtime only: :meth:`save` writes the training hierarchy. Returns how many
        templates were added."""
        new = [placed[t] for t in sorted(placed) if t not in self.hierarchy_]
        if not new:
            return 0
        self.hierarchy_ = self.hierarchy_.extend(new)
        codebook = self.local_.codebook_.extended(self.hierarchy_)
        self.local_.use_codebook(codebook)
        if self.nested_ is not None:
            self.nested_.use_codebook(codebook)
        self._reset_runtime()
        return len(new)

    def _reset_runtime(self) -> None:
        self._sessions: dict[tuple[str, ...], SessionVerdict] = {}
        self._levels: dict[tuple[str, ...], tuple[int, int, int]] = {}
        self._chunks: dict[tuple[int, ChunkExample], ChunkDecision] = {}
        self._uncertain: dict[tuple[int, ChunkExample], Any] = {}  # in the LLM band, not yet asked
        self._normals_by_parent: dict[tuple[int, Any], list[tuple[str, ...]]] | None = None
        self._nearest_memo: dict[tuple[int, int, tuple[int, ...]], tuple[tuple[str, ...], str] | None] = {}
        self.stats_ = {"sessions": 0, "session_cache_hits": 0, "flagged_by_local": 0, "rescued_by_nested": 0,
                       "chunks_scored": 0, "llm_requests": 0}

    # ------------------------------------------------------------------------------- judging
    def _keys(self, c: Cut) -> tuple[list[Key], ...]:
        return (c.status_keys, c.action_keys, [c.entity_key])  # type: ignore[return-value]

    def _prepare(self, seqs: Sequence[tuple[str, ...]]) -> dict[tuple[str, ...], _Prepared | None]:
        """Cut new sessions and score, in one batch per level, every unseen chunk not yet decided.

        Decisions are cached per chunk *example* (its nodes, parent, children and session content), not
        per knowledge-base key: the Nested-Aware model judges an entity-level chunk by its session's
        content, so two sessions with the same entity sequence may deserve different verdicts."""
        cb = self.local_.codebook_
        kb = self.local_.knowledge_
        prepared: dict[tuple[str, ...], _Prepared | None] = {}
        pending: list[dict[ChunkExample, None]] = [{}, {}, {}]
        for seq in seqs:
            if seq in prepared:
                continue
            c = cb.cut(seq)
            if c is None:
                prepared[seq] = None
                continue
            exs = chunk_examples(c)
            prepared[seq] = (c, exs)
            for li, (keys, lvl) in enumerate(zip(self._keys(c), LEVELS)):
                for key, ex in zip(keys, exs[lvl]):
                    if key not in kb[li] and (li, ex) not in self._chunks:
                        pending[li][ex] = None
        for li, lvl in enumerate(LEVELS):
            if pending[li]:
                self._decide(li, lvl, list(pending[li]))
        return prepared

    def _decide(self, li: int, level: str, pending: list[ChunkExample]) -> None:
        self.stats_["chunks_scored"] += len(pending)
        if self.nested_ is None:
            for ex in pending:
                self._chunks[(li, ex)] = ChunkDecision(True, "local", 1.0, self._unseen_reason(li, ex))
            return
        scores = self.nested_.score_examples(level, pending)
        for ex, s in zip(pending, scores):
            self._chunks[(li, ex)] = self._explained(li, ex, ChunkDecision(s.ratio > 1.0, "nested", s.ratio, ""), s)
            if self.llm is not None and math.isfinite(s.ratio) and abs(s.ratio - 1.0) <= self.llm_band:
                self._uncertain[(li, ex)] = s

    def _explained(self, li: int, ex: ChunkExample, decision: ChunkDecision, score: Any) -> ChunkDecision:
        """Give a decision without a reason the Nested-Aware one (what was unseen, nearest normal, why)."""
        if decision.reason:
            return decision
        if decision.anomalous:
            why = self.nested_.explain(LEVELS[li], ex, score)  # type: ignore[union-attr]
            return ChunkDecision(True, decision.detector, decision.score, f"{self._unseen_reason(li, ex)}; {why}")
        return ChunkDecision(False, decision.detector, decision.score, "unseen but plausible in context")

    def _decision(self, li: int, ex: ChunkExample) -> ChunkDecision:
        """The chunk's decision; an uncertain one is put to the LLM now, when the walk first reaches it."""
        score = self._uncertain.pop((li, ex), None)
        if score is not None and self.llm is not None:
            self.stats_["llm_requests"] += 1
            answer = self.llm.judge(self._request(li, LEVELS[li], ex, score.ratio))
            if answer is not None:
                self._chunks[(li, ex)] = self._explained(li, ex, answer, score)
        return self._chunks[(li, ex)]

    def add_normal(self, kseq_key: str) -> bool:
        """Treat the level key ``<level>|<parent>|<n1>,<n2>,...`` as known normal (an operator's feedback):
        it joins the knowledge base and decisions already made are dropped. ``False`` when the key names a
        level or node this model does not know (such a chunk cannot occur with its hierarchy)."""
        level, _, rest = kseq_key.partition("|")
        parent, _, nodes = rest.partition("|")
        if level not in LEVELS or not nodes:
            return False
        li = LEVELS.index(level)
        own_t, parent_t, _ = TABLES[level]
        index = [{name: code for code, name in enumerate(table)} for table in self.local_.codebook_.names]
        try:
            codes = tuple(index[own_t][n] for n in nodes.split(","))
            key = codes if parent_t is None else (index[parent_t][parent], *codes)
        except KeyError:
            return False
        self.local_.knowledge_[li].add(key)
        self._sessions.clear()
        self._levels.clear()
        self._normals_by_parent = None
        self._nearest_memo.clear()
        return True

    def _names(self, li: int, ex: ChunkExample) -> tuple[str, tuple[str, ...]]:
        names = self.local_.codebook_.names
        own_t, parent_t, _ = TABLES[LEVELS[li]]
        parent = names[parent_t][ex.parent] if parent_t is not None else ""
        return parent, tuple(names[own_t][n] for n in ex.nodes)

    def _unseen_reason(self, li: int, ex: ChunkExample) -> str:
        parent, nodes = self._names(li, ex)
        where = f" under {parent}" if parent else ""
        reason = f"{LEVELS[li]}-level KRONE Seq{where} never seen in training: {render_steps(nodes)}"
        near = self._nearest(li, ex)
        if near is not None:
            reason += f"; nearest normal: {render_steps(near[0])} ({near[1]})"
        return reason

    def _nearest(self, li: int, ex: ChunkExample) -> tuple[tuple[str, ...], str] | None:
        """Nearest normal chunk of the same parent and what differs (memoised: the search and the difference
        are the costly part of a reason, and many sessions share an unseen chunk)."""
        memo_key = (li, ex.parent, ex.nodes)
        if memo_key not in self._nearest_memo:
            found = self._search_nearest(li, ex)
            self._nearest_memo[memo_key] = (
                None if found is None else (found[0], describe_difference(found[0], self._names(li, ex)[1])))
        return self._nearest_memo[memo_key]

    def _search_nearest(self, li: int, ex: ChunkExample) -> tuple[tuple[str, ...], float] | None:
        if self._normals_by_parent is None:
            by_parent: dict[tuple[int, Any], list[tuple[str, ...]]] = {}
            names = self.local_.codebook_.names
            for lj, keys in enumerate(self.local_.knowledge_):
                own_t = TABLES[LEVELS[lj]][0]
                for key in keys:
                    parent, nodes = (key[0], key[1:]) if lj < 2 else (None, key)
                    by_parent.setdefault((lj, parent), []).append(tuple(names[own_t][n] for n in nodes))
            self._normals_by_parent = by_parent
        parent = ex.parent if li < 2 else None
        _, nodes = self._names(li, ex)
        return nearest(nodes, self._normals_by_parent.get((li, parent), []))

    def _request(self, li: int, level: str, ex: ChunkExample, ratio: float) -> ChunkRequest:
        parent, nodes = self._names(li, ex)
        names = self.local_.codebook_.names
        child_t = TABLES[level][2]
        children = tuple(tuple(names[child_t][n] for n in kid) for kid in ex.children) if child_t is not None else ()
        self._nearest(li, ex)  # builds the per-parent index of normal chunks
        normals = self._normals_by_parent.get((li, ex.parent if li < 2 else None), [])  # type: ignore[union-attr]
        return ChunkRequest(level, parent, nodes, children, ratio, tuple(k_nearest(nodes, normals, self.llm_examples)))

    def _route(self, seq: tuple[str, ...], prepared: _Prepared | None) -> tuple[SessionVerdict, tuple[int, int, int]]:
        if not seq:
            return EMPTY, (0, 0, 0)
        if prepared is None:
            unknown = next(i for i, t in enumerate(seq) if t not in self.local_.codebook_.codes)
            return unknown_template_verdict(seq, unknown), (1, 0, 0)
        c, exs = prepared
        kb = self.local_.knowledge_
        verdict: SessionVerdict | None = None
        flags = [0, 0, 0]
        flagged = False
        rescuer = "nested"
        for li, keys in enumerate(self._keys(c)):
            spans = c.status_spans if li == 0 else c.action_spans if li == 1 else [(0, len(seq))]
            for i, (key, ex) in enumerate(zip(keys, exs[LEVELS[li]])):
                if key in kb[li]:
                    continue
                flagged = True
                d = self._decision(li, ex)
                if d.detector == "llm" and not d.anomalous:
                    rescuer = "llm"
                if d.anomalous:
                    flags[li] = 1
                    if verdict is None:
                        names = self.local_.codebook_.names
                        own, parent_t, _ = TABLES[LEVELS[li]]
                        nodes = tuple(names[own][n] for n in (key[1:] if li < 2 else key))
                        parent = names[parent_t][key[0]] if parent_t is not None else ""
                        verdict = SessionVerdict(True, LEVELS[li], i, spans[i], nodes,
                                                 f"{LEVELS[li]}|{parent}|{','.join(nodes)}", d.detector, d.score,
                                                 d.reason)
                    break
        if verdict is None:
            verdict = NORMAL if not flagged else SessionVerdict(
                False, detector=rescuer, reason="unseen KRONE Seqs judged plausible in context"
            )
        return verdict, (flags[0], flags[1], flags[2])

    def _run(self, X: Iterable[Sequence[str]]) -> list[tuple[str, ...]]:
        seqs = [tuple(s) for s in X]
        new = [s for s in dict.fromkeys(seqs) if s not in self._sessions]
        if new:
            prepared = self._prepare(new)
            if len(self._sessions) + len(new) > self.cache_size:
                self._sessions.clear()
                self._levels.clear()
            for seq in new:
                v, flags = self._route(seq, prepared.get(seq))
                self._sessions[seq] = v
                self._levels[seq] = flags
            if len(self._chunks) > self.cache_size:
                self._chunks.clear()
                self._uncertain.clear()
        self.stats_["sessions"] += len(seqs)
        self.stats_["session_cache_hits"] += len(seqs) - len(new)
        return seqs

    def detect(self, X: Iterable[Sequence[str]]) -> list[SessionVerdict]:
        seqs = self._run(X)
        out = [self._sessions[s] for s in seqs]
        for v in out:
            if v.anomalous or v.detector != "local":  # the knowledge base did not vouch for it
                self.stats_["flagged_by_local"] += 1
                self.stats_["rescued_by_nested"] += int(not v.anomalous)
        return out

    def walked_chunks(self, seq: Sequence[str]) -> list[tuple[str, int, ChunkDecision]]:
        """``(level, chunk index, decision)`` of every chunk the walk of a judged session reached, in order,
        up to and including the first anomalous one (knowledge-base chunks: normal, detector ``local``).
        What the score job writes to the verdict cache; ``[]`` for a session that cannot be cut."""
        seq = tuple(seq)
        c = self.local_.codebook_.cut(seq)
        if c is None:
            return []
        exs = chunk_examples(c)
        kb = self.local_.knowledge_
        out: list[tuple[str, int, ChunkDecision]] = []
        for li, keys in enumerate(self._keys(c)):
            for i, (key, ex) in enumerate(zip(keys, exs[LEVELS[li]])):
                if key in kb[li]:
                    out.append((LEVELS[li], i, IN_KNOWLEDGE_BASE))
                    continue
                if (li, ex) not in self._chunks:
                    self._prepare([seq])
                d = self._decision(li, ex)
                out.append((LEVELS[li], i, d))
                if d.anomalous:
                    return out
        return out

    def predict(self, X: Iterable[Sequence[str]]) -> np.ndarray:
        return np.fromiter((v.anomalous for v in self.detect(X)), dtype=np.int8)

    def score_samples(self, X: Iterable[Sequence[str]]) -> np.ndarray:
        """Higher is more normal: minus the deciding chunk's score (0 for sessions fully in the KB)."""
        return -np.fromiter((v.score if v.anomalous else 0.0 for v in self.detect(X)), dtype=np.float64)

    def predict_levels(self, X: Iterable[Sequence[str]]) -> np.ndarray:
        seqs = self._run(X)
        return np.asarray([self._levels[s] for s in seqs], dtype=np.int8).reshape(-1, 3)

    # --------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """Write the fitted detector as ``hierarchy.json`` + ``detector.pt`` (tensors and plain lists only,
        readable with ``torch.load(weights_only=True)``: loading never runs code from the file)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "hierarchy.json").write_text(self.hierarchy.to_json())
        state: dict[str, Any] = {"params": {"nested": self.nested, "llm_band": self.llm_band,
                                            "llm_examples": self.llm_examples, "cache_size": self.cache_size,
                                            "nested_params": json.dumps(self.nested_params or {})},
                                 "local": self.local_.to_state()}
        if self.nested_ is not None:
            state["nested"] = self.nested_.to_state()
        torch.save(state, path / "detector.pt")

    @classmethod
    def load(cls, path: str | Path, llm: ChunkJudge | None = None) -> RoutedDetector:
        path = Path(path)
        hierarchy = Hierarchy.from_json((path / "hierarchy.json").read_text())
        state = torch.load(path / "detector.pt", weights_only=True)
        p = state["params"]
        det = cls(hierarchy, nested=p["nested"], nested_params=json.loads(p["nested_params"]) or None,
                  llm=llm, llm_band=p["llm_band"], llm_examples=int(p.get("llm_examples", 3)), cache_size=p["cache_size"])
        det.local_ = LocalContextDetector.from_state(hierarchy, state["local"])
        det.nested_ = NestedAwareDetector.from_state(hierarchy, state["nested"]) if "nested" in state else None
        det.hierarchy_ = hierarchy
        det._reset_runtime()
        return det
