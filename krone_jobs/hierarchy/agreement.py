"""How closely two hierarchies group templates: the partition each induces at the entity or action level.

Node names differ between extractors (``E:block`` vs ``block blk_6``), so hierarchies are compared by the
partition of templates they induce, not by names: the adjusted Rand index, and pairwise precision/recall/F1
over template pairs put in the same group (``ours`` is scored against ``reference``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sklearn.metrics import adjusted_rand_score

from krone_jobs.hierarchy.model import Hierarchy

LEVELS = ("entity", "action")


def _pairs_together(labels: list[str]) -> int:
    """Number of unordered item pairs that share a label."""
    return sum(n * (n - 1) // 2 for n in Counter(labels).values())


def partition_agreement(ours: Hierarchy, reference: Hierarchy, level: str) -> dict[str, Any]:
    """Compare the ``level`` ("entity" or "action") partitions on the template ids both hierarchies know.

    Returns ``templates`` (common ids), ``ari``, ``pair_precision`` (of our same-group pairs, the share the
    reference also groups), ``pair_recall``, ``pair_f1``, and ``groups_ours`` / ``groups_reference``.
    With no pairs on a side, precision or recall is 1.0 (nothing to get wrong).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    attr = f"{level}_node"
    common = sorted(set(ours) & set(reference))
    a = [getattr(ours[t], attr) for t in common]
    b = [getattr(reference[t], attr) for t in common]
    ours_pairs = _pairs_together(a)
    ref_pairs = _pairs_together(b)
    both = _pairs_together([f"{x}\x00{y}" for x, y in zip(a, b)])
    precision = both / ours_pairs if ours_pairs else 1.0
    recall = both / ref_pairs if ref_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "level": level,
        "templates": len(common),
        "ari": round(float(adjusted_rand_score(b, a)), 4) if common else 0.0,
        "pair_precision": round(precision, 4),
        "pair_recall": round(recall, 4),
        "pair_f1": round(f1, 4),
        "groups_ours": len(set(a)),
        "groups_reference": len(set(b)),
    }


def agreement_report(ours: Hierarchy, reference: Hierarchy) -> dict[str, dict[str, Any]]:
    """Both levels at once: ``{"entity": {...}, "action": {...}}``."""
    return {level: partition_agreement(ours, reference, level) for level in LEVELS}
