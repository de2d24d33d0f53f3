"""The offline extractor: sensible placements, determinism, batch independence, and what it buys downstream."""

from __future__ import annotations

import csv
import random
import time
from pathlib import Path

import pytest

from krone_jobs.hierarchy.extractor import HierarchyExtractor, build_hierarchy
from krone_jobs.hierarchy.model import Hierarchy, node_ids, statement_id
from krone_jobs.hierarchy.offline import MAX_NAME_CHARS, OfflineExtractor, find_status, lemma, place
from krone_jobs.templates import template_id

HDFS = {
    "1": "Receiving block blk_<*> src: <*> dest: /<*>:50010",
    "2": "BLOCK* NameSystem.addStoredBlock: blockMap updated: <*>:50010 is added to blk_<*> size <*>",
    "3": "PacketResponder <*> for block blk_<*> <*>",
    "4": "Received block blk_<*> of size <*> from /<*>",
    "5": "Deleting block blk_<*> file <*><*>",
    "6": "BLOCK* NameSystem.delete: blk_<*> is added to invalidSet of <*>:50010",
    "7": "BLOCK* NameSystem.allocateBlock: <*> blk_<*>",
    "9": "<*>:50010:Got exception while serving blk_<*> to /<*>:",
    "10": "Verification succeeded for blk_<*>",
    "15": "Unexpected error trying to delete block blk_<*>. BlockInfo not found in volumeMap.",
    "17": "Receiving empty packet for block blk_<*>",
    "19": "BLOCK* NameSystem.addStoredBlock: Redundant addStoredBlock request received for blk_<*> on <*>:50010",
    "36": "Adding an already existing block blk_<*>",
    "16": "writeBlock blk_<*> received exception java.io.IOException: Could not read from stream",
    "27": "PendingReplicationMonitor timed out block blk_<*>",
}
SYSLOG = {
    "a": "sshd[<*>]: Received signal <*>; terminating.",
    "b": "ntpd[<*>]: can't open /var/lib/ntp/drift.TEMP: Permission denied",
    "c": "/apps/x<*>_<*>/system/ganglia-<*>.<*>.<*>/sbin/gmetad[<*>]: Unable to write meta data for <*>",
    "d": "<*> <*> shutdown succeeded",
    "e": "<*> <*> shutdown failed",
}


def _triple(text: str) -> tuple[str, str, str]:
    p = place(text)
    return p.entity, p.action, p.status


@pytest.mark.parametrize(
    ("tid", "expected"),
    [
        ("1", ("block", "receive", "none")),
        ("2", ("block", "add", "none")),  # Class.verbNoun: the method's object
        ("3", ("packetresponder", "none", "none")),  # subject, no verb
        ("4", ("block", "receive", "none")),
        ("5", ("block", "delete", "none")),
        ("6", ("namesystem", "delete", "invalid")),  # Class.verb: acts on the class
        ("7", ("block", "allocate", "none")),
        ("9", ("exception", "get", "exception")),
        ("10", ("block", "verify", "success")),  # deverbal subject names the action
        ("15", ("error", "delete", "error")),  # "trying to" defers to the next verb
        ("16", ("block", "write", "exception")),  # camelCase verb+noun
        ("27", ("pendingreplicationmonitor", "none", "timeout")),
        ("17", ("packet", "receive", "unexpected")),  # the step ran on a state its code did not expect
        ("19", ("block", "add", "unexpected")),
        ("36", ("block", "add", "unexpected")),
    ],
)
def test_hand_checked_hdfs_templates(tid: str, expected: tuple[str, str, str]) -> None:
    assert _triple(HDFS[tid]) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("a", ("sshd", "receive", "none")),
        ("b", ("ntpd", "open", "denied")),
        ("c", ("gmetad", "write", "failed")),
        ("d", ("shutdown", "shutdown", "success")),  # no subject/object: the activity is the entity
        ("e", ("shutdown", "shutdown", "failed")),
    ],
)
def test_syslog_program_is_the_entity(key: str, expected: tuple[str, str, str]) -> None:
    assert _triple(SYSLOG[key]) == expected


@pytest.mark.parametrize(
    ("word", "base"),
    [("Receiving", "receive"), ("Received", "receive"), ("Deleting", "delete"), ("stopped", "stop"),
     ("applied", "apply"), ("got", "get"), ("closes", "close"), ("Served", "serve"), ("registered", "register")],
)
def test_lemma(word: str, base: str) -> None:
    assert lemma(word) == base


def test_status_prefers_the_most_specific_outcome() -> None:
    assert find_status("Exception in receiveBlock: error") == "exception"
    assert find_status("request timed out") == "timeout"
    assert find_status("Unable to write meta data") == "failed"
    assert find_status("Starting <*> succeeded") == "success"
    assert find_status("Receiving block blk_<*>") == "none"


def test_extractor_protocol_and_node_ids() -> None:
    extractor = OfflineExtractor()
    assert isinstance(extractor, HierarchyExtractor) and extractor.origin == "offline"
    nodes = {n.template_id: n for n in extractor.extract(HDFS)}
    assert set(nodes) == set(HDFS)
    for tid, node in nodes.items():
        assert (node.entity_node, node.action_node, node.status_node) == node_ids(
            node.entity, node.action, node.status, tid, statement_id(HDFS[tid])
        )
        assert node.origin == "offline" and node.template == HDFS[tid]
    # receive/block templates share entity and action nodes; status nodes stay per template
    assert nodes["1"].action_node == nodes["4"].action_node
    assert nodes["1"].status_node != nodes["4"].status_node


def test_deterministic_and_independent_of_dict_order() -> None:
    templates = {**HDFS, **SYSLOG}
    items = list(templates.items())
    random.Random(7).shuffle(items)
    first = build_hierarchy(templates, OfflineExtractor())
    assert build_hierarchy(dict(items), OfflineExtractor()) == first
    assert first.to_json() == build_hierarchy(templates, OfflineExtractor()).to_json()


def test_batch_by_batch_equals_one_batch() -> None:
    templates = {**HDFS, **SYSLOG}
    whole = build_hierarchy(templates, OfflineExtractor())
    grown = Hierarchy(())
    ids = sorted(templates)
    for start in range(0, len(ids), 3):
        batch = {tid: templates[tid] for tid in ids[: start + 3]}
        grown = build_hierarchy(batch, OfflineExtractor(), base=grown)
    assert grown == whole


def test_hierarchy_nests_and_handles_odd_input() -> None:
    odd = {"x": "", "y": "<*>", "z": "<*> <*> <*>", "w": "kernel:", "v": "summary............<*>"}
    hierarchy = build_hierarchy({**odd, **HDFS, **SYSLOG}, OfflineExtractor())  # raises if it does not nest
    assert len(hierarchy) == len(odd) + len(HDFS) + len(SYSLOG)
    assert hierarchy["y"].entity_node == f"E:none#{statement_id('<*>')}"
    assert hierarchy["z"].entity_node == hierarchy["y"].entity_node  # one statement, two lengths


def test_the_lengths_of_one_verbless_statement_share_its_action() -> None:
    """Drain makes a template per argument count; the offline tree keeps them one action, statuses apart."""
    lengths = {"a": "sudo: <*> : <*> ; USER=root ; <*>", "b": "sudo: <*> : <*> ; USER=root ; <*> <*>",
               "c": "sudo: <*> : <*> ; USER=root ; <*> <*> <*>", "d": "sudo: <*> : TTY=<*> ; USER=root ; <*>"}
    nodes = build_hierarchy(lengths, OfflineExtractor())
    assert nodes["a"].action_node == nodes["b"].action_node == nodes["c"].action_node != nodes["d"].action_node
    assert len({nodes[t].status_node for t in lengths}) == 4
    assert nodes["a"].action_node == f"A:sudo/none#{template_id(lengths['a'])}"  # the pipeline's own id


def test_names_stay_short_whatever_the_template() -> None:
    p = place("Disk" + "x" * 60_000 + " failed writing" + " sector" + "y" * 60_000)
    assert len(p.entity) == MAX_NAME_CHARS and p.entity.startswith("diskxxx") and p.action == "write"
    assert len(place("Checked " + "Z" * 60_000).entity) == MAX_NAME_CHARS


# ------------------------------------------------------------------------------------- shared data
def load_templates(root: Path, name: str) -> dict[str, str]:
    """``EventId -> EventTemplate`` of ``krone_demo/<name>.log_templates.csv``."""
    with open(root / "krone_demo" / f"{name}.log_templates.csv", newline="", encoding="utf-8") as fh:
        return {str(row["EventId"]).strip(): row["EventTemplate"] for row in csv.DictReader(fh)}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["HDFS", "ThunderBird", "BGL"])
def test_real_template_sets_nest_fast(shared_data: Path, name: str) -> None:
    templates = load_templates(shared_data, name)
    start = time.perf_counter()
    hierarchy = build_hierarchy(templates, OfflineExtractor())
    assert time.perf_counter() - start < 1.0
    assert len(hierarchy) == len(templates)


# Measured F1 (compat mode, the authors' detector rule) with the offline hierarchy, and the authors' own
# figures with their LLM hierarchy. The floor is the authors' figure: the offline model must not lose.
OFFLINE_VS_AUTHORS = [
    ("hdfs-demo", 80, 0.9897, 0.9838),
    ("hdfs-demo", 10, 0.8552, 0.7247),
    ("hdfs-demo", 1, 0.5233, 0.3106),
    ("thunderbird-demo", 80, 0.8457, 0.8368),
    ("thunderbird-demo", 10, 0.3995, 0.3859),
    ("thunderbird-demo", 1, 0.1799, 0.1675),
]


@pytest.mark.shared_data
@pytest.mark.parametrize(("dataset", "train_percent", "measured", "authors"), OFFLINE_VS_AUTHORS)
def test_offline_hierarchy_matches_or_beats_the_authors(
    shared_data: Path, dataset: str, train_percent: int, measured: float, authors: float
) -> None:
    from krone_jobs.evaluate import EvalConfig, run_evaluation

    result = run_evaluation(EvalConfig(dataset, train_percent, "offline", "local", compat=True, data_dir=shared_data))
    assert result["f1"] >= authors
    assert result["f1"] == pytest.approx(measured, abs=0.02)


def test_named_masks_are_parameters() -> None:
    from krone_jobs.hierarchy.offline import place

    assert place("job <ID> read blob <*> from <IP> took <NUM> ms") == place("job <*> read blob <*> from <*> took <*> ms")
