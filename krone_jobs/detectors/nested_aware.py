"""Nested-Aware detector: is an unseen KRONE Seq plausible *in its hierarchical context*?

The router (``router.py``) asks this detector only about KRONE Seqs that the Local-Context knowledge base
has never seen; ``ChunkScore.ratio > 1`` means anomalous. No anomaly label is ever used: every threshold
comes from normal training sessions by K-fold cross-fitting (each training session is judged by what was
learned from the *other* folds, as a test session is judged by what was learned from training).

One default configuration for every dataset and training size; per level, a chunk is anomalous when

1. **it brings a never-seen error step** (every level): an own-level node unseen in training whose name
   carries an error word (fail, fatal, exception, ...) gives ``ratio = inf``. This is the offline stand-in
   for the paper's per-template LLM check; on Thunderbird every labelled anomaly has one.

2. **it brings a never-seen ordinary step where normal sessions practically never do** (every level): the
   share of held-out sessions that bring a node of that level unseen in the other folds, taken as its
   one-sided 95 % Clopper-Pearson upper bound, must be below ``fp_budget``. HDFS (a closed vocabulary)
   qualifies once there are enough sessions to be sure (10 %, 80 %); Thunderbird (a long tail of rare
   templates) never does. Where the rule does not apply, a chunk with a new ordinary step is judged by the
   content of its session (3): the new step counts for its nearest known ancestor there.

2b. **it is an unseen chunk of a closed vocabulary** (every level): measured in the same cross-fitting,
   with the chunk key ``(parent, nodes...)`` (:func:`chunk_key`: the Local-Context knowledge-base key,
   status runs capped at ``MAX_REPEAT``). A *level* is closed when no held-out session brought a chunk of
   it unseen in the other folds and that share's one-sided 95 % Clopper-Pearson upper bound (``3 / n`` for
   0 of ``n``) is below ``fp_budget``: then every unseen chunk of the level is anomalous, even one made of
   known nodes (``ratio = fp_budget / bound``). A level where some normal session did bring one is not
   closed as a whole, but its *parents* (an action for status chunks, an entity for action chunks) may be:
   a parent is closed when every chunk under it recurs in at least three folds. That choice is
   cross-fitted too (for each held-out fold, parents are chosen from the other folds alone), so the share
   of held-out sessions that bring an unseen chunk under a parent so chosen is the false-alarm share of
   the whole procedure, selection included; its upper bound must be below ``fp_budget``.

   Why: elsewhere an unseen status / action chunk of known nodes is a new run length or interleaving
   (HDFS replica counts, Thunderbird) and is passed, but in a system whose executions follow a fixed
   grammar it is a skipped, repeated or swapped step. Measured (label-free figures from ``fit``): on the
   project's synthetic job logs (``krone_jobs.synthetic``, 3,000 normal training sessions, offline
   hierarchy with entities guessed from free text) 0 held-out sessions brought an unseen status- or
   action-level chunk (entity level about 1 %); passing them had cost half the recall of the knowledge
   base alone; closing both levels brought the routed recall from 0.44-0.50 to 0.79-0.81 (knowledge base
   alone 0.92, with 13-23 false alarms against 0-2; what was left is a swapped pair of steps of two
   components, at the open entity level). Since the ``krone`` line format keeps the component tag in the
   content, the offline entity is the component, and on ``krone demo`` (2,537 normal training sessions)
   random folds close all three levels (0 held-out sessions): recall 0.82 -> 1.0 (51 of 51), with 4 false
   alarms where there were none, normal nightly jobs with six input fetches, which no training job had.
   Held out by day, as ``krone train`` does (see :meth:`NestedAwareDetector.fit`), 10 of them bring an
   unseen entity chunk, so the entity level stays open: 48 of 51 and no false alarm (missed: two swapped
   steps of two components and an extra step, at that level). With the
   generator's own hierarchy the status level is open (the worker's progress / spill / gc steps
   interleave: about 49 sessions in 3,000) but 13 of its actions are closed: recall 0.40-0.44 -> 0.92-0.96,
   no false alarm. On the HDFS demo at 80 % 8 / 28 / 13 of 16,000 held-out sessions bring an unseen
   status / action / entity chunk; closing a level at such a share (its bound is below the budget) cost
   two false alarms and no recall, hence whole levels only at a share of 0; per parent, 7 actions and 5
   entities are closed there (procedure share 3 and 0 of 16,000) and the demo figures do not move;
   Thunderbird closes only action-level parents (26 entities at 80 %). Rule 2 implies nothing here (these
   chunks bring no new node).

3. **its session's content is implausible** (entity level, and chunks of rule 2's fallback): the *bag* of
   the session's leaves, counted at every level of the hierarchy (each status node counts for itself, its
   action, its entity and the session root; a node unseen in training counts for its nearest seen
   ancestor), ``log1p``-scaled and standardised per column with one pseudo-observation (``prior``), so a
   column constant in training keeps a finite scale that tightens as data grows. The score is the
   root-mean-square deviation, over the columns in play, from the nearest normal training bag.

   This is what "nested-aware" buys at the top: an entity-level KRONE Seq is judged by whether its
   children are plausible and consistent with each other (how many receive / add / delete steps, which
   components took part, how many events), not by the exact interleaving of concurrent components,
   which is what makes most unseen-but-normal entity chunks unseen (HDFS: the NameSystem, block and blk
   steps of one block interleave freely). Truncated executions, an extra error step, replica counts that
   do not add up and missing components all move the bag; a new interleaving does not. Measured
   alternatives that lost: a per-level GRU language model with one quantile threshold (recall collapses
   at 80 %: a new interleaving is more surprising per step than a truncation), plain Euclidean or L1 or
   max-column distance (the RMS form keeps long Thunderbird windows, with many columns in play, from
   looking far just because they are long).

3b. **its session's content is implausible, asked about an unseen lower-level chunk of known nodes**
   (``content_scope="auto"``, the default). The content check is one component with one budget, however
   many chunks it is asked about. In the same cross-fitting, its false alarms as routed by default (held-out
   normal sessions with an unseen entity-level chunk or a new ordinary node, and a score above the
   threshold; unseen by the Local-Context knowledge-base keys, exactly as the router flags) are counted. A
   lower level (action first, then status) joins while the false alarms of the widened routing, that
   level's sessions with an unseen chunk added, keep an upper bound below ``fp_budget``
   (``content_levels_``). Measured (offline hierarchy): on the HDFS demo at 80 % both levels join (3, then
   9 and 11 held-out false alarms of 16,000): 7 of the 8 anomalies that differed from training only in an
   action-level chunk under ``block`` are caught (their content scores are 11-29 times the threshold),
   missed anomalies 12 -> 5, one false alarm more (F1 0.9895 -> 0.9948); Thunderbird at 80 % lets the
   status level join (22 of 16,000) and no figure moves; at 10 % and 1 % no level joins (the bound of even
   0 of 200 sessions is 0.015). Judging every level so whatever it costs (``content_scope="all"``) gave
   the same at HDFS 80 % and cost 1-5 false alarms on each of the other five rows.

4. optionally (``sequence_levels``, off by default) **its order is implausible**: a per-level GRU
   language model over the chunk's own nodes, conditioned on the parent and on child-chunk summaries,
   scores the most surprising step. On the HDFS and Thunderbird demo splits it added false alarms at
   10 % / 1 % training and no recall at 80 % (unseen status / action chunks of known nodes are new run
   lengths and interleavings, which the content check judges from above), so it is kept for hierarchies
   whose within-action order matters, not used by default.

Thresholds (``fp_budget``, default 0.002 = one normal session in 500 per component): the content
threshold is the smallest value that flags at most that share of the cross-fitted held-out normal
sessions (all of them, not only those the knowledge base would miss: the pool is then large enough at
every training size, and the share bounds the false-alarm rate on the sessions the router does ask
about); rules 2, 2b and 3b are enabled only when their own false-alarm share is confidently within the
same budget (``new_node_rate_``, ``unseen_chunk_rate_``, ``closed_parent_rate_`` and
``content_level_rate_``, measured in the same K-fold cross-fitting).

Cost: fitting is counting plus nearest-neighbour searches (``torch.cdist``), no training loop unless the
order model is switched on; scoring is one batched distance computation per call on the flagged chunks.

Known limits. Content is a property of the session, so the score of an entity-level chunk (or of a chunk
with a new node) depends on ``ChunkExample.bag``, not only on the knowledge-base key; a chunk cache keyed
by that key alone (the router's) reuses one session's verdict for another with the same key and other
content. Unseen status / action chunks made of known nodes are passed (new run lengths and interleavings)
unless rule 2b finds their level or parent closed or rule 3b lets their level join the content check,
which needs many training sessions (its bound must fall below the budget). Rule 2b's known-chunk
keys cap status runs, so a longer run of a step that already ran ``MAX_REPEAT`` times is not caught by it,
and it assumes training and test sessions come from the same system state (as every cross-fitted rule).
Rare-but-normal components (Thunderbird daemons seen once in training) and rare-but-anomalous ones (HDFS
replication) look alike to a label-free content check; ``fp_budget`` sets how many of the former are
flagged.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import beta
from sklearn.base import BaseEstimator
from torch import nn

from krone_jobs.detectors.chunks import TABLES, ChunkExample, chunk_examples, chunk_key
from krone_jobs.detectors.codebook import Codebook
from krone_jobs.detectors.content import BagModel
from krone_jobs.detectors.order_model import (
    END, OFFSET, PAD, SPECIAL_NAMES, UNSEEN_ERROR, UNSEEN_OK, Encoder, LevelLM, drop_tokens, inputs_targets,
)
from krone_jobs.hierarchy.kseqs import LEVELS, Cut

ERROR_WORDS = re.compile(
    r"error|fail|fatal|exception|timeout|timed out|refus|denied|invalid|corrupt|crash|panic|abort|unable"
    r"|cannot|can't|not found|lost|offline|reject|critical|broken|unexpected|interrupt|kill",
    re.IGNORECASE,
)
EPS = 1e-6
_BATCH = 256


# ---------------------------------------------------------------------------------------- scores
@dataclass(frozen=True, slots=True)
class ChunkScore:
    """One chunk's verdict material. ``ratio`` decides (> 1 anomalous, ``inf`` for an unseen error step,
    nan before calibration); ``score`` is the deciding component's raw value; ``position``/``observed``/
    ``expected``/``p_*`` locate a sequence-model or unseen-node decision in the chunk (model token ids);
    ``detail`` says in words what a content (bag) or unseen-node decision rests on."""

    score: float
    end: float  # order model: surprise of the chunk ending where it ends (nan otherwise)
    ratio: float
    position: int
    observed: int
    expected: int
    p_observed: float
    p_expected: float
    detail: str = ""


def budget_threshold(session_scores: Sequence[float], n_sessions: int, budget: float) -> float:
    """Smallest threshold that flags at most ``floor(budget * n_sessions)`` held-out normal sessions
    (``session_scores``: the held-out sessions' scores; a session scoring exactly the threshold passes)."""
    scores = np.sort(np.asarray([s for s in session_scores if math.isfinite(s)], dtype=np.float64))[::-1]
    allowed = int(math.floor(budget * n_sessions))
    if allowed >= len(scores):
        return EPS
    return max(EPS, float(scores[allowed]))


def _none() -> ChunkScore:
    return ChunkScore(0.0, math.nan, 0.0, -1, PAD, PAD, math.nan, math.nan)


# -------------------------------------------------------------------------------------- detector
class NestedAwareDetector(BaseEstimator):
    """Unseen-node rules, a content model of whole sessions and an optional order model (module
    docstring). ``score_examples(level, examples)`` is what the router calls; ``predict`` judges whole
    sessions on every chunk (1 = anomalous, 0 = normal), without a knowledge base in front.

    Parameters
    ----------
    hierarchy: the Log Abstraction Model.
    fp_budget: tolerated share of normal sessions flagged per component (content threshold, and the
        condition for treating a new ordinary node, or an unseen chunk of a level, as anomalous).
    folds: K of the cross-fitting that calibrates the content threshold and the new-node rates (with
        ``groups`` given to :meth:`fit`: at most K blocks of days).
    prior: pseudo-observation (variance units of ``log1p`` counts) added to every column's spread.
    content_scope: which unseen chunks the content check judges: always entity-level chunks and chunks
        that bring a new node; with ``"auto"`` (default) also the unseen chunks of the lower levels that
        rule 3b lets join, with ``"all"`` those of every level, with ``"new"`` no more.
    sequence_levels: levels that also get the GRU order model (default none); ``dim``, ``hidden``,
        ``epochs``, ``batch_size``, ``lr``, ``dropout_unseen`` configure it and ``holdout`` is the share of
        sessions held out to calibrate it (same ``fp_budget`` rule).
    seed: random seed (fold assignment, order model).

    Learned: ``thresholds_`` (``entity``: the content threshold, also applied to lower-level chunks judged
    by content; ``status`` / ``action``: ``inf``, no learned score of their own; ``<level>_order``: an
    enabled order model's), ``new_node_rate_`` (rule 2's upper-bounded share per level),
    ``unseen_chunk_count_`` / ``unseen_chunk_rate_`` (rule 2b: held-out sessions bringing an unseen chunk
    per level, and that share's upper bound), ``closed_parent_count_`` / ``closed_parent_rate_`` (the same
    for the per-parent procedure), ``closed_levels_``, ``closed_parents_`` (level -> closed parent codes)
    and ``known_chunks_`` (the chunk keys of closed levels and parents, see :func:`chunk_key`),
    ``content_level_count_`` / ``content_level_rate_`` (rule 3b: the content check's held-out false alarms as
    routed by default and with each level joined in turn, and their upper bounds), ``content_levels_``, ``bag_``,
    ``models_`` (order models), ``seen_``, ``codebook_``, ``losses_``, ``n_train_sessions_``, ``fold_kind_``
    (``groups``: the cross-fitting folds were the sessions' days, see :meth:`fit`; else ``random``).
    """

    def __init__(
        self,
        hierarchy: object,
        *,
        fp_budget: float = 0.002,
        folds: int = 5,
        prior: float = 1.0,
        content_scope: str = "auto",
        sequence_levels: tuple[str, ...] = (),
        dim: int = 16,
        hidden: int = 32,
        epochs: int = 20,
        batch_size: int = 128,
        lr: float = 3e-3,
        dropout_unseen: float = 0.05,
        holdout: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.hierarchy = hierarchy
        self.fp_budget = fp_budget
        self.folds = folds
        self.prior = prior
        self.content_scope = content_scope
        self.sequence_levels = sequence_levels
        self.dim = dim
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.dropout_unseen = dropout_unseen
        self.holdout = holdout
        self.seed = seed

    # -------------------------------------------------------------------------------- training
    def fit(self, X: Iterable[Sequence[str]], y: object = None,
            groups: Sequence[Any] | None = None) -> NestedAwareDetector:
        """Learn from normal sessions (template-id sequences); sessions that are empty or have templates
        the hierarchy lacks are skipped.

        ``groups``: one label per session, its day in the pipeline's training window. With two or more days,
        the cross-fitting folds are days (neighbouring days merged into at most ``folds`` blocks), so every
        held-out share says what a day brings that the other days did not teach, as a new night is judged by
        a model of past days. A random fold mixes every day into every fold and finds a system's novelty
        rarer than a new day does (``bench/night_e2e.py``, three rendered Thunderbird days: the content
        threshold 8.11 -> 9.11, the bound on the share of held-out sessions with a new status node 0.17 % ->
        0.19 %, false alarms on the next three days 20 -> 18; HDFS: threshold 0.134 -> 0.169, no verdict
        moves). Without groups: a seeded random assignment."""
        unknown = set(self.sequence_levels) - {"status", "action", "entity"}
        if unknown:
            raise ValueError(f"unknown sequence level(s) {sorted(unknown)}")
        if self.content_scope not in ("new", "auto", "all"):
            raise ValueError(f"content_scope must be 'new', 'auto' or 'all', not {self.content_scope!r}")
        torch.manual_seed(self.seed)
        rng = np.random.RandomState(self.seed)
        self.codebook_ = Codebook.from_hierarchy(self.hierarchy)  # type: ignore[arg-type]
        self.classes_ = self._classes()
        sessions = list(X)
        if groups is not None and len(groups) != len(sessions):
            raise ValueError(f"groups has {len(groups)} labels for {len(sessions)} sessions")
        kept = [(c, i) for i, c in enumerate(map(self.codebook_.cut, sessions)) if c is not None]
        if not kept:
            raise ValueError("no usable training session (all empty or with unknown templates)")
        cuts = [c for c, _ in kept]
        examples = [chunk_examples(c) for c in cuts]
        n = len(cuts)
        order = rng.permutation(n)
        days = [groups[i] for _, i in kept] if groups is not None else []
        self.fold_kind_ = "groups" if len(set(days)) > 1 else "random"
        k, folds = _assign_folds(order, self.folds, days if self.fold_kind_ == "groups" else None)
        self.seen_ = _seen(examples)
        self.thresholds_: dict[str, float] = {}
        self.losses_: dict[str, float] = {}

        # Cross-fitting: new-node rates per level and the content-score pool, each session judged by the
        # other folds only.
        new_ok = {lvl: 0 for lvl in LEVELS}
        scored: dict[int, float] = {}  # held-out session -> its cross-fitted content score
        new_node: set[int] = set()  # held-out sessions with a new ordinary node (judged by content too)
        fold_array = np.asarray(folds)
        for f in range(k):
            out_idx = order[f::k] if self.fold_kind_ == "random" else np.flatnonzero(fold_array == f)
            in_idx = np.setdiff1d(order, out_idx)
            if len(in_idx) == 0 or len(out_idx) == 0:
                continue
            seen_f = _seen([examples[i] for i in in_idx])
            bag_f = BagModel(self.codebook_, seen_f, self.prior).fit([examples[i]["entity"][0].bag for i in in_idx])
            judged: list[int] = []
            for i in out_idx:
                ex = examples[i]
                kinds = [{self._unseen(lvl, e, seen_f)[0] for e in ex[lvl]} for lvl in LEVELS]
                for lvl, found in zip(LEVELS, kinds):
                    new_ok[lvl] += UNSEEN_OK in found
                if any(UNSEEN_OK in found for found in kinds):
                    new_node.add(int(i))
                if not any(UNSEEN_ERROR in found for found in kinds):  # else decided by the unseen-error rule
                    judged.append(int(i))
            scores = bag_f.score([examples[i]["entity"][0].bag for i in judged])[0].tolist()
            scored.update(zip(judged, scores))
        self.new_node_rate_ = {lvl: _upper_bound(new_ok[lvl], n) for lvl in LEVELS}
        self._fit_closed_levels(examples, folds, k)
        self.bag_ = BagModel(self.codebook_, self.seen_, self.prior).fit([e["entity"][0].bag for e in examples])
        threshold = budget_threshold(list(scored.values()), n, self.fp_budget)
        self.thresholds_.update(status=math.inf, action=math.inf, entity=threshold)
        self._fit_content_levels(_unseen_by_fold(cuts, folds), new_node, scored, threshold, n)
        self.losses_.update(status=float("nan"), action=float("nan"), entity=float("nan"))

        # Optional order models: trained on all but a held-out share, calibrated on it.
        self.models_: dict[str, LevelLM] = {}
        n_hold = int(n * self.holdout) if n >= 10 else 0
        held, train = order[:n_hold], order[n_hold:]
        self.lm_seen_ = _seen([examples[i] for i in train])
        for lvl in LEVELS:
            if lvl not in self.sequence_levels:
                continue
            counter = Counter(ex for i in train for ex in examples[i][lvl])
            self.models_[lvl], self.losses_[lvl] = self._train_level(lvl, counter, rng)
            per_session = []
            for i in held:
                unseen = [ex for ex in examples[i][lvl] if ex not in counter]
                finite = [s for s in self._lm_scores(lvl, unseen, self.lm_seen_) if math.isfinite(s)]
                if finite:
                    per_session.append(max(finite))
            self.thresholds_[f"{lvl}_order"] = (budget_threshold(per_session, len(held), self.fp_budget)
                                                if per_session else math.inf)
        self.n_train_sessions_ = n
        self.n_skipped_sessions_ = len(sessions) - n
        return self

    def _fit_closed_levels(self, examples: Sequence[dict[str, list[ChunkExample]]], folds: Sequence[int],
                           k: int) -> None:
        """Rule 2b: which levels (or, failing that, which parents) have a closed chunk vocabulary.

        Same folds as the rest of the cross-fitting, in one pass: a chunk is unseen in the other folds
        exactly when every session that has it lies in the held-out session's own fold, so a bit mask of
        folds per chunk key is all the bookkeeping. Per level: held-out sessions that bring an unseen chunk
        (``unseen_chunk_count_``). Per parent: a parent is closed when every chunk under it recurs in at
        least three folds; the choice is cross-fitted too (for held-out fold ``f``, parents are chosen
        from the other folds as if ``f`` did not exist) and ``closed_parent_count_`` counts the held-out
        sessions that bring an unseen chunk under a parent so chosen: the false-alarm share of the whole
        procedure, selection included (a parent that merely happened to look closed is paid for there)."""
        full = (1 << k) - 1
        n = len(examples)
        self.unseen_chunk_count_: dict[str, int] = {}
        self.unseen_chunk_rate_: dict[str, float] = {}
        self.closed_parent_count_: dict[str, int] = {}
        self.closed_parent_rate_: dict[str, float] = {}
        self.closed_parents_: dict[str, set[int]] = {}
        self.known_chunks_: dict[str, set[tuple[int, ...]]] = {}
        closed_levels = []
        for lvl in LEVELS:
            keys = [{chunk_key(e) for e in ex[lvl]} for ex in examples]
            masks = _fold_masks(keys, folds)
            appears: dict[int, int] = {}  # parent -> folds it occurs in
            spoiled: dict[int, int] = {}  # parent -> outer folds f for which it is not closed
            for key, m in masks.items():
                appears[key[0]] = appears.get(key[0], 0) | m
                if m & (m - 1) == 0:  # one fold g: unseen by its session whichever other fold is held out
                    spoiled[key[0]] = spoiled.get(key[0], 0) | (full & ~m)
                elif bin(m).count("1") == 2:  # folds {g, f}: unseen by g's session once f is held out, and back
                    spoiled[key[0]] = spoiled.get(key[0], 0) | m

            def closed_without(parent: int, f: int) -> bool:
                return bool(appears[parent] & ~(1 << f)) and not (spoiled.get(parent, 0) >> f) & 1

            unseen = [[key for key in per if masks[key] == 1 << f] for per, f in zip(keys, folds)]
            count = sum(1 for u in unseen if u)
            pcount = sum(any(closed_without(key[0], f) for key in u) for u, f in zip(unseen, folds))
            self.unseen_chunk_count_[lvl] = count
            self.unseen_chunk_rate_[lvl] = _upper_bound(count, n)
            self.closed_parent_count_[lvl] = pcount
            self.closed_parent_rate_[lvl] = _upper_bound(pcount, n)
            if count == 0 and self.unseen_chunk_rate_[lvl] < self.fp_budget:
                closed_levels.append(lvl)
                self.known_chunks_[lvl] = set(masks)
                continue
            parents = {p for p in appears if p not in spoiled}  # closed whichever fold is held out
            if parents and self.closed_parent_rate_[lvl] < self.fp_budget:
                self.closed_parents_[lvl] = parents
                self.known_chunks_[lvl] = {key for key in masks if key[0] in parents}
        self.closed_levels_ = tuple(closed_levels)

    def _fit_content_levels(self, unseen_in: dict[str, set[int]], new_node: set[int], scored: dict[int, float],
                            threshold: float, n: int) -> None:
        """Rule 3b: at which lower levels an unseen chunk of known nodes is judged by its session's content too.

        The content check is one component with one budget, however many chunks it is asked about. Measured
        in the same cross-fitting: the held-out normal sessions it flags as routed by default (an unseen
        entity-level chunk or a new ordinary node, and a score above the threshold) are its false alarms; a
        lower level (action first, its repeats collapsed, then status) joins while the false alarms of the
        widened routing, that level's sessions with an unseen chunk added, keep an upper bound below
        ``fp_budget`` (``content_level_count_``: the flagged sessions with the level joined, in order).
        ``content_scope="all"`` judges both levels, ``"new"`` neither."""
        flagged = {i for i, score in scored.items() if score > threshold}
        spent = flagged & (unseen_in.get("entity", set()) | new_node)
        self.content_level_count_ = {"default": len(spent)}
        joined = []
        for lvl in ("action", "status"):
            widened = spent | (flagged & unseen_in.get(lvl, set()))
            self.content_level_count_[lvl] = len(widened)
            if self.content_scope == "all" or (self.content_scope == "auto" and _upper_bound(len(widened), n)
                                               < self.fp_budget):
                joined.append(lvl)
                spent = widened
        self.content_levels_ = tuple(joined)
        self.content_level_rate_ = {k: _upper_bound(c, n) for k, c in self.content_level_count_.items()}

    def chunks_closed(self, level: str, parent: int | None = None) -> bool:
        """Whether an unseen chunk at ``level`` under ``parent`` is anomalous even when made of known nodes
        (rule 2b); with ``parent=None``, whether the whole level is closed."""
        if level in self.closed_levels_:
            return True
        parents = self.closed_parents_.get(level)
        return parents is not None and parent is not None and parent in parents

    def _closed_detail(self, level: str, ex: ChunkExample) -> str:
        n = self.n_train_sessions_
        if level in self.closed_levels_:
            return (f"no normal session brings an unseen {level}-level KRONE Seq: this level's vocabulary is closed "
                    f"(held-out share {self.unseen_chunk_count_[level]} of {n}, upper bound "
                    f"{self.unseen_chunk_rate_[level]:.2g} < budget {self.fp_budget:.2g})")
        parent_t = TABLES[level][1]
        parent = self.codebook_.names[parent_t][ex.parent] if parent_t is not None else "the session root"
        k = self.closed_parent_count_[level]
        return (f"no normal session brings an unseen {level}-level KRONE Seq under {parent}: its vocabulary is "
                f"closed (every chunk under it recurs across the folds; held-out sessions bring an unseen chunk "
                f"under such closed parents at a share of {k} of {n}, upper bound "
                f"{self.closed_parent_rate_[level]:.2g} < budget {self.fp_budget:.2g})")

    def use_codebook(self, codebook: Codebook) -> None:
        """Judge with ``codebook``, an :meth:`Codebook.extended` copy of this one (templates placed after
        training). Learned codes keep their meaning; a new template's own nodes are unseen, so rule 1 (an
        error step), rule 2 or the content check with its nearest seen ancestor judge it, as in evaluation
        where the hierarchy covers the test templates too."""
        self.codebook_ = codebook
        self.classes_ = self._classes()
        self.bag_._route(codebook)

    def _classes(self) -> tuple[np.ndarray, ...]:
        """Per codebook table, the unseen-class token of every node (from its name)."""
        return tuple(
            np.asarray([UNSEEN_ERROR if ERROR_WORDS.search(_name(n)) else UNSEEN_OK for n in names], dtype=np.int64)
            for names in self.codebook_.names
        )

    def _unseen(self, level: str, ex: ChunkExample, seen: tuple[set[int], ...]) -> tuple[int, int]:
        """(``UNSEEN_ERROR``, position) if an own node is unseen and error-named, else (``UNSEEN_OK``,
        position) for the first unseen own node, else (``PAD``, -1)."""
        own_t = TABLES[level][0]
        first = -1
        for i, x in enumerate(ex.nodes):
            if x not in seen[own_t]:
                if self.classes_[own_t][x] == UNSEEN_ERROR:
                    return UNSEEN_ERROR, i
                if first < 0:
                    first = i
        return (UNSEEN_OK, first) if first >= 0 else (PAD, -1)

    def new_nodes_anomalous(self, level: str) -> bool:
        """Whether a never-seen ordinary node at ``level`` is anomalous (rule 2 of the module docstring)."""
        return self.new_node_rate_[level] < self.fp_budget

    # ----------------------------------------------------------------------------- order model
    def _new_model(self, level: str) -> LevelLM:
        own_t, parent_t, child_t = TABLES[level]
        sizes = [len(n) + OFFSET for n in self.codebook_.names]
        return LevelLM(
            sizes[own_t], sizes[parent_t] if parent_t is not None else OFFSET,
            sizes[child_t] if child_t is not None else 0, self.dim, self.hidden,
        )

    def _train_level(
        self, level: str, counter: Counter[ChunkExample], rng: np.random.RandomState
    ) -> tuple[LevelLM, float]:
        own_t, parent_t, child_t = TABLES[level]
        model = self._new_model(level)
        examples = sorted(counter, key=lambda ex: (len(ex.nodes), ex.nodes))
        if not examples:
            model.eval()
            return model, float("nan")
        encoder = Encoder(level, self.lm_seen_, self.classes_)
        own_lookup = encoder.class_lookup(own_t)
        parent_lookup = encoder.class_lookup(parent_t)
        child_lookup = encoder.class_lookup(child_t)
        batches = []
        for i in range(0, len(examples), self.batch_size):
            chunk = examples[i : i + self.batch_size]
            batch = encoder.encode(chunk)
            batch["weight"] = torch.tensor([math.sqrt(counter[ex]) for ex in chunk], dtype=torch.float32)
            batches.append(batch)
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        loss_fn = nn.CrossEntropyLoss(reduction="none", ignore_index=PAD)
        p = self.dropout_unseen
        last = float("nan")
        model.train()
        for _ in range(self.epochs):
            total = 0.0
            for b in rng.permutation(len(batches)):
                batch = batches[b]
                inputs, targets = inputs_targets(drop_tokens(batch["nodes"], own_lookup, p, gen), batch["length"])
                parent = drop_tokens(batch["parent"], parent_lookup, p, gen)
                children = drop_tokens(batch["children"], child_lookup, p, gen) if "children" in batch else None
                logits = model(parent, inputs, children, batch.get("child_len"))
                tok_loss = loss_fn(logits.transpose(1, 2), targets)
                w = batch["weight"].unsqueeze(1)
                loss = (tok_loss * w).sum() / (w * (targets != PAD)).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item()
            last = total / len(batches)
        model.eval()
        return model, last

    @torch.no_grad()
    def _lm_detail(
        self, level: str, examples: Sequence[ChunkExample], seen: tuple[set[int], ...]
    ) -> list[tuple[float, float, int, int, int, float, float]]:
        """Order-model surprise per chunk: (worst inner step NLL, end NLL, position, observed, expected,
        p_observed, p_expected)."""
        out: list[Any] = [None] * len(examples)
        if not examples:
            return out
        model = self.models_[level]
        encoder = Encoder(level, seen, self.classes_)
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].nodes))
        for start in range(0, len(order), _BATCH):
            idx = order[start : start + _BATCH]
            batch = encoder.encode([examples[i] for i in idx])
            inputs, targets = inputs_targets(batch["nodes"], batch["length"])
            logits = model(batch["parent"], inputs, batch.get("children"), batch.get("child_len"))
            logp = torch.log_softmax(logits, dim=-1)
            nll = -logp.gather(2, targets.unsqueeze(-1)).squeeze(-1)
            nll = nll.masked_fill(targets == PAD, -1.0)
            end_nll = nll.gather(1, batch["length"].unsqueeze(1)).squeeze(1)
            worst, pos = nll.masked_fill(targets == END, -1.0).max(dim=1)
            best_p, best_tok = logp.max(dim=-1)
            for row, i in enumerate(idx):
                p = int(pos[row])
                w = float(worst[row])
                out[i] = (w, float(end_nll[row]), p, int(targets[row, p]), int(best_tok[row, p]), math.exp(-w),
                          math.exp(float(best_p[row, p])))
        return out

    def _lm_scores(self, level: str, examples: Sequence[ChunkExample], seen: tuple[set[int], ...]) -> list[float]:
        return [d[0] for d in self._lm_detail(level, examples, seen)]

    # --------------------------------------------------------------------------------- scoring
    def score_examples(self, level: str, examples: Sequence[ChunkExample]) -> list[ChunkScore]:
        """One :class:`ChunkScore` per chunk (batched; order preserved)."""
        if not examples:
            return []
        out: list[ChunkScore | None] = [None] * len(examples)
        rest: list[int] = []
        by_content: list[int] = []  # judged by their session's content: entity chunks, chunks with a new node
        new_is_anomalous = self.new_nodes_anomalous(level)
        known = self.known_chunks_.get(level)
        own_t = TABLES[level][0]
        for i, ex in enumerate(examples):
            kind, pos = self._unseen(level, ex, self.seen_)
            if ex.bag and (level == "entity" or kind == UNSEEN_OK or level in self.content_levels_):
                by_content.append(i)
            if kind == UNSEEN_ERROR or (kind == UNSEEN_OK and new_is_anomalous):
                node = self.codebook_.names[own_t][ex.nodes[pos]]
                if kind == UNSEEN_ERROR:
                    ratio, why = math.inf, f"{node} was never seen in training and names an error"
                else:
                    rate = self.new_node_rate_[level]
                    ratio = self.fp_budget / rate
                    why = (f"{node} was never seen in training, and normal sessions practically never bring a new "
                           f"{level} node (held-out share {rate:.2g})")
                out[i] = ChunkScore(ratio, math.nan, ratio, pos, kind, PAD, 0.0, math.nan, why)
            elif known is not None and self.chunks_closed(level, ex.parent) and chunk_key(ex) not in known:
                rate = (self.unseen_chunk_rate_ if level in self.closed_levels_ else self.closed_parent_rate_)[level]
                ratio = self.fp_budget / rate
                out[i] = ChunkScore(ratio, math.nan, ratio, -1, PAD, PAD, math.nan, math.nan,
                                    self._closed_detail(level, ex))
            else:
                rest.append(i)
        if level in self.models_:
            thr = self.thresholds_[f"{level}_order"]
            details = self._lm_detail(level, [examples[i] for i in rest], self.lm_seen_)
            for i, (w, end, p, obs, exp_, p_obs, p_exp) in zip(rest, details):
                out[i] = ChunkScore(w, end, w / thr, p, obs, exp_, p_obs, p_exp)
        else:
            for i in rest:
                out[i] = _none()
        content = [i for i in by_content if out[i] is None or out[i].ratio <= 1.0]  # type: ignore[union-attr]
        if content:
            bags = list(dict.fromkeys(examples[i].bag for i in content))  # chunks of one session share its bag
            scored = {bag: r for bag, *r in zip(bags, *self.bag_.score(bags))}
            thr = self.thresholds_["entity"]
            for i in content:
                d, nb, c = scored[examples[i].bag]
                if out[i] is None or d / thr > out[i].ratio:  # type: ignore[union-attr]
                    out[i] = ChunkScore(float(d), math.nan, float(d) / thr, -1, PAD, PAD, math.nan, math.nan,
                                        self._bag_detail(examples[i], int(nb), int(c)))
        return out  # type: ignore[return-value]

    def _bag_detail(self, ex: ChunkExample, near: int, col: int) -> str:
        table, code = self.bag_.columns[col]
        observed = int(round(float(np.expm1(self.bag_.counts([ex.bag])[0, col]))))
        expected = self.bag_.raw_count(near, col)
        if table < 0:
            return f"the session has {observed} events where the nearest normal session has {expected}"
        return (f"{self.codebook_.names[table][code]} occurs {observed}x where the nearest normal session has it "
                f"{expected}x")

    def explain(self, level: str, example: ChunkExample, s: ChunkScore) -> str:
        """Why the chunk is (im)plausible, in words."""
        if s.detail:
            return s.detail
        if s.position < 0:
            return "nothing unusual in context"
        observed = self.token_name(level, s.observed)
        if s.observed in (UNSEEN_OK, UNSEEN_ERROR) and s.position < len(example.nodes):
            observed = f"{observed} ({self.codebook_.names[TABLES[level][0]][example.nodes[s.position]]})"
        return (f"step {s.position + 1}: {observed} is improbable here (p={s.p_observed:.2g}); "
                f"expected {self.token_name(level, s.expected)} (p={s.p_expected:.2f})")

    def token_name(self, level: str, token: int) -> str:
        if token < OFFSET:
            return SPECIAL_NAMES.get(token, "?")
        return self.codebook_.names[TABLES[level][0]][token - OFFSET]

    # -------------------------------------------------------------------- whole-session helpers
    def session_scores(self, X: Iterable[Sequence[str]]) -> np.ndarray:
        """(n, 3) array: per level (status, action, entity), the highest chunk ratio of the session (no
        knowledge base in front: every chunk is scored). A session with an unknown template gets ``inf``
        at the status level."""
        rows = []
        for seq in X:
            c = self.codebook_.cut(seq)
            if c is None:
                rows.append((math.inf if seq else 0.0, 0.0, 0.0))
                continue
            exs = chunk_examples(c)
            rows.append(tuple(max((s.ratio for s in self.score_examples(lvl, exs[lvl])), default=0.0)
                              for lvl in LEVELS))
        return np.asarray(rows, dtype=np.float64).reshape(-1, 3)

    def predict_levels(self, X: Iterable[Sequence[str]]) -> np.ndarray:
        return (self.session_scores(X) > 1.0).astype(np.int8)

    def predict(self, X: Iterable[Sequence[str]]) -> np.ndarray:
        return self.predict_levels(X).max(axis=1).astype(np.int8)

    def score_samples(self, X: Iterable[Sequence[str]]) -> np.ndarray:
        """Higher is more normal: minus the worst chunk ratio."""
        return -self.session_scores(X).max(axis=1)

    # ---------------------------------------------------------------------------- persistence
    def to_state(self) -> dict[str, Any]:
        """Learned state as tensors and plain lists/dicts (``torch.load(weights_only=True)`` safe)."""
        params = {k: v for k, v in self.get_params().items() if k != "hierarchy"}
        params["sequence_levels"] = list(params["sequence_levels"])
        return {
            "params": params,
            "seen": [sorted(s) for s in self.seen_],
            "lm_seen": [sorted(s) for s in self.lm_seen_],
            "thresholds": dict(self.thresholds_),
            "losses": dict(self.losses_),
            "new_node_rate": dict(self.new_node_rate_),
            "unseen_chunk_count": dict(self.unseen_chunk_count_),
            "unseen_chunk_rate": dict(self.unseen_chunk_rate_),
            "closed_parent_count": dict(self.closed_parent_count_),
            "closed_parent_rate": dict(self.closed_parent_rate_),
            "closed_levels": list(self.closed_levels_),
            "content_level_count": dict(self.content_level_count_),
            "content_level_rate": dict(self.content_level_rate_),
            "content_levels": list(self.content_levels_),
            "closed_parents": {lvl: sorted(parents) for lvl, parents in self.closed_parents_.items()},
            "known_chunks": {lvl: sorted(list(key) for key in keys) for lvl, keys in self.known_chunks_.items()},
            "bag": self.bag_.to_state(),
            "models": {lvl: m.state_dict() for lvl, m in self.models_.items()},
            "n_train_sessions": self.n_train_sessions_,
            "fold_kind": self.fold_kind_,
        }

    @classmethod
    def from_state(cls, hierarchy: Any, state: dict[str, Any]) -> NestedAwareDetector:
        params = dict(state["params"])
        params["sequence_levels"] = tuple(params.get("sequence_levels", ()))
        det = cls(hierarchy, **params)
        det.codebook_ = Codebook.from_hierarchy(hierarchy)
        det.classes_ = det._classes()
        det.seen_ = tuple(set(s) for s in state["seen"])  # type: ignore[assignment]
        det.lm_seen_ = tuple(set(s) for s in state["lm_seen"])  # type: ignore[assignment]
        det.thresholds_ = {k: float(v) for k, v in state["thresholds"].items()}
        det.losses_ = {k: float(v) for k, v in state["losses"].items()}
        det.new_node_rate_ = {k: float(v) for k, v in state["new_node_rate"].items()}
        # states saved before rule 2b lack its figures: the rule stays off for them
        det.unseen_chunk_count_ = {k: int(v) for k, v in state.get("unseen_chunk_count", {}).items()}
        det.unseen_chunk_rate_ = {k: float(v) for k, v in state.get("unseen_chunk_rate", {}).items()}
        det.closed_parent_count_ = {k: int(v) for k, v in state.get("closed_parent_count", {}).items()}
        det.closed_parent_rate_ = {k: float(v) for k, v in state.get("closed_parent_rate", {}).items()}
        det.closed_levels_ = tuple(state.get("closed_levels", ()))
        # states saved before rule 3b judge the lower levels by content as they did: all of them or none
        det.content_level_count_ = {k: int(v) for k, v in state.get("content_level_count", {}).items()}
        det.content_level_rate_ = {k: float(v) for k, v in state.get("content_level_rate", {}).items()}
        before = ("action", "status") if det.content_scope == "all" else ()
        det.content_levels_ = tuple(state.get("content_levels", before))
        det.closed_parents_ = {lvl: {int(p) for p in parents}
                               for lvl, parents in state.get("closed_parents", {}).items()}
        det.known_chunks_ = {lvl: {tuple(int(x) for x in key) for key in keys}
                             for lvl, keys in state.get("known_chunks", {}).items()}
        det.bag_ = BagModel.from_state(det.codebook_, state["bag"])
        det.models_ = {}
        for lvl, weights in state["models"].items():
            model = det._new_model(lvl)
            model.load_state_dict(weights)
            model.eval()
            det.models_[lvl] = model
        det.n_train_sessions_ = int(state["n_train_sessions"])
        det.fold_kind_ = str(state.get("fold_kind", "random"))
        det.n_skipped_sessions_ = 0
        return det


def _unseen_by_fold(cuts: Sequence[Cut], folds: Sequence[int]) -> dict[str, set[int]]:
    """Per level, the sessions (indices into ``cuts``) with a KRONE Seq that no session of another fold has:
    the Local-Context knowledge-base keys, status runs uncapped, so a held-out session is flagged exactly as
    the router would flag it."""
    out: dict[str, set[int]] = {}
    for lvl in LEVELS:
        keys = [set(c.status_keys) if lvl == "status" else set(c.action_keys) if lvl == "action" else {c.entity_key}
                for c in cuts]
        masks = _fold_masks(keys, folds)
        out[lvl] = {i for i, (per, f) in enumerate(zip(keys, folds)) if any(masks[q] == 1 << f for q in per)}
    return out


def _assign_folds(order: np.ndarray, most: int, groups: Sequence[Any] | None) -> tuple[int, list[int]]:
    """(K, the cross-fitting fold of each session). With groups (two or more labels): the groups in sorted
    order, neighbours merged into at most ``most`` blocks; otherwise fold ``f`` holds ``order[f::k]`` (a seeded
    random assignment, K = ``most`` but at least 2 and at most one session a fold)."""
    if groups is not None:
        labels = sorted(set(groups))
        k = min(len(labels), max(2, most))
        block = {g: rank * k // len(labels) for rank, g in enumerate(labels)}
        return k, [block[g] for g in groups]
    n = len(order)
    k = max(2, min(most, n))
    fold_of = np.empty(n, dtype=np.int64)
    for f in range(k):
        fold_of[order[f::k]] = f
    return k, fold_of.tolist()


def _fold_masks(keys: Sequence[set[Any]], folds: Sequence[int]) -> dict[Any, int]:
    """Per key, a bit mask of the folds whose sessions have it (``keys``: each session's key set)."""
    masks: dict[Any, int] = {}
    for per, f in zip(keys, folds):
        for key in per:
            masks[key] = masks.get(key, 0) | (1 << f)
    return masks


def _upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen ``k`` times in ``n`` trials (``3 / n`` for
    ``k = 0``: the rule of three)."""
    if k >= n:
        return 1.0
    return float(beta.ppf(confidence, k + 1, n - k))


def _seen(examples: Iterable[dict[str, list[ChunkExample]]]) -> tuple[set[int], set[int], set[int]]:
    """Codebook codes (entity, action, status tables) that occur in these sessions' chunks."""
    seen: tuple[set[int], set[int], set[int]] = (set(), set(), set())
    for exs in examples:
        for ex in exs["status"]:
            seen[2].update(ex.nodes)
            seen[1].add(ex.parent)
        for ex in exs["action"]:
            seen[0].add(ex.parent)
        for ex in exs["entity"]:
            seen[0].update(ex.nodes)
            for s, _ in ex.bag:
                seen[2].add(s)
    return seen


def _name(node_id: str) -> str:
    """The human part of a node id (``S:blob/read/failed#t4`` -> ``blob/read/failed``)."""
    return node_id.split(":", 1)[-1].split("#", 1)[0]
