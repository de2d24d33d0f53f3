"""Reasons a person can act on: the nearest normal KRONE Seq seen in training, and what differs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from difflib import SequenceMatcher

MAX_CANDIDATES = 5000


def nearest(chunk: Sequence[str], normals: Iterable[Sequence[str]]) -> tuple[tuple[str, ...], float] | None:
    """The most similar normal chunk (difflib ratio) and the similarity, or ``None`` if there is none."""
    best: tuple[tuple[str, ...], float] | None = None
    matcher = SequenceMatcher(autojunk=False)
    matcher.set_seq2(list(chunk))
    for i, cand in enumerate(normals):
        if i >= MAX_CANDIDATES:
            break
        matcher.set_seq1(list(cand))
        if best is not None and matcher.real_quick_ratio() <= best[1]:
            continue
        ratio = matcher.ratio()
        if best is None or ratio > best[1]:
            best = (tuple(cand), ratio)
    return best


def k_nearest(chunk: Sequence[str], normals: Iterable[Sequence[str]], k: int) -> list[tuple[str, ...]]:
    """The ``k`` most similar normal chunks, most similar first (ties keep the candidates' order): the
    examples an LLM judge is shown, as in the paper."""
    matcher = SequenceMatcher(autojunk=False)
    matcher.set_seq2(list(chunk))
    scored = []
    for i, cand in enumerate(normals):
        if i >= MAX_CANDIDATES:
            break
        matcher.set_seq1(list(cand))
        scored.append((-matcher.ratio(), i, tuple(cand)))
    return [c for _, _, c in sorted(scored)[:k]]


def describe_difference(normal: Sequence[str], observed: Sequence[str], limit: int = 3) -> str:
    """``missing X``, ``extra Y``, ``Y instead of X`` (at most ``limit`` items)."""
    parts = []
    for op, i1, i2, j1, j2 in SequenceMatcher(a=list(normal), b=list(observed), autojunk=False).get_opcodes():
        if op == "delete":
            parts.append(f"missing {', '.join(normal[i1:i2])}")
        elif op == "insert":
            parts.append(f"extra {', '.join(observed[j1:j2])}")
        elif op == "replace":
            parts.append(f"{', '.join(observed[j1:j2])} instead of {', '.join(normal[i1:i2])}")
    if not parts:
        return "same steps"
    more = f" (+{len(parts) - limit} more)" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more
