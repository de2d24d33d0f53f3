"""Verdict records shared by every detector: what was decided, where in the hierarchy, by whom and why."""

from __future__ import annotations

from dataclasses import dataclass

from krone_jobs.hierarchy.kseqs import LEVELS


@dataclass(frozen=True, slots=True)
class SessionVerdict:
    """One session's outcome. For an anomaly: the first anomalous level (status, action, entity), the
    chunk's index at that level, its event span ``[start, end)`` in the session, its own-level nodes and
    KRONE Seq key, the detector that decided and a reason a person can act on."""

    anomalous: bool
    level: str | None = None
    chunk_index: int | None = None
    span: tuple[int, int] | None = None
    nodes: tuple[str, ...] = ()
    key: str = ""
    detector: str = "local"
    score: float = 0.0
    reason: str = ""
    quarantined: bool = False

    @property
    def level_rank(self) -> int:
        """0 status, 1 action, 2 entity, -1 normal (handy for per-level counts)."""
        return LEVELS.index(self.level) if self.level in LEVELS else -1


NORMAL = SessionVerdict(anomalous=False, reason="every KRONE Seq seen in training")
EMPTY = SessionVerdict(anomalous=False, reason="empty session: nothing to judge", quarantined=True)


def unknown_template_verdict(seq: tuple[str, ...], index: int) -> SessionVerdict:
    """A template the hierarchy does not know: anomalous at the status level, pointing at the line."""
    return SessionVerdict(
        anomalous=True,
        level="status",
        span=(index, index + 1),
        nodes=(seq[index],),
        key=f"status|?|{seq[index]}",
        score=1.0,
        reason=f"template {seq[index]} is not in the hierarchy (a new template)",
    )
