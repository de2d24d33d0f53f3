from __future__ import annotations

from krone_jobs.detectors.codebook import Codebook
from krone_jobs.hierarchy.model import make_node
from tests.toy import toy_hierarchy


def test_extended_appends_new_nodes_and_keeps_every_code() -> None:
    base = Codebook.from_hierarchy(toy_hierarchy())
    grown = toy_hierarchy().extend([make_node("t0", "blob <*> read timed out", "blob", "read", "timeout", "offline"),
                                    make_node("t8", "cache <*> warmed", "cache", "warm", "none", "offline")])
    ext = base.extended(grown)
    assert {t: ext.codes[t] for t in base.codes} == base.codes  # "t0" sorts first, yet no code moves
    assert all(ext.names[lvl][: len(base.names[lvl])] == base.names[lvl] for lvl in range(3))
    e, a, s = ext.codes["t0"]
    assert (e, a) == base.codes["t3"][:2]  # known entity and action nodes are shared
    assert ext.names[2][s] == grown["t0"].status_node and s == len(base.names[2])
    assert ext.names[0][ext.codes["t8"][0]] == grown["t8"].entity_node
    assert base.extended(toy_hierarchy()) == base
    assert Codebook.from_hierarchy(toy_hierarchy()) == base  # deterministic
