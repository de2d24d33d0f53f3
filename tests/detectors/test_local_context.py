from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from krone_jobs.detectors.local_context import LocalContextDetector
from krone_jobs.hierarchy.model import Hierarchy

NORMAL = [
    ["t1", "t2", "t3", "t5", "t6", "t7"],
    ["t1", "t2", "t3", "t3", "t5", "t6", "t7"],
    ["t1", "t2", "t3", "t5", "t2", "t3", "t5", "t6", "t7"],
]


def fitted(toy: Hierarchy, **kw: object) -> LocalContextDetector:
    return LocalContextDetector(toy, **kw).fit(NORMAL)


def test_fit_returns_self_and_learned_attributes(toy: Hierarchy) -> None:
    det = LocalContextDetector(toy, automaton=False)
    assert det.fit(NORMAL) is det
    assert det.n_sessions_ == 3 and det.n_skipped_sessions_ == 0
    assert len(det.knowledge_[2]) == 1  # one entity-level KRONE Seq: job, blob, worker, job
    assert clone(det).get_params()["automaton"] is False


def test_training_sessions_are_normal(toy: Hierarchy) -> None:
    assert fitted(toy, automaton=False).predict(NORMAL).tolist() == [0, 0, 0]


def test_early_exit_names_level_chunk_and_reason(toy: Hierarchy) -> None:
    det = fitted(toy, automaton=False)
    failed_read = ["t1", "t2", "t4", "t5", "t6", "t7"]
    (v,) = det.detect([failed_read])
    assert v.anomalous and v.level == "status" and v.chunk_index == 2 and v.span == (2, 3)
    assert v.nodes == ("S:blob/read/failed#t4",)
    assert "under A:blob/read never seen in training" in v.reason
    skipped_close = ["t1", "t2", "t3", "t6", "t7"]  # statuses all known, blob chunk open->read unseen
    (v,) = det.detect([skipped_close])
    assert v.level == "action" and v.nodes == ("A:blob/open", "A:blob/read") and v.span == (1, 3)
    worker_first = ["t6", "t1", "t2", "t3", "t5", "t7"]
    (v,) = det.detect([worker_first])
    assert v.level == "entity" and v.nodes == ("E:worker", "E:job", "E:blob", "E:job")


def test_per_level_flags_without_early_exit(toy: Hierarchy) -> None:
    det = fitted(toy, automaton=False)
    levels = det.predict_levels([NORMAL[0], ["t6", "t1", "t2", "t4", "t5", "t7"]])
    assert levels.tolist() == [[0, 0, 0], [1, 0, 1]]


def test_default_automaton_generalises_loops_but_needs_an_accepting_end(toy: Hierarchy) -> None:
    det = fitted(toy, automaton=True)
    three_blobs = ["t1", "t2", "t3", "t5", "t2", "t3", "t5", "t2", "t3", "t5", "t6", "t7"]
    assert det.predict([three_blobs]).tolist() == [0]  # every transition seen, ends on close
    ends_on_read = ["t1", "t2", "t3", "t6", "t7"]
    (v,) = det.detect([ends_on_read])
    assert v.level == "action" and "A:blob/read -> end never seen" in v.reason


def test_compat_automaton_keeps_the_authors_quirks(toy: Hierarchy) -> None:
    det = fitted(toy, automaton=True, compat=True)
    # missing transitions that form a suffix pass (their path_diffs never closes the diff)
    assert det.predict([["t1", "t2", "t3", "t5", "t6", "t7", "t6"]]).tolist() == [0]
    # a missing transition followed by a seen one fails
    (v,) = det.detect([["t1", "t6", "t2", "t3", "t5", "t6", "t7"]])
    assert v.anomalous and v.level == "entity"
    with pytest.raises(ValueError, match="explicit automaton"):
        LocalContextDetector(toy, compat=True).fit(NORMAL)


def test_auto_automaton_is_decided_from_heldout_normal_data(toy: Hierarchy) -> None:
    varied = [["t1", *(["t2", "t3", "t5"] * k), "t6", "t7"] for k in range(1, 40)]
    det = LocalContextDetector(toy).fit(varied)
    assert det.automaton_ is True and det.heldout_fp_rate_ > det.fp_budget
    regular = [NORMAL[0]] * 50
    det = LocalContextDetector(toy).fit(regular)
    assert det.automaton_ is False and det.heldout_fp_rate_ == 0.0


def test_unknown_template_and_empty_session_have_defined_outcomes(toy: Hierarchy) -> None:
    det = fitted(toy)
    unknown, empty = det.detect([["t1", "t42", "t7"], []])
    assert unknown.anomalous and unknown.level == "status" and unknown.span == (1, 2)
    assert "t42 is not in the hierarchy" in unknown.reason
    assert not empty.anomalous and empty.quarantined and "empty session" in empty.reason
    fit_bad = LocalContextDetector(toy).fit([*NORMAL, [], ["t42"]])
    assert fit_bad.n_skipped_sessions_ == 2


def test_verdict_cache_hits_and_scores(toy: Hierarchy) -> None:
    det = fitted(toy, automaton=False)
    batch = [NORMAL[0], ["t1", "t4"], NORMAL[0], ["t1", "t4"]]
    assert det.predict(batch).tolist() == [0, 1, 0, 1]
    assert (det.cache_hits_, det.cache_misses_) == (2, 2)
    np.testing.assert_array_equal(det.score_samples(batch), [0.0, -1.0, 0.0, -1.0])
