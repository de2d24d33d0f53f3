"""Drain3 wrapper: masking, stable ids, match-only inference, JSON state, merging, parser accuracy."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import pytest
from drain3.drain import Node

from krone_jobs.logfiles import iter_lines
from krone_jobs.logformats import BGL, HDFS, THUNDERBIRD, LineFormat, ParsedLine, parse_line
from krone_jobs.templates import (
    MinerSettings,
    TemplateMatch,
    TemplateStateError,
    TemplateStore,
    template_id,
)

LOGHUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub_2k"

HDFS_CONTENT = [
    "PacketResponder 1 for block blk_38865049064139660 terminating",
    "PacketResponder 0 for block blk_-6952295868487656571 terminating",
    "BLOCK* NameSystem.addStoredBlock: blockMap updated: 10.251.73.220:50010 is added to "
    "blk_7128370237687728475 size 67108864",
    "BLOCK* NameSystem.addStoredBlock: blockMap updated: 10.251.43.115:50010 is added to "
    "blk_-5009020203888190378 size 67108864",
    "Receiving block blk_-1608999687919862906 src: /10.250.19.102:54106 dest: /10.250.19.102:50010",
    "Receiving block blk_7503483334202473044 src: /10.251.215.16:55695 dest: /10.251.215.16:50010",
    "Verification succeeded for blk_-1547954353065580372",
    "Deleting block blk_1781953582842324563 file /mnt/hadoop/dfs/data/current/subdir5/blk_1781953582842324563",
    "Deleting block blk_8483848473254499625 file /mnt/hadoop/dfs/data/current/subdir51/blk_8483848473254499625",
    "user alice logged in from console",
    "user bob logged in from console",
    "user carol logged in from console",
    "disk sda1 is 91% full",
]


def mined(lines: Sequence[str], settings: MinerSettings | None = None) -> TemplateStore:
    store = TemplateStore(settings)
    for line in lines:
        store.mine(line)
    return store


def tree_shape(node: Node) -> tuple[object, ...]:
    """The whole prefix tree, child order included (it decides ties in Drain's full search)."""
    return tuple((key, tree_shape(child)) for key, child in node.key_to_child_node.items()), tuple(node.cluster_ids)


def test_template_id_is_a_hash_of_the_text() -> None:
    # golden value: changing the hash would silently re-key every warehouse table
    assert template_id("PacketResponder <NUM> for block <BLK> terminating") == "Te22710f3b5df17b8"
    assert template_id("a <*> b") != template_id("a <*>  b")


def test_masking() -> None:
    store = TemplateStore()
    assert store.mine(HDFS_CONTENT[0]).template == "PacketResponder <NUM> for block <BLK> terminating"
    assert store.mine(HDFS_CONTENT[4]).template == "Receiving block <BLK> src: /<IP> dest: /<IP>"
    assert store.mine("fault at 0x7f3a code -3 from 10.0.0.1 ver 2.6.9").template == (
        "fault at <HEX> code <NUM> from <IP> ver 2.6.9"
    )
    # run ids (word_digits, word-hex) are parameters; ids that start with a digit-bearing word stay
    assert store.mine("node R02-M1-N0 job_42 ok").template == "node R02-M1-N0 <ID> ok"


def test_masking_is_linear_on_adversarial_content() -> None:
    store = TemplateStore()
    for content in ["1" * 65536, "1." * 32768, "blk_" + "1" * 65530 + "x", "0x" + "f" * 65530 + "g", "1.2.3." * 10000,
                    "job_" + "1" * 65530 + "x", "a_1" * 20000]:
        start = time.perf_counter()
        store.mine(content)
        store.match(content)
        assert time.perf_counter() - start < 1.0


def test_templates_table_rows() -> None:
    rows = mined(HDFS_CONTENT).templates()
    assert rows == sorted(rows, key=lambda row: row.template_id)
    assert sum(row.size for row in rows) == len(HDFS_CONTENT)
    assert all(row.template_id == template_id(row.template) for row in rows)
    by_text = {row.template: row.size for row in rows}
    assert by_text["user <*> logged in from console"] == 3


def test_mine_reports_new_templates_and_generalisation() -> None:
    store = TemplateStore()
    first = store.mine("user alice logged in from console")
    assert first.is_new and first.supersedes is None and first.template_id == template_id(first.template)
    assert store.mine("user alice logged in from console") == TemplateMatch(first.template_id, first.template)
    general = store.mine("user bob logged in from console")
    assert general.template == "user <*> logged in from console"
    assert general.is_new and general.supersedes == first.template_id
    assert store.resolve(first.template_id) == general.template_id
    assert store.resolve(general.template_id) == general.template_id
    assert store.superseded == {first.template_id: general.template_id}
    assert store.mine("user carol logged in from console") == TemplateMatch(general.template_id, general.template)


def test_ids_do_not_depend_on_line_order() -> None:
    forward = mined(HDFS_CONTENT)
    backward = mined(HDFS_CONTENT[::-1])
    assert forward.templates() == backward.templates()
    for line in HDFS_CONTENT:
        assert forward.match(line) == backward.match(line) is not None


def test_match_is_read_only_and_exact() -> None:
    store = mined(HDFS_CONTENT)
    before = store.to_json()
    for line in HDFS_CONTENT:
        match = store.match(line)
        assert match is not None and not match.is_new and match.supersedes is None
    assert store.match("user dave logged in from console") == store.match(HDFS_CONTENT[-2])
    assert store.match("completely unknown message with new words") is None
    assert store.match("user dave logged out from console") is None  # one token off: no exact match
    assert store.to_json() == before


def test_json_round_trip_gives_identical_results() -> None:
    settings = MinerSettings(depth=5, max_children=3, sim_th=0.5)  # small fan-out exercises wildcard nodes
    lines = HDFS_CONTENT + [f"worker w{i} step {chr(97 + i)} done" for i in range(8)]
    store = mined(lines, settings)
    state = store.to_json()
    restored = TemplateStore.from_json(state)
    assert restored.settings == settings
    assert restored.to_json() == state
    assert tree_shape(restored._miner.drain.root_node) == tree_shape(store._miner.drain.root_node)
    probes = lines + ["worker w99 step z done", "user eve logged in from console", "never seen"]
    assert [restored.match(p) for p in probes] == [store.match(p) for p in probes]
    more = ["user eve logged in from tty", "worker x step y failed", *lines]
    assert [restored.mine(p) for p in more] == [store.mine(p) for p in more]


@pytest.mark.parametrize("settings", [MinerSettings(), MinerSettings(depth=3, max_children=2, sim_th=0.7),
                                      MinerSettings(depth=6, max_children=4, parametrize_numeric_tokens=False)])
def test_a_restored_tree_is_the_one_drains_own_filing_builds(settings: MinerSettings) -> None:
    """``from_json`` files clusters in linear time; the tree must equal what Drain's ``add_seq_to_prefix_tree``
    makes of the same clusters in the same order (numbers, masked ids, literal ``<*>``, full nodes, a flood
    under one prefix, an empty message)."""
    import random

    rng = random.Random(11)
    words = ["alpha", "beta", "gamma", "delta", "eps", "id42", "7", "job_1f3a", "10.0.0.1", "<*>", "x"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 7))) for _ in range(3000)]
    lines += [f"user said {' '.join(rng.choice('abcdefgh') * rng.randint(1, 4) for _ in range(4))}" for _ in range(500)]
    store = mined([*HDFS_CONTENT, *lines, ""], settings)
    restored = TemplateStore.from_json(store.to_json())
    reference = TemplateStore(settings)._miner.drain  # the library's own filing, one cluster after the other
    for cluster in sorted(restored._miner.drain.clusters, key=lambda c: c.cluster_id):
        reference.id_to_cluster[cluster.cluster_id] = cluster
        reference.add_seq_to_prefix_tree(reference.root_node, cluster)
    assert max(len(c.cluster_ids) for c in _leaves(reference.root_node)) > 100  # a large leaf was exercised
    assert tree_shape(restored._miner.drain.root_node) == tree_shape(reference.root_node)


def _leaves(node: Node) -> list[Node]:
    return [node] if not node.key_to_child_node else [leaf for c in node.key_to_child_node.values() for leaf in _leaves(c)]


def test_state_is_plain_json() -> None:
    state = json.loads(mined(HDFS_CONTENT).to_json())
    assert set(state) == {"format", "version", "settings", "clusters_counter", "clusters", "superseded"}
    assert "py/" not in json.dumps(state)  # no jsonpickle tags
    assert state["clusters"][0] == {"cluster_id": 1, "tokens": ["PacketResponder", "<NUM>", "for", "block", "<BLK>",
                                                                "terminating"], "size": 2}


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.update(format="jsonpickle"),
        lambda s: s.update(version=99),
        lambda s: s["clusters"][0].update(tokens="not a list"),
        lambda s: s["clusters"][0].update(tokens=["two words"]),
        lambda s: s["clusters"][0].update(cluster_id=-1),
        lambda s: s["clusters"][0].update(size=True),
        lambda s: s["clusters"].append(dict(s["clusters"][0])),
        lambda s: s.update(clusters_counter=0),
        lambda s: s["settings"].update(depth=1000),
        lambda s: s["settings"].update(masks=[["(unclosed", "X"]]),
        lambda s: s.update(superseded={"T1": 2}),
        lambda s: s.pop("clusters"),
    ],
)
def test_malformed_state_is_rejected(edit: object) -> None:
    state = json.loads(mined(HDFS_CONTENT).to_json())
    edit(state)  # type: ignore[operator]
    with pytest.raises(TemplateStateError):
        TemplateStore.from_json(json.dumps(state))


@pytest.mark.parametrize("text", ["", "[]", "not json", "[" * 100_000])
def test_garbage_state_is_rejected(text: str) -> None:
    with pytest.raises(TemplateStateError):
        TemplateStore.from_json(text)


def test_ids_are_the_same_in_another_process() -> None:
    script = (
        "import json, sys\n"
        "from krone_jobs.templates import TemplateStore\n"
        "store = TemplateStore()\n"
        "lines = json.load(sys.stdin)\n"
        "print(json.dumps([store.mine(line).template_id for line in lines]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(HDFS_CONTENT), capture_output=True, text=True,
        env=env, check=True, cwd=Path(__file__).resolve().parents[1],
    ).stdout
    store = TemplateStore()
    assert json.loads(out) == [store.mine(line).template_id for line in HDFS_CONTENT]


def test_merge_unifies_partitions_like_one_miner() -> None:
    partitions = [HDFS_CONTENT[0::2], HDFS_CONTENT[1::2]]
    stores = [mined(part) for part in partitions]
    merged = TemplateStore.from_json(stores[0].to_json())
    merged.merge(stores[1])
    assert {i.template_id for i in merged.templates()} == {i.template_id for i in mined(HDFS_CONTENT).templates()}
    assert sum(info.size for info in merged.templates()) == len(HDFS_CONTENT)
    for part, store in zip(partitions, stores):
        for line in part:
            own, match = store.match(line), merged.match(line)
            assert own is not None and match is not None
            assert merged.resolve(own.template_id) == match.template_id
    again = TemplateStore.from_json(merged.to_json())
    assert [again.match(line) for line in HDFS_CONTENT] == [merged.match(line) for line in HDFS_CONTENT]
    with pytest.raises(ValueError, match="settings"):
        merged.merge(TemplateStore(MinerSettings(sim_th=0.7)))


def test_merge_counts_identical_templates_once() -> None:
    left, right = mined(HDFS_CONTENT[:2]), mined(HDFS_CONTENT[:2])
    left.merge(right)
    [info] = left.templates()
    assert (info.template, info.size) == ("PacketResponder <NUM> for block <BLK> terminating", 4)
    assert left.superseded == {}
    loose = MinerSettings(sim_th=0.2)  # a template mostly made of wildcards is still found by its text
    wild, same = mined(["a1 b1 c1 d1 x", "a2 b2 c2 d2 x"], loose), mined(["a3 b3 c3 d3 x"] * 3, loose)
    same.merge(wild)  # a different text: mined, so it generalises the existing cluster
    assert [(i.template, i.size) for i in same.templates()] == [("<*> <*> <*> <*> x", 5)]
    assert same.resolve(template_id("a3 b3 c3 d3 x")) == template_id("<*> <*> <*> <*> x")
    wild.merge(mined(["a1 b1 c1 d1 x", "a2 b2 c2 d2 x"], loose))
    assert [(i.template, i.size) for i in wild.templates()] == [("<*> <*> <*> <*> x", 4)]
    assert len(wild._miner.drain.clusters) == 1


def test_merge_carries_superseded_ids() -> None:
    alice = template_id("user alice logged in from console")
    general = template_id("user <*> logged in from console")
    right = mined(["user alice logged in from console", "user bob logged in from console"])
    assert right.resolve(alice) == general
    fresh = TemplateStore()
    fresh.merge(right)
    assert fresh.resolve(alice) == general  # learnt from right's superseded ids
    left = mined(["user alice logged in from console"])
    left.merge(right)
    assert left.resolve(alice) == general  # left's own template was generalised by the merge
    assert [i.template_id for i in left.templates()] == [general]


# --- parser accuracy on real data ---------------------------------------------------------------------


def grouping_accuracy(truth: Sequence[str], predicted: Sequence[str | None]) -> float:
    """Loghub's metric: a line counts when its predicted group holds exactly its true group's lines."""
    true_sizes = Counter(truth)
    groups: defaultdict[str | None, list[str]] = defaultdict(list)
    for t, p in zip(truth, predicted):
        groups[p].append(t)
    correct = sum(
        len(members) for members in groups.values()
        if len(set(members)) == 1 and true_sizes[members[0]] == len(members)
    )
    return correct / len(truth)


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("system", "fmt", "floor"), [("HDFS", HDFS, 0.99), ("BGL", BGL, 0.96), ("Thunderbird", THUNDERBIRD, 0.95)]
)
def test_grouping_accuracy_on_loghub(system: str, fmt: LineFormat, floor: float) -> None:
    if not LOGHUB.is_dir():
        pytest.skip("../shared/data not present")
    with open(LOGHUB / system / f"{system}_2k.log_structured.csv", encoding="utf-8", newline="") as f:
        truth = [row["EventId"] for row in csv.DictReader(f)]
    lines = [parse_line(raw, fmt) for _, raw in iter_lines(LOGHUB / system / f"{system}_2k.log")]
    contents = [line.content for line in lines if isinstance(line, ParsedLine)]
    assert len(contents) == len(truth)
    store = mined(contents, fmt.miner)  # the settings the parse job mines this format with
    matches = [store.match(content) for content in contents]  # mine first, then match: final ids
    assert all(m is not None for m in matches)
    accuracy = grouping_accuracy(truth, [m.template_id if m else None for m in matches])
    assert accuracy >= floor, f"{system} grouping accuracy {accuracy:.4f} < {floor}"
    # mined in 4 partitions and merged (the Spark plan): as accurate
    merged = mined(contents[0::4], fmt.miner)
    for k in (1, 2, 3):
        merged.merge(mined(contents[k::4], fmt.miner))
    merged_ids = [merged.match(content) for content in contents]
    assert all(m is not None for m in merged_ids)
    merged_accuracy = grouping_accuracy(truth, [m.template_id if m else None for m in merged_ids])
    assert merged_accuracy >= floor, f"{system} merged grouping accuracy {merged_accuracy:.4f} < {floor}"


# --- masked tokens route like the numbers they replaced ------------------------------------------------


def test_masked_tokens_route_down_the_wildcard_branch() -> None:
    # masking took the digits out of "name(4711)[2915]:": it must still be a parameter in Drain's tree, not a
    # literal branch per masked shape, so lines that differ only there share a leaf and a template
    lines = ["crond(4711)[2915]: session 12 closed for user root",
             "sshd[2915]: session 12 closed for user root",
             "delay=00:00:01, session 12 closed for user root"]
    assert len(mined(lines).templates()) == 1
    old = mined(lines, MinerSettings(parametrize_masked_tokens=False))
    assert len(old.templates()) == 3  # before: one leaf per masked first token
    # the setting travels with the state; states written before it existed keep the old routing
    state = json.loads(mined(lines).to_json())
    assert state["settings"]["parametrize_masked_tokens"] is True
    del state["settings"]["parametrize_masked_tokens"]
    restored = TemplateStore.from_json(json.dumps(state))
    assert restored.settings.parametrize_masked_tokens is False
    assert MinerSettings().routes_as_parameter()("THH(<NUM>):")
    assert not MinerSettings().routes_as_parameter()("<node>")  # only the masks' own placeholders


def test_thunderbird_settings_group_one_message_under_different_tags() -> None:
    # depth 3 leaves the syslog tag to the similarity test instead of a prefix-tree branch per tag
    lines = ["kernel: ACPI: PCI Interrupt Link [LNKA] enabled",  # at depth 4 "kernel:" is now a branch (7 tokens)
             "CPU0: Intel(R) Xeon(TM) CPU 3.60GHz stepping 03",
             "kernel: Intel(R) Xeon(TM) CPU 3.60GHz stepping 03",
             "nfs: rpc.mountd startup succeeded",
             "xinetd: xinetd startup succeeded"]
    assert len(mined(lines).templates()) == 5
    assert sorted(t.template for t in mined(lines, THUNDERBIRD.miner).templates()) == [
        "<*> <*> startup succeeded", "<*> Intel(R) Xeon(TM) CPU 3.60GHz stepping <NUM>",
        "kernel: ACPI: PCI Interrupt Link [LNKA] enabled"]
    assert HDFS.miner == BGL.miner == MinerSettings()
