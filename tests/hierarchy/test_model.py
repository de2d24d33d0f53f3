from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from krone_jobs.hierarchy.extractor import build_hierarchy
from krone_jobs.hierarchy.model import Hierarchy, HierarchyError, TemplateNode, load_overrides, make_node, node_ids
from krone_jobs.hierarchy.official import load_node_table


def test_tree_must_nest() -> None:
    with pytest.raises(HierarchyError, match="two entities"):
        Hierarchy([TemplateNode("a", "", "x", "go", "none", "E:x", "A:go", "S:1"),
                   TemplateNode("b", "", "y", "go", "none", "E:y", "A:go", "S:2")])
    with pytest.raises(HierarchyError, match="twice"):
        Hierarchy([make_node("a", "", "x", "go", "none", "offline")] * 2)


def test_none_entity_and_action_get_their_own_nodes() -> None:
    assert node_ids("none", "none", "none", "t1") != node_ids("none", "none", "none", "t2")
    assert node_ids("blob", "read", "ok", "t1")[:2] == node_ids("blob", "read", "failed", "t2")[:2]


def test_extend_adds_only_new_templates(toy: Hierarchy) -> None:
    changed = make_node("t1", "job <*> submitted", "scheduler", "accept", "none", "offline")
    new = make_node("t8", "job <*> cancelled", "job", "cancel", "none", "offline")
    grown = toy.extend([changed, new])
    assert grown["t1"] == toy["t1"]  # existing node ids never change
    assert grown["t8"] == new and len(grown) == len(toy) + 1


def test_overrides_always_win(toy: Hierarchy, tmp_path: Path) -> None:
    path = tmp_path / "overrides.csv"
    path.write_text("template_id,entity,action,status\nt4,blob,read,checksum error\n")
    result = toy.with_overrides(load_overrides(path, toy))
    assert result["t4"].status == "checksum error"
    assert result["t4"].origin == "override" and result["t4"].version == 2
    assert result["t4"].template == toy["t4"].template


class _Fixed:
    origin = "offline"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def extract(self, templates: dict[str, str]) -> list[TemplateNode]:
        self.seen.extend(templates)
        return [make_node(t, x, "thing", "do", "none", self.origin) for t, x in templates.items()]


def test_build_hierarchy_extracts_new_templates_only(toy: Hierarchy) -> None:
    extractor = _Fixed()
    result = build_hierarchy({"t1": "job <*> submitted", "t9": "new one"}, extractor, base=toy)
    assert extractor.seen == ["t9"]
    assert result["t1"] == toy["t1"] and result["t9"].entity == "thing"


def test_csv_and_json_round_trip(toy: Hierarchy, tmp_path: Path) -> None:
    toy.save_csv(tmp_path / "h.csv")
    assert Hierarchy.load_csv(tmp_path / "h.csv") == toy
    assert Hierarchy.from_json(toy.to_json()) == toy


@pytest.mark.parametrize(("damage", "complaint"), [
    (lambda text: text[: text.rindex(",E:")], "no entity_node, action_node, status_node"),  # cut short
    (lambda text: text.replace(",offline,1\n", ",offline,1,extra\n", 1), "more fields than the header names"),
    (lambda text: re.sub(r",S:[^,]*,", ",,", text, count=1), "no status_node"),  # a value lost
])
def test_a_damaged_csv_is_refused_with_its_line(toy: Hierarchy, tmp_path: Path, damage: Any, complaint: str) -> None:
    path = tmp_path / "h.csv"
    toy.save_csv(path)
    path.write_text(damage(path.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(HierarchyError, match=rf"h\.csv, line \d+: {complaint}: the file is damaged"):
        Hierarchy.load_csv(path)


@pytest.mark.parametrize("text", ["", "template_id,template\n"])
def test_a_csv_without_the_placement_header_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "h.csv"  # an empty file had loaded as an empty hierarchy, and every placement was redone
    path.write_text(text, encoding="utf-8")
    with pytest.raises(HierarchyError, match=r"h\.csv: no header naming template_id, entity, .*: the file is empty"):
        Hierarchy.load_csv(path)


@pytest.mark.parametrize(("text", "complaint"), [
    ("template_id,entity\nT1,disk\n", r"o\.csv: the header must name template_id,entity,action\[,status\]"),
    ("template_id,entity,action\nT1,,flush\n", r"o\.csv, line 2: no entity"),
    ("template_id,entity,action\nT1,disk\n", r"o\.csv, line 2: no action"),
    ("template_id,entity,action\nT1,disk,flush,failed\n", r"o\.csv, line 2: more fields than the header"),
])
def test_an_overrides_file_with_a_gap_is_refused_with_its_line(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "o.csv"  # people write it: a missing value had been a traceback or an empty node name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(HierarchyError, match=complaint):
        load_overrides(path)


@pytest.mark.shared_data
def test_official_node_tables_load(shared_data: Path) -> None:
    official = shared_data / "krone_demo" / "official"
    hdfs = load_node_table(official / "krone_official_HDFS_tree_nodes.csv")
    assert (hdfs.count("entity"), hdfs.count("action"), hdfs.count("status")) == (8, 35, 47)
    tb = load_node_table(official / "krone_official_ThunderBird_tree_nodes.csv")
    assert (tb.count("entity"), tb.count("action"), tb.count("status")) == (265, 850, 1206)
    assert hdfs["1"].action == "receiving"


def test_reapplying_overrides_changes_nothing(toy: Hierarchy, tmp_path: Path) -> None:
    path = tmp_path / "overrides.csv"
    path.write_text("template_id,entity,action,status\nt4,blob,read,checksum error\n")
    once = toy.with_overrides(load_overrides(path, toy))
    assert once.with_overrides(load_overrides(path, once)) == once  # no version bump on a rerun
