"""Reasons a person can act on: the nearest normal KRONE Seq seen in training, and what differs.

A session of a million events makes KRONE Seqs of a million steps, so both the work and the text are
bounded: similarity and differences look at the first :data:`MAX_COMPARED` steps of each chunk (difflib is
quadratic in the worst case), and :func:`render_steps` writes a run once with its count and elides the
middle of a long chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from difflib import SequenceMatcher
from itertools import groupby

MAX_CANDIDATES = 5000
MAX_COMPARED = 256
"""Steps of a chunk, and of each normal chunk, that the search and the difference compare (the authors'
Thunderbird sessions stop at 256 events)."""
MAX_SHOWN = 12
"""Runs of steps a rendered chunk shows before eliding its middle."""


def render_steps(nodes: Sequence[str], sep: str = " -> ", limit: int = MAX_SHOWN) -> str:
    """``nodes`` for a reason: a run of one step once with its count (``S:x ×40``); past ``limit`` runs, the
    first and last ``limit // 2`` with how many runs are left out between."""
    runs = [f"{name} ×{n}" if n > 1 else name for name, n in ((k, sum(1 for _ in g)) for k, g in groupby(nodes))]
    if len(runs) > limit:
        half = limit // 2
        runs = [*runs[:half], f"… {len(runs) - 2 * half} more …", *runs[-half:]]
    return sep.join(runs)


def nearest(chunk: Sequence[str], normals: Iterable[Sequence[str]]) -> tuple[tuple[str, ...], float] | None:
    """The most similar normal chunk (difflib ratio of the first :data:`MAX_COMPARED` steps; of equals, the
    first) and the similarity, or ``None`` if there is none."""
    top = _most_similar(chunk, normals, 1)
    return (top[0][2], top[0][0]) if top else None


def k_nearest(chunk: Sequence[str], normals: Iterable[Sequence[str]], k: int) -> list[tuple[str, ...]]:
    """The ``k`` most similar normal chunks, most similar first (ties keep the candidates' order): the
    examples an LLM judge is shown, as in the paper."""
    return [cand for _, _, cand in _most_similar(chunk, normals, k)]


def _most_similar(chunk: Sequence[str], normals: Iterable[Sequence[str]],
                  k: int) -> list[tuple[float, int, tuple[str, ...]]]:
    """``(ratio, index, candidate)`` of the ``k`` candidates of highest difflib ratio (ties: lower index first).

    The ratio is quadratic in the chunk length; difflib's ``quick_ratio`` (a multiset overlap, linear) bounds it
    from above. So candidates are visited best bound first and the search stops once no bound can beat the
    ``k``-th ratio found: the same answer as rating every candidate, at a few full ratios per search (on the
    Thunderbird demo at 80 %, 30,549 ratios of chunks up to 256 steps took 9.6 of the cold pass's 10.8 s)."""
    matcher = SequenceMatcher(autojunk=False)
    matcher.set_seq2(list(chunk[:MAX_COMPARED]))
    bounds = []
    for i, cand in enumerate(normals):
        if i >= MAX_CANDIDATES:
            break
        matcher.set_seq1(list(cand[:MAX_COMPARED]))
        bounds.append((-matcher.quick_ratio(), i, tuple(cand)))
    bounds.sort(key=lambda b: (b[0], b[1]))
    top: list[tuple[float, int, tuple[str, ...]]] = []
    for neg_bound, i, cand in bounds:
        if len(top) == k and -neg_bound < top[-1][0]:
            break
        matcher.set_seq1(list(cand[:MAX_COMPARED]))
        top.append((matcher.ratio(), i, cand))
        top.sort(key=lambda t: (-t[0], t[1]))
        del top[k:]
    return top


def describe_difference(normal: Sequence[str], observed: Sequence[str], limit: int = 3) -> str:
    """``missing X``, ``extra Y``, ``Y instead of X`` (at most ``limit`` items) over the first
    :data:`MAX_COMPARED` steps of each."""
    a, b = list(normal[:MAX_COMPARED]), list(observed[:MAX_COMPARED])
    parts = []
    for op, i1, i2, j1, j2 in SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "delete":
            parts.append(f"missing {render_steps(a[i1:i2], ', ')}")
        elif op == "insert":
            parts.append(f"extra {render_steps(b[j1:j2], ', ')}")
        elif op == "replace":
            parts.append(f"{render_steps(b[j1:j2], ', ')} instead of {render_steps(a[i1:i2], ', ')}")
    cut = f"; first {MAX_COMPARED} steps compared" if max(len(normal), len(observed)) > MAX_COMPARED else ""
    if not parts:
        return "same steps" + cut
    more = f" (+{len(parts) - limit} more)" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more + cut
