from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from krone_jobs.detectors.router import ChunkDecision, ChunkRequest, RoutedDetector

TINY = {"epochs": 15, "dim": 8, "hidden": 16}
NORMAL = [
    ["t1", "t2", "t3", "t5", "t6", "t7"],
    ["t1", "t2", "t3", "t3", "t5", "t6", "t7"],
    ["t1", "t2", "t3", "t5", "t2", "t3", "t5", "t6", "t7"],
] * 10
FAILED_READ = ["t1", "t2", "t4", "t5", "t6", "t7"]


@pytest.fixture(scope="module")
def routed() -> RoutedDetector:
    from tests.toy import toy_hierarchy

    return RoutedDetector(toy_hierarchy(), nested_params=TINY).fit(NORMAL)


def test_known_sessions_never_reach_the_nested_model(routed: RoutedDetector) -> None:
    routed.stats_.update(flagged_by_local=0, rescued_by_nested=0)
    verdicts = routed.detect(NORMAL[:3])
    assert [v.anomalous for v in verdicts] == [False] * 3
    assert all(v.detector == "local" for v in verdicts)
    assert routed.stats_["flagged_by_local"] == 0


def test_unseen_error_template_is_anomalous_with_a_reason(routed: RoutedDetector) -> None:
    (v,) = routed.detect([FAILED_READ])
    assert v.anomalous and v.level == "status" and v.detector == "nested" and v.span == (2, 3)
    assert v.key == "status|A:blob/read|S:blob/read/failed#t4"
    assert "never seen in training" in v.reason and "nearest normal" in v.reason
    assert "instead of" in v.reason  # what differs from the nearest normal chunk


def test_unknown_template_and_empty_session(routed: RoutedDetector) -> None:
    unknown, empty = routed.detect([["t1", "t99"], []])
    assert unknown.anomalous and "t99 is not in the hierarchy" in unknown.reason
    assert not empty.anomalous and empty.quarantined


def test_caches_make_repeats_free(routed: RoutedDetector) -> None:
    routed.detect([FAILED_READ])
    scored = routed.stats_["chunks_scored"]
    hits = routed.stats_["session_cache_hits"]
    routed.detect([FAILED_READ] * 5)
    assert routed.stats_["chunks_scored"] == scored
    assert routed.stats_["session_cache_hits"] == hits + 5


def test_per_level_flags(routed: RoutedDetector) -> None:
    levels = routed.predict_levels([NORMAL[0], FAILED_READ])
    assert levels.shape == (2, 3) and levels[0].sum() == 0 and levels[1, 0] == 1


def test_save_and_load_give_the_same_verdicts(routed: RoutedDetector, tmp_path: Path) -> None:
    routed.save(tmp_path / "model")
    again = RoutedDetector.load(tmp_path / "model")
    batch = [*NORMAL[:3], FAILED_READ, ["t6", "t1", "t2", "t3", "t5", "t7"]]
    np.testing.assert_array_equal(again.predict(batch), routed.predict(batch))
    assert again.nested_ is not None and again.nested_.thresholds_ == routed.nested_.thresholds_  # type: ignore[union-attr]


class _AlwaysNormal:
    """A judge at the LLM seam that answers every uncertain chunk (records what it was asked)."""

    def __init__(self) -> None:
        self.requests: list[ChunkRequest] = []

    def judge(self, request: ChunkRequest) -> ChunkDecision | None:
        self.requests.append(request)
        return ChunkDecision(False, "llm", request.nested_score, "judged normal")


def test_llm_seam_only_sees_uncertain_chunks(tmp_path: Path) -> None:
    from tests.toy import toy_hierarchy

    judge = _AlwaysNormal()
    det = RoutedDetector(toy_hierarchy(), nested_params=TINY, llm=judge, llm_band=1e9).fit(NORMAL)
    (v,) = det.detect([["t6", "t1", "t2", "t3", "t5", "t7"]])  # unseen order, no unseen error step
    assert judge.requests and all(r.nested_score == r.nested_score for r in judge.requests)
    assert judge.requests[0].nodes and det.stats_["llm_requests"] == len(judge.requests)
    (e,) = det.detect([FAILED_READ])  # an unseen error step scores inf: never sent to the LLM
    assert e.anomalous and e.detector == "nested"
    assert not v.anomalous and v.detector == "llm"


def test_templates_placed_after_training_are_judged_in_context(tmp_path: Path) -> None:
    """A template the model lacks but the pipeline's hierarchy placed is judged by the Nested-Aware rules
    (an error step is anomalous, for that reason) instead of being flagged only for being new; known
    templates keep the model's placement, and the extension is not saved with the model."""
    from krone_jobs.hierarchy.model import make_node
    from tests.toy import toy_hierarchy

    det = RoutedDetector(toy_hierarchy(), nested_params=TINY).fit(NORMAL)
    timed_out = ["t1", "t2", "t0", "t5", "t6", "t7"]
    (before,) = det.detect([timed_out])
    assert before.anomalous and "t0 is not in the hierarchy" in before.reason
    placed = toy_hierarchy().extend([make_node("t0", "read blob <*> timed out", "blob", "read", "timeout", "offline")])
    placed = placed.with_overrides([make_node("t6", "worker <*> running task", "job", "run", "none", "override")])
    assert det.extend_hierarchy(placed) == 1 and det.extend_hierarchy(placed) == 0
    assert det.hierarchy_["t6"] == toy_hierarchy()["t6"] and "t0" not in det.hierarchy
    (after,) = det.detect([timed_out])
    assert after.anomalous and after.detector == "nested" and after.level == "status"
    assert "S:blob/read/timeout#t0 was never seen in training and names an error" in after.reason
    assert not any(det.predict(NORMAL[:3]))
    det.save(tmp_path / "model")
    assert "t0" not in RoutedDetector.load(tmp_path / "model").hierarchy_
