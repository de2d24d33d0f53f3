from __future__ import annotations

import subprocess
import sys

import pytest

from krone_jobs.hierarchy.kseqs import UnknownTemplateError, condense, cut, decompose
from krone_jobs.hierarchy.model import Hierarchy

SESSION = ["t1", "t2", "t3", "t3", "t5", "t2", "t3", "t5", "t6", "t7"]


def test_condense_collapses_consecutive_duplicates_only() -> None:
    assert condense("aabba") == ("a", "b", "a")
    assert condense([]) == ()


def test_status_level_runs_of_the_same_action(toy: Hierarchy) -> None:
    d = decompose(SESSION, toy)
    assert [(c.start, c.end) for c in d.status] == [(0, 1), (1, 2), (2, 4), (4, 5), (5, 6), (6, 7), (7, 8), (8, 9), (9, 10)]
    read = d.status[2]
    assert read.parent == "A:blob/read"
    assert read.nodes == ("S:blob/read/success#t3", "S:blob/read/success#t3")  # duplicates kept


def test_action_level_runs_of_the_same_entity_collapsed(toy: Hierarchy) -> None:
    d = decompose(SESSION, toy)
    assert [(c.start, c.end) for c in d.action] == [(0, 1), (1, 8), (8, 9), (9, 10)]
    blob = d.action[1]
    assert blob.parent == "E:blob"
    assert blob.nodes == ("A:blob/open", "A:blob/read", "A:blob/close", "A:blob/open", "A:blob/read", "A:blob/close")
    assert [c.start for c in d.children(blob)] == [1, 2, 4, 5, 6, 7]
    assert d.parent_of(d.status[2]) == blob


def test_entity_level_whole_session_collapsed(toy: Hierarchy) -> None:
    d = decompose(SESSION, toy)
    assert d.entity.nodes == ("E:job", "E:blob", "E:worker", "E:job")
    assert (d.entity.start, d.entity.end) == (0, len(SESSION))
    assert len(d.children(d.entity)) == 4


def test_keys_are_readable_and_deterministic(toy: Hierarchy) -> None:
    d = decompose(SESSION, toy)
    assert d.action[0].key == "action|E:job|A:job/submit"
    assert d.status[0].overall == "entity=E:job|action=A:job/submit|status=S:job/submit/none#t1"
    code = (
        "from krone_jobs.hierarchy.kseqs import decompose;"
        "from tests.toy import toy_hierarchy;"
        f"print(decompose({SESSION!r}, toy_hierarchy()).entity.cache_key)"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == d.entity.cache_key  # same key in another process (no hash seeding)
    assert len(d.entity.cache_key) == 32


def test_cut_on_int_codes_matches_string_decomposition(toy: Hierarchy) -> None:
    d = decompose(SESSION, toy)
    rows = [toy[t] for t in SESSION]
    c = cut([r.entity_node for r in rows], [r.action_node for r in rows], [r.status_node for r in rows])
    assert c.status_spans == [(s.start, s.end) for s in d.status]
    assert c.action_spans == [(a.start, a.end) for a in d.action]
    assert [k[1:] for k in c.action_keys] == [a.nodes for a in d.action]
    assert c.entity_key == d.entity.nodes


def test_empty_session_and_unknown_template_are_clear_errors(toy: Hierarchy) -> None:
    with pytest.raises(ValueError, match="empty session"):
        decompose([], toy)
    with pytest.raises(UnknownTemplateError):
        decompose(["t1", "t99"], toy)
