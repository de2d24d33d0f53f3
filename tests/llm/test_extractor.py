"""The LLM hierarchy extractor: one call per template text ever (file cache), offline fallback, validation."""

from __future__ import annotations

import json

import pytest

from krone_jobs.hierarchy.extractor import HierarchyExtractor, build_hierarchy
from krone_jobs.hierarchy.offline import OfflineExtractor
from krone_jobs.llm.client import Budget
from krone_jobs.llm.extractor import LLMHierarchyExtractor, validate_placement

TEMPLATES = {"t1": "Receiving block <*> src: <*> dest: <*>", "t2": "Deleting block <*> file <*>",
             "t3": "Exception in receiveBlock for block <*>"}
PLACED = {"Receiving block <*> src: <*> dest: <*>": ("block", "receive", "none"),
          "Deleting block <*> file <*>": ("block", "delete", "none"),
          "Exception in receiveBlock for block <*>": ("Block", "receive", "Exception")}


def by_template(body: dict) -> str:
    """Answer from the template in the request's data line."""
    text = json.loads(body["messages"][1]["content"].split("\n")[2])["template"]
    entity, action, status = PLACED[text]
    return json.dumps({"entity": entity, "action": action, "status": status})


def test_places_templates_and_caches_by_text(fake, make_client, tmp_path):
    cache = tmp_path / "llm_hierarchy.json"
    fake.respond(by_template)
    extractor = LLMHierarchyExtractor(make_client(), cache)
    assert isinstance(extractor, HierarchyExtractor)
    nodes = {n.template_id: n for n in extractor.extract(TEMPLATES)}
    assert (nodes["t3"].entity, nodes["t3"].action, nodes["t3"].status, nodes["t3"].origin) == \
        ("block", "receive", "exception", "llm")
    assert nodes["t1"].action_node == "A:block/receive"
    assert len(fake.requests) == 3 and extractor.stats == {"asked": 3, "cached": 0, "fallback": 0}
    assert json.loads(cache.read_text())["Deleting block <*> file <*>"] == \
        {"entity": "block", "action": "delete", "status": "none"}

    # a new run, new ids for the same texts: no call at all
    again = LLMHierarchyExtractor(make_client(), cache)
    renamed = {f"x{i}": text for i, text in enumerate(TEMPLATES.values())}
    hierarchy = build_hierarchy(renamed, again)
    assert len(fake.requests) == 3 and again.stats["cached"] == 3
    assert {n.origin for n in hierarchy.nodes()} == {"llm"}


def test_garbage_falls_back_to_offline_and_is_not_cached(fake, make_client, tmp_path):
    cache = tmp_path / "cache.json"
    fake.respond("no idea", '{"entity": "block/x", "action": "receive", "status": "none"}',
                 '{"entity": "block", "action": "", "status": "none"}', '{"entity": "block"}')
    client = make_client()
    extractor = LLMHierarchyExtractor(client, cache)
    nodes = extractor.extract({"t1": TEMPLATES["t1"], "t2": TEMPLATES["t2"]})
    assert nodes == [OfflineExtractor().node("t1", TEMPLATES["t1"]), OfflineExtractor().node("t2", TEMPLATES["t2"])]
    assert extractor.stats == {"asked": 0, "cached": 0, "fallback": 2}
    assert client.counters.invalid == 4 and not cache.exists()


def test_budget_and_no_client_fall_back(fake, make_client, tmp_path):
    fake.respond(by_template)
    cache = tmp_path / "cache.json"
    extractor = LLMHierarchyExtractor(make_client(budget=Budget(max_calls=1)), cache)
    origins = [n.origin for n in extractor.extract(TEMPLATES)]
    assert origins == ["llm", "offline", "offline"] and extractor.client.counters.budget_refusals == 2
    offline_only = LLMHierarchyExtractor(None, cache)  # LLM off: the cache still counts
    assert [n.origin for n in offline_only.extract(TEMPLATES)] == ["llm", "offline", "offline"]


def test_unreadable_cache_is_empty(tmp_path, caplog):
    cache = tmp_path / "cache.json"
    cache.write_text("{not json")
    assert LLMHierarchyExtractor(None, cache).cache == {}
    cache.write_text(json.dumps({"a <*>": {"entity": "a", "action": "b", "status": "c"},
                                 "bad <*>": {"entity": "x#1", "action": "b", "status": "c"}}))
    assert list(LLMHierarchyExtractor(None, cache).cache) == ["a <*>"]


def test_template_text_is_redacted(fake, make_client):
    fake.respond('{"entity": "user", "action": "login", "status": "success"}')
    LLMHierarchyExtractor(make_client(), None).extract({"t": "user alice@example.com login from 10.2.3.4 ok"})
    raw = json.dumps(fake.requests[0])
    assert "alice@example.com" not in raw and "10.2.3.4" not in raw


@pytest.mark.parametrize(("answer", "ok"), [
    ({"entity": "Data Node", "action": "start", "status": "none"}, ("data_node", "start", "none")),
    ({"entity": "a", "action": "b", "status": "c", "d": 1}, None),
    ({"entity": "a", "action": "b", "status": 3}, None),
    ({"entity": "a:b", "action": "b", "status": "c"}, None),
    ({"entity": "x" * 40, "action": "b", "status": "c"}, None),
])
def test_validate_placement(answer, ok):
    placed = validate_placement(answer)
    assert (None if placed is None else (placed.entity, placed.action, placed.status)) == ok
