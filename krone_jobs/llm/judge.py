"""The LLM as detector and explainer for the few KRONE Seqs the learned detectors are unsure about.

It plugs into the router's :class:`~krone_jobs.detectors.router.ChunkJudge` seam. Safety rule: only a
complete, schema-valid answer becomes a decision. Anything else (no endpoint, budget spent, breaker open,
garbage twice) returns ``None`` and the learned verdict stands, so a broken or manipulated model can never
turn a chunk normal by answering badly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from krone_jobs.detectors.router import ChunkDecision, ChunkRequest
from krone_jobs.llm.client import LLMClient
from krone_jobs.llm.prompts import DETECTION_REMINDER, detection_messages
from krone_jobs.llm.redact import Redactor

MAX_REASON = 500  # a longer reason is not what we asked for (300): the answer is invalid
PREDICTIONS = {"Normal": False, "Abnormal": True}


def validate_detection(answer: Any) -> tuple[bool, str] | None:
    """``(anomalous, reason)`` from ``{"prediction": "Normal"|"Abnormal", "reason": str}`` exactly, else None."""
    if not isinstance(answer, dict) or set(answer) != {"prediction", "reason"}:
        return None
    prediction, reason = answer["prediction"], answer["reason"]
    if not isinstance(prediction, str) or prediction not in PREDICTIONS:
        return None
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        return None
    return PREDICTIONS[prediction], " ".join(reason.split())  # one line: it ends up in reports


class LLMJudge:
    """:class:`ChunkJudge` backed by an :class:`LLMClient`.

    ``templates`` maps node ids or template ids to template text, so the prompt can show what each step
    logged (status nodes find their template by the id after ``#``); ``k`` normal examples of the same
    parent are shown. Decisions are cached per (level, parent, nodes) for the run: a chunk costs one call."""

    detector = "llm"

    def __init__(self, client: LLMClient, templates: Mapping[str, str] | None = None, k: int = 3,
                 redactor: Redactor | None = None) -> None:
        self.client = client
        self.templates: Mapping[str, str] = templates or {}
        self.k = k
        self.redactor = redactor or Redactor()
        self._cache: dict[tuple[str, str, tuple[str, ...]], tuple[bool, str] | None] = {}
        self.stats = {"requests": 0, "cache_hits": 0, "decided": 0, "anomalous": 0, "kept": 0}

    def judge(self, request: ChunkRequest) -> ChunkDecision | None:
        self.stats["requests"] += 1
        key = (request.level, request.parent, tuple(request.nodes))
        if key in self._cache:
            self.stats["cache_hits"] += 1
            verdict = self._cache[key]
        else:
            verdict = self._ask(request)
        if verdict is None:
            self.stats["kept"] += 1
            return None
        anomalous, reason = verdict
        self.stats["decided"] += 1
        self.stats["anomalous"] += int(anomalous)
        return ChunkDecision(anomalous, self.detector, request.nested_score, f"LLM: {reason}" if reason else "")

    def _ask(self, request: ChunkRequest) -> tuple[bool, str] | None:
        messages = detection_messages(
            level=request.level, parent=request.parent, nodes=request.nodes, children=request.children,
            examples=_examples(request.nearest_normal)[: self.k], templates=self.templates, redact=self.redactor)
        unanswered = _unanswered(self.client)
        verdict = self.client.ask(messages, validate_detection, reminder=DETECTION_REMINDER)
        if verdict is not None or _unanswered(self.client) == unanswered:
            # answered, validly or not: asking again this run would spend budget on the same answer
            self._cache[(request.level, request.parent, tuple(request.nodes))] = verdict
        return verdict


def _unanswered(client: LLMClient) -> int:
    c = client.counters
    return c.failures + c.budget_refusals + c.breaker_refusals


def _examples(nearest: Sequence[str] | Sequence[Sequence[str]]) -> list[Sequence[str]]:
    """The router passes the k nearest normal chunks (tuples of node ids); one bare chunk is accepted too."""
    if not nearest:
        return []
    if all(isinstance(n, str) for n in nearest):
        return [nearest]  # type: ignore[list-item]
    return list(nearest)  # type: ignore[arg-type]
