"""The content model of the Nested-Aware detector: how far a session's bag of leaves is from the nearest
normal one (the design and its measurements: :mod:`krone_jobs.detectors.nested_aware`, point 3)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from krone_jobs.detectors.chunks import Bag
from krone_jobs.detectors.codebook import Codebook

_BATCH = 256


class BagModel:
    """Nearest-normal-bag model of whole sessions."""

    def __init__(self, codebook: Codebook, seen: tuple[set[int], set[int], set[int]], prior: float = 1.0) -> None:
        self.prior = prior
        # column 0 is the session root (every leaf counts for it); then seen entity, action, status nodes
        self.columns: list[tuple[int, int]] = [(-1, 0)] + [(t, c) for t in (0, 1, 2) for c in sorted(seen[t])]
        self._route(codebook)

    def _route(self, codebook: Codebook) -> None:
        index = {tc: j for j, tc in enumerate(self.columns)}
        route: dict[int, tuple[int, ...]] = {}
        for e, a, s in codebook.codes.values():
            path = [0]
            for table, code in ((0, e), (1, a), (2, s)):
                j = index.get((table, code))
                if j is None:
                    break  # an unseen node and everything below it count for the nearest seen ancestor
                path.append(j)
            route[s] = tuple(path)
        self.route = route

    def counts(self, bags: Sequence[Bag]) -> np.ndarray:
        """``log1p`` counts per column, one row per bag."""
        x = np.zeros((len(bags), len(self.columns)), dtype=np.float32)
        for i, bag in enumerate(bags):
            for s, n in bag:
                for j in self.route.get(s, ()):
                    x[i, j] += n
        return np.log1p(x)

    def fit(self, bags: Sequence[Bag]) -> BagModel:
        x = self.counts(bags)
        n = len(x)
        mean = x.mean(axis=0) if n else np.zeros(x.shape[1], dtype=np.float32)
        var = (((x - mean) ** 2).sum(axis=0) + self.prior) / (n + 1)
        scale = np.sqrt(var).astype(np.float32)
        normals = np.unique((x - mean) / scale, axis=0) if n else np.zeros((0, x.shape[1]))
        self._set(mean.astype(np.float32), scale, normals.astype(np.float32))
        return self

    def _set(self, mean: np.ndarray, scale: np.ndarray, normals: np.ndarray) -> None:
        self.mean = mean
        self.scale = scale
        self.normals = torch.from_numpy(np.ascontiguousarray(normals))
        self.zero = torch.from_numpy(-mean / scale)  # a zero count, standardised

    def score(self, bags: Sequence[Bag]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per bag: RMS deviation per column in play from its nearest normal bag, that bag's row, and the
        most deviating column."""
        n = len(bags)
        dist, near, col = np.full(n, np.inf), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        if n == 0 or len(self.normals) == 0:
            return dist, near, col
        z = torch.from_numpy((self.counts(bags) - self.mean) / self.scale)
        for i in range(0, n, _BATCH):
            q = z[i : i + _BATCH]
            best, idx = torch.cdist(q, self.normals).min(dim=1)
            nb = self.normals[idx]
            in_play = ((q != self.zero) | (nb != self.zero)).sum(dim=1).clamp(min=1)
            dist[i : i + _BATCH] = (best / in_play.sqrt()).numpy()
            near[i : i + _BATCH] = idx.numpy()
            col[i : i + _BATCH] = (q - nb).abs().argmax(dim=1).numpy()
        return dist, near, col

    def raw_count(self, row: int, column: int) -> int:
        """The count of ``column`` in normal bag ``row`` (undoing the scaling)."""
        z = float(self.normals[row, column])
        return int(round(math.expm1(z * float(self.scale[column]) + float(self.mean[column]))))

    def to_state(self) -> dict[str, Any]:
        return {"prior": self.prior, "columns": [list(c) for c in self.columns], "mean": torch.from_numpy(self.mean),
                "scale": torch.from_numpy(self.scale), "normals": self.normals}

    @classmethod
    def from_state(cls, codebook: Codebook, state: dict[str, Any]) -> BagModel:
        model = cls.__new__(cls)
        model.prior = float(state["prior"])
        model.columns = [(int(t), int(c)) for t, c in state["columns"]]
        model._route(codebook)
        model._set(state["mean"].numpy(), state["scale"].numpy(), state["normals"].numpy())
        return model
