"""Classical session-level baselines on event-count vectors, scikit-learn style (1 = anomalous, 0 = normal).

Same input as our detector: ``X`` is an iterable of template-id sequences; ``fit`` sees normal sessions only
and never a label; every threshold comes from the training sessions. They exist so that the KRONE figures
are always set against the standard reference points, measured by the same harness on the same split:

* :class:`NewEventDetector`: a session with a template never seen in training (the cheapest possible rule);
* :class:`NewCountVectorDetector`: a session whose exact event-count vector never occurred in training;
* :class:`PCADetector`: PCA residual-subspace detection (Xu et al., SOSP'09) as in logpai/loglizer;
* :class:`InvariantsMiningDetector`: sparse integer linear invariants (Lou et al., ATC'10) as in loglizer.

Unseen templates (PCA, Invariants Mining): loglizer's ``FeatureExtractor(oov=True)``: the count matrix
gets one extra last column, the number of distinct templates of the session that training never saw. It
is 0 on every training session, so PCA sees it only in the residual subspace and Invariants Mining mines
the one-column invariant ``oov = 0`` for it (loglizer's rule for an all-zero column): a new template is
an anomaly for both, as it is for the two simple rules. loglizer's default (``oov=False``) drops unseen
templates instead, which would let a session made only of new templates pass as normal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import combinations
from typing import Protocol

import numpy as np
from sklearn.base import BaseEstimator

Sessions = Iterable[Sequence[str]]


class SessionDetector(Protocol):
    """What the harness needs from a baseline."""

    def fit(self, X: Sessions, y: object = None) -> SessionDetector: ...

    def predict(self, X: Sessions) -> np.ndarray: ...

    def score_samples(self, X: Sessions) -> np.ndarray: ...


class EventCounter:
    """Session -> event-count row over the training vocabulary plus loglizer's OOV column (last).

    Columns follow the order in which templates first occur in training, as loglizer's pandas
    ``DataFrame(list_of_Counters)`` does: Invariants Mining visits candidates in column order and stops
    after a budget of invariants, so the order is part of the method.
    """

    def __init__(self, X: Sessions) -> None:
        vocab: dict[str, int] = {}
        for seq in X:
            for t in seq:
                vocab.setdefault(t, len(vocab))
        self.vocabulary = vocab

    @property
    def n_columns(self) -> int:
        return len(self.vocabulary) + 1

    def transform(self, X: Sessions) -> np.ndarray:
        vocab = self.vocabulary
        rows: list[np.ndarray] = []
        for seq in X:
            row = np.zeros(self.n_columns)
            for t, n in Counter(seq).items():
                j = vocab.get(t)
                if j is None:
                    row[-1] += 1  # distinct unseen templates, as loglizer's oov column counts them
                else:
                    row[j] = n
            rows.append(row)
        return np.vstack(rows) if rows else np.zeros((0, self.n_columns))


class NewEventDetector(BaseEstimator):
    """Flags a session containing any template unseen in training: the floor every detector must beat,
    since most labelled anomalies in public log sets carry an error template of their own."""

    def fit(self, X: Sessions, y: object = None) -> NewEventDetector:
        self.known_events_: frozenset[str] = frozenset(t for seq in X for t in seq)
        return self

    def score_samples(self, X: Sessions) -> np.ndarray:
        """Minus the number of distinct unseen templates (higher is more normal)."""
        known = self.known_events_
        return -np.fromiter((len(set(seq) - known) for seq in X), dtype=np.float64)

    def predict(self, X: Sessions) -> np.ndarray:
        """1 for a session with an unseen template, 0 otherwise."""
        return (self.score_samples(X) < 0).astype(np.int8)


def _count_key(seq: Sequence[str]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(Counter(seq).items()))


class NewCountVectorDetector(BaseEstimator):
    """Flags a session whose exact event-count vector never occurred in training: a knowledge base of
    whole sessions up to order, i.e. what count-based models can at best memorise. A template unseen in
    training makes the vector unseen."""

    def fit(self, X: Sessions, y: object = None) -> NewCountVectorDetector:
        self.known_vectors_: frozenset[tuple[tuple[str, int], ...]] = frozenset(map(_count_key, X))
        return self

    def score_samples(self, X: Sessions) -> np.ndarray:
        """0 for a known count vector, -1 for an unseen one."""
        known = self.known_vectors_
        return -np.fromiter((_count_key(seq) not in known for seq in X), dtype=np.float64)

    def predict(self, X: Sessions) -> np.ndarray:
        """1 for an unseen count vector, 0 for a known one."""
        return (self.score_samples(X) < 0).astype(np.int8)


class PCADetector(BaseEstimator):
    """loglizer's PCA: tf-idf weighted, zero-mean count vectors; the squared prediction error (SPE) is the
    squared norm of the projection onto the residual subspace (the components beyond ``n_components`` of
    the variance). A normal session's counts are explained by a few correlated event groups; an anomaly
    breaks a correlation and shows in the residual.

    Weighting as loglizer's ``FeatureExtractor``: ``idf = log(n / (df + 1e-8))`` over training sessions
    (so a template in every training session weighs 0 and the all-zero OOV column weighs ``log(n * 1e8)``),
    then the training column mean is subtracted. The threshold is the ``threshold_percentile`` of the
    training SPE values (loglizer's default is the Q-statistic of Jackson & Mudholkar; the percentile is
    this project's choice, calibrated on normal training data only).
    """

    def __init__(
        self, n_components: float = 0.95, term_weighting: str | None = "tf-idf", threshold_percentile: float = 99.5
    ) -> None:
        self.n_components = n_components
        self.term_weighting = term_weighting
        self.threshold_percentile = threshold_percentile

    def fit(self, X: Sessions, y: object = None) -> PCADetector:
        sessions = list(X)
        self.counter_ = EventCounter(sessions)
        counts = self.counter_.transform(sessions)
        n, m = counts.shape
        if self.term_weighting == "tf-idf":
            self.idf_ = np.log(n / (np.count_nonzero(counts, axis=0) + 1e-8))
        elif self.term_weighting is None:
            self.idf_ = np.ones(m)
        else:
            raise ValueError(f"unknown term_weighting {self.term_weighting!r} (tf-idf or None)")
        weighted = counts * self.idf_
        self.mean_ = weighted.mean(axis=0)
        centred = weighted - self.mean_
        u, sigma, _ = np.linalg.svd(centred.T @ centred / n)
        if sigma.sum() == 0:
            k = 0  # identical training sessions: every deviation is residual
        elif self.n_components < 1:
            share = np.cumsum(sigma) / sigma.sum()
            k = int(np.searchsorted(share, self.n_components)) + 1  # first k reaching the share
        else:
            k = int(self.n_components)
        self.n_components_ = k
        self.components_ = u[:, :k]
        self.threshold_ = float(np.percentile(self._spe(centred), self.threshold_percentile))
        return self

    def _spe(self, centred: np.ndarray) -> np.ndarray:
        residual = centred - (centred @ self.components_) @ self.components_.T
        return np.einsum("ij,ij->i", residual, residual)

    def score_samples(self, X: Sessions) -> np.ndarray:
        """Minus the SPE (higher is more normal)."""
        return -self._spe(self.counter_.transform(X) * self.idf_ - self.mean_)

    def predict(self, X: Sessions) -> np.ndarray:
        """1 when the SPE exceeds the threshold (loglizer: ``SPE > threshold``), else 0."""
        return (-self.score_samples(X) > self.threshold_).astype(np.int8)


Invariant = tuple[tuple[int, ...], tuple[int, ...]]  # (columns, integer coefficients)


class InvariantsMiningDetector(BaseEstimator):
    """loglizer's Invariants Mining: sparse integer relations ``theta . counts = 0`` among up to
    ``max_length`` events (e.g. ``#open - #close = 0``) that hold on at least ``percentage`` of training
    sessions; a session breaking any of them is anomalous. Raw counts (no weighting), as loglizer's demo.

    The search is loglizer's, result for result (same candidates in the same order, same pruning, same
    stop after ``r`` invariants, ``r`` being the invariant-space dimension estimated by SVD with
    ``epsilon``), made fast by exact shortcuts that never change an outcome: identical training rows
    are merged with weights, a candidate is rejected without its eigenvector when the rows where
    exactly one of its events occurs already exceed the ``1 - percentage`` allowance (no relation with
    all-non-zero coefficients can hold there), and only the rows where a candidate's events occur are
    evaluated.
    """

    def __init__(
        self, percentage: float = 0.98, epsilon: float = 0.5, max_length: int = 3, scale_list: Sequence[int] = (1, 2, 3)
    ) -> None:
        self.percentage = percentage
        self.epsilon = epsilon
        self.max_length = max_length
        self.scale_list = scale_list

    def fit(self, X: Sessions, y: object = None) -> InvariantsMiningDetector:
        if self.max_length not in (2, 3):
            raise ValueError("max_length must be 2 or 3 (loglizer's search beyond 3 is combinatorial)")
        sessions = list(X)
        self.counter_ = EventCounter(sessions)
        rows, weights = np.unique(self.counter_.transform(sessions), axis=0, return_counts=True)
        search = _InvariantSearch(rows, weights.astype(np.float64), self.percentage, tuple(self.scale_list))
        self.invariant_space_dim_ = search.invariant_space_dim(self.epsilon)
        self.invariants_: list[Invariant] = search.run(self.invariant_space_dim_, self.max_length)
        return self

    def score_samples(self, X: Sessions) -> np.ndarray:
        """Minus the summed absolute violation over all invariants (higher is more normal)."""
        counts = self.counter_.transform(X)
        total = np.zeros(len(counts))
        for cols, theta in self.invariants_:
            total += np.abs(counts[:, cols] @ np.asarray(theta, dtype=np.float64))
        return -total

    def predict(self, X: Sessions) -> np.ndarray:
        """1 when any invariant is broken (loglizer: summed violation > 1e-6), else 0."""
        return (-self.score_samples(X) > 1e-6).astype(np.int8)


class _InvariantSearch:
    """loglizer's ``InvariantsMiner`` search (``_estimate_invarant_space``, ``_invariants_search``) on
    weighted unique rows; see :class:`InvariantsMiningDetector`."""

    def __init__(self, rows: np.ndarray, weights: np.ndarray, percentage: float, scale_list: tuple[int, ...]) -> None:
        self.rows = rows
        self.weights = weights
        self.n = float(weights.sum())
        self.needed = percentage * self.n  # loglizer: count_zero >= percentage * inst_num
        self.percentage = percentage
        self.scale_list = scale_list
        self.gram = rows.T @ (rows * weights[:, None])  # X^T X, exact: integer counts
        self.present = rows != 0
        w_present = self.present * weights[:, None]
        self.support = w_present.sum(axis=0)  # training sessions where each event occurs
        self.cooccur = self.present.T.astype(np.float64) @ w_present  # sessions where both occur

    def invariant_space_dim(self, epsilon: float) -> int:
        """Trailing singular vectors of X^T X along which ``percentage`` of sessions are ~0."""
        u = np.linalg.svd(self.gram)[0]
        near_zero = (np.abs(self.rows @ u) < epsilon) * self.weights[:, None]
        r = 0
        for i in range(u.shape[1] - 1, -1, -1):
            if near_zero[:, i].sum() / self.n < self.percentage:
                break
            r += 1
        return r

    def run(self, r: int, max_length: int) -> list[Invariant]:
        """Pairs, then triples, in loglizer's order; stop once ``r`` invariants are mined. loglizer's
        search space is kept as its complement: the candidates ``dropped`` (mined or pruned)."""
        invariants: dict[tuple[int, ...], tuple[int, ...]] = {}
        by_column: dict[int, list[tuple[int, ...]]] = {}
        dropped: set[tuple[int, ...]] = set()
        nonzero = [j for j in range(self.rows.shape[1]) if self.support[j] > 0]
        for j in range(self.rows.shape[1]):
            if self.support[j] == 0:
                invariants[(j,)] = (1,)
                by_column[j] = [(j,)]

        def visit(candidates: Iterable[tuple[int, ...]]) -> bool:
            """loglizer's inner loop over one length; True once ``r`` invariants are mined."""
            for item in candidates:
                if item in dropped:
                    continue  # pruned by an earlier invariant
                theta = self._invariant(item)
                if theta is not None:
                    self._prune(item, by_column, dropped)
                    invariants[item] = theta
                    for j in item:
                        by_column.setdefault(j, []).append(item)
                    dropped.add(item)
                if len(invariants) >= r:
                    return True
            return False

        if not visit(combinations(nonzero, 2)) and max_length == 3:
            visit(self._triangles(nonzero, dropped))
        return [(cols, invariants[cols]) for cols in sorted(invariants)]

    @staticmethod
    def _triangles(columns: list[int], dropped: set[tuple[int, ...]]) -> Iterator[tuple[int, int, int]]:
        """loglizer's joined triples that pass its ``_check_candi_valid``: (a, b, c), a < b < c, whose
        three sub-pairs are all still in the search space (checked, invalid, not pruned), in
        lexicographic order. Pruning while triples are visited drops only triples, so the sub-pair
        test made once here is the one loglizer repeats per triple."""
        later: dict[int, list[int]] = {a: [] for a in columns}
        for a, b in combinations(columns, 2):
            if (a, b) not in dropped:
                later[a].append(b)
        later_sets = {a: set(bs) for a, bs in later.items()}
        for a in columns:
            for b in later[a]:
                for c in later[b]:
                    if c in later_sets[a]:
                        yield (a, b, c)

    def _prune(
        self, item: tuple[int, ...], by_column: dict[int, list[tuple[int, ...]]], dropped: set[tuple[int, ...]]
    ) -> None:
        """loglizer's ``_prune``: a candidate implied by two invariants sharing an event is dropped."""
        new = set(item)
        seen: set[tuple[int, ...]] = set()
        for j in item:
            for known in by_column.get(j, ()):
                if known in seen:
                    continue
                seen.add(known)
                union = new | set(known)
                for shared in new & set(known):
                    dropped.add(tuple(sorted(union - {shared})))

    def _invariant(self, cols: tuple[int, ...]) -> tuple[int, ...] | None:
        """loglizer's ``_check_invar_validity``: the eigenvector of the smallest eigenvalue of the
        sub-Gram matrix, scaled so its smallest entry is 1, 2 or 3 and rounded, must hold exactly on
        ``percentage`` of sessions."""
        if self.n - self._exactly_one(cols) < self.needed:
            return None
        idx = list(cols)
        theta = np.linalg.svd(self.gram[np.ix_(idx, idx)])[0][:, -1]
        if np.any(theta == 0):
            return None
        where = np.flatnonzero(self.present[:, idx].any(axis=1))
        sub = self.rows[np.ix_(where, idx)]
        smallest = int(np.argmin(np.abs(theta)))
        for i in self.scale_list:
            scaled = np.round(theta * (i / theta[smallest]))
            scaled[smallest] = i
            broken = self.weights[where][np.abs(sub @ scaled) >= 1e-8].sum()
            if self.n - broken >= self.needed:
                return tuple(int(v) for v in scaled)
        return None

    def _exactly_one(self, cols: tuple[int, ...]) -> float:
        """Training sessions in which exactly one of ``cols`` occurs (inclusion-exclusion)."""
        s = sum(self.support[j] for j in cols)
        pairs = sum(self.cooccur[a, b] for a, b in combinations(cols, 2))
        if len(cols) == 2:
            return float(s - 2 * pairs)
        a, b, c = cols
        triple = self.weights[self.present[:, a] & self.present[:, b] & self.present[:, c]].sum()
        return float(s - 2 * pairs + 3 * triple)


BASELINES: dict[str, Callable[[], SessionDetector]] = {
    "new-event": NewEventDetector,
    "new-countvec": NewCountVectorDetector,
    "pca": PCADetector,
    "invariants": InvariantsMiningDetector,
}
