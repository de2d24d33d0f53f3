"""Nested-Aware detector on the toy job/blob/worker hierarchy: fast, no shared data needed."""

from __future__ import annotations

import io
import math
from itertools import product

import numpy as np
import pytest
import torch
from sklearn.base import clone

from krone_jobs.detectors.chunks import ChunkExample, chunk_examples
from krone_jobs.detectors.nested_aware import ChunkScore, NestedAwareDetector, budget_threshold
from krone_jobs.detectors.router import RoutedDetector
from krone_jobs.hierarchy.model import Hierarchy, make_node


def session(reads: int, worker_at: int) -> list[str]:
    """job submitted, blob opened / read ``reads`` times / closed, job completed; the worker's run is
    inserted at position ``worker_at`` (it runs concurrently, so any position after submit is normal)."""
    body = ["t2", *["t3"] * reads, "t5"]
    body.insert(worker_at, "t6")
    return ["t1", *body, "t7"]


# Reads once or twice; the worker runs anywhere after the job was submitted.
TRAIN = [session(r, w) for r, w in product((1, 2), range(5)) if w <= r + 2] * 20
NEW_ORDER = ["t6", "t1", "t2", "t3", "t5", "t7"]  # the worker starts first: never seen, counts normal
FAILED_READ = ["t1", "t2", "t4", "t5", "t6", "t7"]  # a never-seen error template
TRUNCATED = ["t1", "t2", "t3"]  # stops after the first read
TOO_MANY_READS = session(6, 0)  # all nodes known, counts never seen


@pytest.fixture(scope="module")
def fitted() -> NestedAwareDetector:
    from tests.toy import toy_hierarchy

    return NestedAwareDetector(toy_hierarchy()).fit(TRAIN)


def ratios(det: NestedAwareDetector, seq: list[str]) -> dict[str, float]:
    cut = det.codebook_.cut(seq)
    assert cut is not None
    exs = chunk_examples(cut)
    return {lvl: max((s.ratio for s in det.score_examples(lvl, exs[lvl])), default=0.0) for lvl in exs}


def test_fit_returns_self_with_learned_attributes(toy: Hierarchy) -> None:
    det = NestedAwareDetector(toy, folds=3)
    assert det.fit(TRAIN) is det
    for attr in ("codebook_", "seen_", "thresholds_", "losses_", "bag_", "new_node_rate_", "models_",
                 "n_train_sessions_", "n_skipped_sessions_", "unseen_chunk_count_", "unseen_chunk_rate_",
                 "closed_levels_", "known_chunks_"):
        assert hasattr(det, attr), attr
    assert det.n_train_sessions_ == len(TRAIN) and det.n_skipped_sessions_ == 0
    assert set(det.thresholds_) >= {"status", "action", "entity"} and det.models_ == {}
    assert clone(det).get_params()["folds"] == 3


def test_unusable_training_data_is_refused(toy: Hierarchy) -> None:
    with pytest.raises(ValueError, match="no usable training session"):
        NestedAwareDetector(toy).fit([[], ["t99"]])
    with pytest.raises(ValueError, match="unknown sequence level"):
        NestedAwareDetector(toy, sequence_levels=("session",)).fit(TRAIN)


def test_training_sessions_are_normal(fitted: NestedAwareDetector) -> None:
    assert fitted.predict(TRAIN[:8]).tolist() == [0] * 8


def test_unseen_error_template_is_anomalous_and_explained(fitted: NestedAwareDetector) -> None:
    cut = fitted.codebook_.cut(FAILED_READ)
    assert cut is not None
    ex = chunk_examples(cut)["status"][2]
    (s,) = fitted.score_examples("status", [ex])
    assert s.ratio == math.inf and s.position == 0
    assert "S:blob/read/failed#t4" in fitted.explain("status", ex, s) and "error" in fitted.explain("status", ex, s)
    assert fitted.predict([FAILED_READ]).tolist() == [1]


def test_new_interleaving_with_normal_counts_is_rescued(fitted: NestedAwareDetector) -> None:
    cut = fitted.codebook_.cut(NEW_ORDER)
    known = {fitted.codebook_.cut(s).entity_key for s in TRAIN}  # type: ignore[union-attr]
    assert cut is not None and cut.entity_key not in known  # the knowledge base would flag it
    assert ratios(fitted, NEW_ORDER)["entity"] <= 1.0  # ... its children are those of a normal session


def test_truncation_and_unseen_counts_are_anomalous_at_entity_level(fitted: NestedAwareDetector) -> None:
    for seq in (TRUNCATED, TOO_MANY_READS):
        r = ratios(fitted, seq)
        assert r["entity"] > 1.0, seq
    cut = fitted.codebook_.cut(TOO_MANY_READS)
    assert cut is not None
    ex = chunk_examples(cut)["entity"][0]
    (s,) = fitted.score_examples("entity", [ex])
    assert "nearest normal session" in fitted.explain("entity", ex, s)


def test_same_seed_same_model(toy: Hierarchy) -> None:
    a = NestedAwareDetector(toy, seed=3).fit(TRAIN)
    b = NestedAwareDetector(toy, seed=3).fit(TRAIN)
    assert a.thresholds_ == b.thresholds_ and a.new_node_rate_ == b.new_node_rate_
    batch = [NEW_ORDER, FAILED_READ, TRUNCATED, TOO_MANY_READS, *TRAIN[:3]]
    np.testing.assert_array_equal(a.session_scores(batch), b.session_scores(batch))


def test_state_round_trip_gives_identical_scores(fitted: NestedAwareDetector) -> None:
    buf = io.BytesIO()
    torch.save(fitted.to_state(), buf)
    buf.seek(0)
    again = NestedAwareDetector.from_state(fitted.hierarchy, torch.load(buf, weights_only=True))
    batch = [NEW_ORDER, FAILED_READ, TRUNCATED, TOO_MANY_READS, *TRAIN[:3]]
    np.testing.assert_array_equal(again.session_scores(batch), fitted.session_scores(batch))
    assert again.thresholds_ == fitted.thresholds_ and again.get_params() == fitted.get_params()


def test_optional_order_model_trains_and_round_trips(toy: Hierarchy) -> None:
    det = NestedAwareDetector(toy, sequence_levels=("status", "action", "entity"), epochs=2, dim=4, hidden=8)
    det.fit(TRAIN)
    assert set(det.models_) == {"status", "action", "entity"} and math.isfinite(det.losses_["status"])
    assert {"status_order", "action_order", "entity_order", "entity"} <= set(det.thresholds_)
    again = NestedAwareDetector.from_state(toy, det.to_state())
    batch = [NEW_ORDER, FAILED_READ, TOO_MANY_READS]
    np.testing.assert_array_equal(again.session_scores(batch), det.session_scores(batch))
    assert det.predict([FAILED_READ]).tolist() == [1]


def _wide_hierarchy(n_info: int) -> Hierarchy:
    """The toy plus ``n_info`` harmless ``note`` templates (a long tail) and one ``fatal`` one."""
    from tests.toy import toy_hierarchy

    rows = [make_node(f"n{i}", f"note {i} <*>", "note", f"tell{i}", "none", "offline") for i in range(n_info)]
    rows.append(make_node("f1", "disk <*> fatal", "disk", "check", "fatal", "offline"))
    return Hierarchy([*toy_hierarchy().nodes(), *rows])


def test_new_ordinary_node_depends_on_how_often_normal_sessions_bring_one() -> None:
    # Closed vocabulary: no held-out session ever brings a new node, so a new one is anomalous ...
    closed = NestedAwareDetector(_wide_hierarchy(1), fp_budget=0.05).fit(TRAIN)
    assert closed.new_nodes_anomalous("status")
    s = _status_score(closed, TRAIN[0][:-1] + ["n0", "t7"], "n0")
    assert s.ratio > 1.0 and "never seen in training" in s.detail
    # ... a long tail of rare notes: new ones are routine, so the session's content decides instead.
    tail = [s[:-1] + [f"n{i % 100}", "t7"] for i, s in enumerate(TRAIN)]
    wide = NestedAwareDetector(_wide_hierarchy(120), fp_budget=0.05).fit(tail)
    assert not wide.new_nodes_anomalous("status")
    s = _status_score(wide, TRAIN[0][:-1] + ["n110", "t7"], "n110")
    assert math.isfinite(s.ratio) and "nearest normal session" in s.detail
    assert _status_score(wide, TRAIN[0][:-1] + ["f1", "t7"], "f1").ratio == math.inf  # a fatal one is not


def test_with_days_the_cross_fitting_holds_out_days_and_sees_a_new_day_s_novelty() -> None:
    """Each of three days brings a note of its own (10 of its 180 sessions). Random folds spread a day's note
    over every fold, so held-out sessions practically never bring a new node and a new one is judged
    anomalous; held out by day, a tenth of the sessions of every day bring one, as a new night would."""
    days = [(f"2026-11-0{d}", [s[:-1] + [f"n{d}", "t7"] if i < 10 else s for i, s in enumerate(TRAIN)]) for d in (1, 2, 3)]
    sessions = [s for _, day in days for s in day]
    groups = [dt for dt, day in days for _ in day]
    mixed = NestedAwareDetector(_wide_hierarchy(4), fp_budget=0.05).fit(sessions)
    by_day = NestedAwareDetector(_wide_hierarchy(4), fp_budget=0.05).fit(sessions, groups=groups)
    assert (mixed.fold_kind_, by_day.fold_kind_) == ("random", "groups")
    assert mixed.new_nodes_anomalous("status") and not by_day.new_nodes_anomalous("status")
    assert by_day.new_node_rate_["status"] > 0.05 > mixed.new_node_rate_["status"]
    assert NestedAwareDetector.from_state(_wide_hierarchy(4), by_day.to_state()).fold_kind_ == "groups"
    one_day = NestedAwareDetector(_wide_hierarchy(4), fp_budget=0.05).fit(sessions, groups=["d"] * len(sessions))
    assert one_day.fold_kind_ == "random" and one_day.new_node_rate_ == mixed.new_node_rate_
    with pytest.raises(ValueError, match="labels for"):
        NestedAwareDetector(_wide_hierarchy(4)).fit(sessions, groups=groups[:-1])


def _status_score(det: NestedAwareDetector, seq: list[str], template: str) -> ChunkScore:
    cut = det.codebook_.cut(seq)
    assert cut is not None
    i = seq.index(template)
    (span,) = [k for k, (a, b) in enumerate(cut.status_spans) if a <= i < b]
    (s,) = det.score_examples("status", [chunk_examples(cut)["status"][span]])
    return s


def test_budget_threshold() -> None:
    scores = [0.0] * 90 + [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert budget_threshold(scores, 100, 0.03) == 7.0  # 8, 9, 10 may exceed it: 3 of 100
    assert budget_threshold(scores, 100, 0.0) == 10.0
    assert budget_threshold([], 100, 0.01) > 0.0


def test_chunk_example_keeps_its_three_field_form() -> None:
    ex = ChunkExample(1, (2, 3), ())
    assert ex.bag == () and ex == ChunkExample(1, (2, 3), (), ())


def test_router_contract(toy: Hierarchy) -> None:
    det = RoutedDetector(toy).fit(TRAIN)
    new_order, failed, truncated = det.detect([NEW_ORDER, FAILED_READ, TRUNCATED])
    assert not new_order.anomalous and new_order.detector == "nested"
    assert failed.anomalous and failed.level == "status" and "error" in failed.reason
    assert truncated.anomalous and truncated.level == "entity" and "nearest normal session" in truncated.reason


def test_content_scope_all_also_judges_known_node_chunks(toy: Hierarchy) -> None:
    skipped_read = ["t1", "t2", "t5", "t6", "t7"]  # entity sequence known; the blob chunk open -> close is not
    cut = toy_cut(toy, skipped_read)
    (blob,) = [ex for ex in chunk_examples(cut)["action"] if len(ex.nodes) == 2]
    default = NestedAwareDetector(toy).fit(TRAIN)
    everything = NestedAwareDetector(toy, content_scope="all").fit(TRAIN)
    assert default.content_levels_ == () and everything.content_levels_ == ("action", "status")
    assert default.score_examples("action", [blob])[0].ratio <= 1.0  # a known-node chunk: passed
    (s,) = everything.score_examples("action", [blob])
    assert s.ratio > 1.0 and "nearest normal session" in s.detail
    with pytest.raises(ValueError, match="content_scope"):
        NestedAwareDetector(toy, content_scope="some").fit(TRAIN)


def test_lower_levels_join_the_content_check_while_its_cross_fitted_false_alarms_stay_in_budget(
    toy: Hierarchy,
) -> None:
    """180 training sessions: 0 held-out false alarms have an upper bound of 3/180, over the default budget
    (no level joins) and under a budget of 0.05 (both join); the choice and its figures travel with the state."""
    default = NestedAwareDetector(toy).fit(TRAIN)
    assert default.content_level_count_ == {"default": 0, "action": 0, "status": 0}
    assert default.content_levels_ == () and default.content_level_rate_["action"] > default.fp_budget
    loose = NestedAwareDetector(toy, fp_budget=0.05).fit(TRAIN)
    assert loose.content_levels_ == ("action", "status")
    assert NestedAwareDetector(toy, fp_budget=0.05, content_scope="new").fit(TRAIN).content_levels_ == ()
    again = NestedAwareDetector.from_state(toy, loose.to_state())
    assert (again.content_levels_, again.content_level_count_) == (loose.content_levels_, loose.content_level_count_)


def toy_cut(toy: Hierarchy, seq: list[str]):  # type: ignore[no-untyped-def]
    from krone_jobs.detectors.codebook import Codebook

    cut = Codebook.from_hierarchy(toy).cut(seq)
    assert cut is not None
    return cut


SKIPPED_READ = ["t1", "t2", "t5", "t6", "t7"]  # known nodes and entity sequence; blob open -> close never seen


def _blob_action(det: NestedAwareDetector, seq: list[str]) -> ChunkExample:
    cut = det.codebook_.cut(seq)
    assert cut is not None
    (blob,) = [ex for ex in chunk_examples(cut)["action"] if det.codebook_.names[0][ex.parent] == "E:blob"]
    return blob


def test_unseen_chunk_of_a_closed_level_is_anomalous_and_explained(toy: Hierarchy) -> None:
    # Every held-out session's chunks occur in the other folds: with enough sessions for the budget, the
    # status / action / entity vocabularies are closed and an unseen chunk of known nodes is anomalous.
    closed = NestedAwareDetector(toy, fp_budget=0.05).fit(TRAIN)
    assert closed.closed_levels_ == ("status", "action", "entity")
    assert closed.unseen_chunk_count_ == {"status": 0, "action": 0, "entity": 0}
    assert all(r < 0.05 for r in closed.unseen_chunk_rate_.values())
    (s,) = closed.score_examples("action", [_blob_action(closed, SKIPPED_READ)])
    assert s.ratio == pytest.approx(0.05 / closed.unseen_chunk_rate_["action"]) and s.ratio > 1.0
    assert "no normal session brings an unseen action-level KRONE Seq" in s.detail
    assert f"held-out share 0 of {len(TRAIN)}" in s.detail
    assert ratios(closed, TRAIN[0])["action"] == 0.0  # known chunks stay normal
    # through the router: the reason names the chunk, its nearest normal and the rule
    routed = RoutedDetector(toy, nested_params={"fp_budget": 0.05}).fit(TRAIN)
    (v,) = routed.detect([SKIPPED_READ])
    assert v.anomalous and v.level == "action" and v.detector == "nested"
    assert "nearest normal" in v.reason and "missing A:blob/read" in v.reason and "closed" in v.reason
    # too few sessions to be sure (default budget: 3 / 180 > 0.002): unchanged, the chunk is passed
    default = NestedAwareDetector(toy).fit(TRAIN)
    assert default.closed_levels_ == () and default.known_chunks_ == {}
    assert default.score_examples("action", [_blob_action(default, SKIPPED_READ)])[0].ratio <= 1.0


def test_closed_parents_of_an_open_level_are_still_judged_closed() -> None:
    # A long tail of notes opens the status and action levels, but the blob's own chunks recur in every
    # fold: the blob (and the other recurring components) stay closed, each note does not.
    tail = [s[:-1] + [f"n{i % 100}", "t7"] for i, s in enumerate(TRAIN)]
    wide = NestedAwareDetector(_wide_hierarchy(120), fp_budget=0.05).fit(tail)
    assert wide.unseen_chunk_count_["action"] > 0 and "action" not in wide.closed_levels_
    blob = _blob_action(wide, SKIPPED_READ)
    note = wide.codebook_.names[0].index("E:note")
    assert wide.chunks_closed("action", blob.parent) and not wide.chunks_closed("action", note)
    assert wide.closed_parent_rate_["action"] < 0.05
    (s,) = wide.score_examples("action", [blob])
    assert s.ratio > 1.0 and "under E:blob: its vocabulary is closed" in s.detail


def _cycles(c: int) -> list[str]:
    """The blob is opened, read and closed ``c`` times."""
    return ["t1", *(["t2", "t3", "t5"] * c), "t6", "t7"]


def test_unseen_chunk_of_an_open_parent_is_passed_as_before(toy: Hierarchy) -> None:
    # The blob's action chunk changes with its number of open/read/close cycles, each count seen in two
    # sessions at most: its vocabulary is open and an unseen blob chunk of known nodes is passed, as
    # without the rule; the job's and the worker's chunks never vary, so the status level is closed.
    cycles = [_cycles(1 + (i * 37) % 90) for i in range(180)]
    det = NestedAwareDetector(toy, fp_budget=0.05).fit(cycles)
    assert det.closed_levels_ == ("status", "entity")
    blob = _blob_action(det, SKIPPED_READ)
    assert not det.chunks_closed("action", blob.parent)
    (s,) = det.score_examples("action", [blob])
    assert s.ratio <= 1.0 and "closed" not in s.detail


def test_closed_levels_round_trip_and_older_states_keep_the_rule_off(toy: Hierarchy) -> None:
    closed = NestedAwareDetector(toy, fp_budget=0.05).fit(TRAIN)
    buf = io.BytesIO()
    torch.save(closed.to_state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    again = NestedAwareDetector.from_state(toy, state)
    assert again.closed_levels_ == closed.closed_levels_ and again.known_chunks_ == closed.known_chunks_
    assert again.unseen_chunk_rate_ == closed.unseen_chunk_rate_
    assert again.unseen_chunk_count_ == closed.unseen_chunk_count_
    batch = [SKIPPED_READ, NEW_ORDER, FAILED_READ, TRUNCATED, TOO_MANY_READS, *TRAIN[:3]]
    np.testing.assert_array_equal(again.session_scores(batch), closed.session_scores(batch))
    blob = _blob_action(again, SKIPPED_READ)
    assert again.score_examples("action", [blob])[0].detail == closed.score_examples("action", [blob])[0].detail
    before = ("params", "seen", "lm_seen", "thresholds", "losses", "new_node_rate", "bag", "models", "n_train_sessions")
    older = {k: v for k, v in state.items() if k in before}
    old = NestedAwareDetector.from_state(toy, older)
    assert old.closed_levels_ == () and not old.chunks_closed("action")
    assert old.score_examples("action", [blob])[0].ratio <= 1.0
